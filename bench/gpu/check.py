#!/usr/bin/env python
"""The GPU path end to end, in one command with a time budget per step (docs/gpu/README.md).

    python bench/gpu/check.py --device cuda --out $OUT        # on the GPU machine (run.sh)
    python bench/gpu/check.py --device cpu --tiny --out DIR   # the same steps, tiny, on CPU

Steps, in this order (each a subprocess with its own time limit, ``BUDGETS``, killed with its
children when it runs over; the limits add up to the default ``--budget``, so no step can eat
another's time, and the run also stops at that overall deadline):

  env          GPU name and count, driver, torch / CUDA / cuDNN versions, package versions, imports
  cuda_tests   ``pytest -m cuda`` over CUDA_TEST_FILES (skipped without CUDA): one result line
               per test written as it finishes (bench/gpu/pytest_results.py), a time limit per
               test, the slowest tests (compile, the NCCL subprocess) last
  train        projects/train_net.py on the synthetic set at 256x128, ViT-B GLTrans from random
               init, AMP, ~300 iterations: the loss falls, weights move between the two
               checkpoints, the evaluation table is printed
  eval_only    ``--eval-only`` of the final checkpoint: the same table within one query's weight
  eval_bench   bench/eval_bench.py --full --device cuda: MSMT17-scale evaluation vs a bare
               ``torch.mm`` of the same shapes
  bench_bf16   bench/model_bench.py: ViT-B GLTrans and the ViT baseline, 256x128, batch 64, bf16
               AMP: step time, img/s, MFU against the bf16 ``torch.mm`` 8192^3 peak measured in
               the same process, peak memory, GLTrans / ViT time vs FLOP ratio, and the
               largest GLTrans batch within 24 GiB
  bench_fp16   the same in fp16 AMP (GradScaler)
  bench_ckpt   the same in bf16 with activation checkpointing
  multi_gpu    ``pytest -m cuda`` over MULTI_GPU_TEST_FILES: NCCL at world size 2 (DDP, SyncBN,
               buffer broadcast); "skip" without a second GPU
  launch       (--tiny only) bench/gpu/nccl_launch.py: train_net --eval-only of train's
               checkpoint in a spawned worker (gloo on CPU; on CUDA cuda_tests trains with it
               under NCCL)

Writes ``OUT/report.json`` (environment, each step's status pass / fail / skip, its figures with
units in their names, targets met or not), ``OUT/summary.txt`` and ``OUT/log.txt`` (every step's
output).  Exit code 0 when no step failed.  Scratch files (data, checkpoints) go to ``--work``.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
sys.path.insert(0, HERE)
from pytest_results import read_results  # noqa: E402

DEFAULT_BUDGET = 420.0  # seconds; with the install (~20 s) inside the device call's 480
# The steps in run order.  Correctness first (the CUDA tests, a training and its reload), then
# the figures, the repeats of a figure in another mode last: were the overall deadline reached
# (start-up and the gaps between steps are outside the limits), the least is lost.
ORDER = ["env", "cuda_tests", "train", "eval_only", "eval_bench", "bench_bf16", "bench_fp16",
         "bench_ckpt", "multi_gpu"]
# a-priori limits (seconds) per step on the GPU machine; they add up to DEFAULT_BUDGET
BUDGETS = {"env": 15, "cuda_tests": 125, "train": 65, "eval_only": 25, "eval_bench": 40,
           "bench_bf16": 55, "bench_fp16": 25, "bench_ckpt": 25, "multi_gpu": 45}
TEST_LIMIT = 60  # seconds per CUDA test (GPU_CHECK_TEST_LIMIT): a hung test fails alone
TINY_BUDGETS = {k: 240 for k in [*BUDGETS, "launch"]}  # shared CPUs: generous
# every test file with CUDA tests (marked ``cuda``); tests/gpu/test_gpu_check.py checks the lists
CUDA_TEST_FILES = ["tests/evaluation/test_evaluation.py", "tests/extractor/test_extractor.py",
                   "tests/gpu/test_cuda.py"]
MULTI_GPU_TEST_FILES = ["tests/distributed/test_distributed.py"]  # world size 2 over NCCL: two GPUs


# ----------------------------------------------------------------------------- running
class Runner:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.log = open(os.path.join(args.out, "log.txt"), "w")
        self.steps = []

    def remaining(self):
        return self.args.budget - (time.perf_counter() - self.t0)

    def write(self, text):
        self.log.write(text)
        self.log.flush()

    def run(self, name, cmd, env=None):
        """Run ``cmd``; returns (rc or None on timeout, output, wall seconds, limit)."""
        budgets = TINY_BUDGETS if self.args.tiny else BUDGETS
        limit = max(1.0, min(budgets[name], self.remaining()))
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.write(f"\n===== {name}: {' '.join(cmd)}  (limit {limit:.0f} s)\n")
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=limit)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the step and every process it started
            out, _ = p.communicate()
            rc = None
        wall = time.perf_counter() - t
        self.write(out or "")
        self.write(f"\n===== {name}: rc {rc}, {wall:.1f} s\n")
        return rc, out or "", wall, limit

    def record(self, name, status, wall=0.0, limit=0.0, rc=0, figures=None, targets=None,
               note="", output=""):
        step = {"name": name, "status": status, "wall_s": round(wall, 2),
                "limit_s": round(limit, 1), "rc": rc, "figures": figures or {},
                "targets": targets or [], "note": note}
        if status == "fail":
            step["output_tail"] = output[-3000:]
        self.steps.append(step)
        print(f"[{status:4s}] {name:<11s} {wall:6.1f} s  {note}", flush=True)
        return step


def target(name, value, unit, op, goal):
    met = None if value is None else (value >= goal if op == ">=" else value <= goal)
    return {"name": name, "value": value, "unit": unit, "target": f"{op} {goal}", "met": met}


def py_env():
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")} if ARGS.tiny else {}
    return env


# ----------------------------------------------------------------------------- steps
_ENV_SCRIPT = r"""
import json, torch
info = dict(torch=torch.__version__, torch_cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            cuda_available=torch.cuda.is_available(),
            gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0)
if info["gpu_count"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count)
import gltrans_plugin, fastreid, fvcore, faiss  # noqa: the imports every later step needs
print("ENV " + json.dumps(info))
"""


def step_env(r):
    """Versions and the GPU, read in a subprocess that also imports everything the later
    steps need (this process never imports torch)."""
    t = time.perf_counter()
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "mode": "tiny" if ARGS.tiny else "full",
            "device": ARGS.device}
    rc, out, _, limit = r.run("env", [PY, "-c", _ENV_SCRIPT], py_env())
    found = [line[4:] for line in out.splitlines() if line.startswith("ENV {")]
    if found:
        info.update(json.loads(found[-1]))
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
        if q.returncode == 0 and q.stdout.strip():
            info["driver"] = q.stdout.strip().splitlines()[0].split(",")[1].strip()
    from importlib import metadata

    versions = {}
    for pkg in ("fastreid", "fvcore", "iopath", "yacs", "faiss-cpu", "timm", "numpy",
                "torchvision", "pytest"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info["packages"] = versions
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                        capture_output=True, text=True).stdout.strip() or None
    except OSError:
        info["commit"] = None
    ok = rc == 0 and bool(found) and (ARGS.device == "cpu" or info.get("cuda_available"))
    r.write(json.dumps(info, indent=1) + "\n")
    r.record("env", "pass" if ok else "fail", time.perf_counter() - t, limit, rc,
             figures=info, note=info.get("gpu", info.get("torch", "")), output=out)
    return info


def pytest_cmd(files, results):
    """``pytest -m cuda`` over ``files`` with the per-test results plugin; (cmd, env)."""
    cmd = [PY, "-m", "pytest", "-q", "-m", "cuda", *files, "-p", "pytest_results",
           "-p", "no:cacheprovider", "-o", "addopts="]
    env = dict(py_env(), GPU_CHECK_RESULTS=results, GPU_CHECK_TEST_LIMIT=str(TEST_LIMIT),
               PYTHONPATH=os.pathsep.join(p for p in (HERE, REPO, os.environ.get("PYTHONPATH"))
                                          if p))
    return cmd, env


def step_pytest(r, name, files):
    """One pytest run over ``files``; a row per test from its results file, which holds every
    finished test even when the step was stopped at its limit (then the test it was in is
    "killed")."""
    results = os.path.join(ARGS.work, f"{name}.jsonl")
    if os.path.exists(results):
        os.remove(results)
    cmd, env = pytest_cmd(files, results)
    rc, out, wall, limit = r.run(name, cmd, env)
    tests = read_results(results)
    statuses = {t["status"] for t in tests.values()}
    killed = [k for k, t in tests.items() if t["status"] == "killed"]
    counts = {k: sum(t["status"] == k for t in tests.values())
              for k in ("pass", "fail", "skip", "killed")}
    if rc is None:
        status = "fail"
        note = f"timed out in {killed[0] if killed else '?'}; {counts}"
    elif rc not in (0, 5) or statuses & {"fail", "killed"} or not tests:
        status, note = "fail", f"rc {rc}; {counts}"
    elif statuses == {"skip"}:
        status, note = "skip", f"every test skipped ({len(tests)}): no CUDA"
    else:
        status, note = "pass", f"{counts['pass']} passed, {counts['skip']} skipped"
    r.record(name, status, wall, limit, rc, figures={"tests": tests}, note=note, output=out)


def step_multi_gpu(r, env):
    """NCCL at world size 2 needs two GPUs: "skip" (no subprocess) with fewer."""
    n = int(env.get("gpu_count") or 0)
    if ARGS.device != "cuda" or n < 2:
        return r.record("multi_gpu", "skip", note=f"{n} GPU(s): world size 2 over NCCL needs 2",
                        figures={"gpu_count": n})
    return step_pytest(r, "multi_gpu", MULTI_GPU_TEST_FILES)


def bench_cmd(amp, extra, json_path):
    if ARGS.tiny:
        cmd = ["--device", "cpu", "--sizes", "tiny", "--batch", "4", "--img", "64", "32",
               "--steps", "1", "--warmup", "0", "--no-memory", "--no-estimate",
               "--measure-peak", "--peak-n", "256", "--threads", "1", "--only", "vit,gltrans"]
    else:
        cmd = ["--device", "cuda", "--sizes", "base", "--batch", "64", "--img", "256", "128",
               "--steps", "20", "--warmup", "5", "--only", "vit,gltrans"]
    return [PY, "bench/model_bench.py", *cmd, "--amp", amp, "--no-fvcore", "--json", json_path,
            *extra]


def step_bench(r, name, amp, extra=()):
    path = os.path.join(ARGS.work, f"{name}.json")
    if os.path.exists(path):
        os.remove(path)
    rc, out, wall, limit = r.run(name, bench_cmd(amp, list(extra), path), py_env())
    if rc != 0 or not os.path.isfile(path):
        return r.record(name, "fail", wall, limit, rc, note="timed out" if rc is None
                        else f"rc {rc}", output=out)
    res = json.load(open(path))
    size = next(iter(res["results"]))
    s = res["results"][size]["summary"]
    g, v = s.get("gltrans", {}), s.get("vit", {})
    ratio = s.get("gltrans_over_vit", {}).get("time_over_flop_ratio")
    figs = {"peak_tflops_s (bf16 mm measured)": s.get("peak_tflops_s"), "summary": s,
            "text": out[out.find("# model_bench"):][:4000]}
    targets = []
    if not ARGS.tiny:
        if amp == "bf16" and "grad_ckpt" not in name and "ckpt" not in name:
            targets.append(target("GLTrans bf16 training MFU", g.get("mfu_pct"), "%", ">=", 40))
        targets.append(target("GLTrans/ViT step time over FLOP ratio", ratio, "x", "<=", 1.05))
        if g.get("peak_mem_gib") is not None:
            targets.append(target(f"GLTrans batch 64 {amp} peak memory", g["peak_mem_gib"],
                                  "GiB", "<=", 24))
    finite = all(isinstance(x.get("train_step_ms"), (int, float)) for x in (g, v))
    note = (f"gltrans {g.get('train_step_ms', float('nan')):.1f} ms/step "
            f"{g.get('train_img_s', float('nan')):.0f} img/s MFU {g.get('mfu_pct') or 0:.1f}%; "
            f"vit {v.get('train_step_ms', float('nan')):.1f} ms/step; time/FLOP ratio "
            f"{ratio if ratio is not None else float('nan'):.3f}")
    return r.record(name, "pass" if finite else "fail", wall, limit, rc, figs, targets, note,
                    out)


def train_opts(work):
    data, out = os.path.join(work, "data"), os.path.join(work, "train")
    if ARGS.tiny:
        model = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.DEPTH", "tiny",
                 "MODEL.BACKBONE.FEAT_DIM", "192", "MODEL.BACKBONE.STRIDE_SIZE", "(16, 16)",
                 "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
                 "INPUT.PADDING.SIZE", "2", "DATASETS.SYNTHETIC.HEIGHT", "64",
                 "DATASETS.SYNTHETIC.WIDTH", "32", "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "6",
                 "DATASETS.SYNTHETIC.NUM_TEST_IDS", "8", "SOLVER.IMS_PER_BATCH", "16",
                 "SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1",  # 2 x 4 iterations
                 "TEST.EVAL_PERIOD", "2", "SOLVER.LOG_PERIOD", "2",
                 "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_DEVICE", "cpu",
                 "TEST.IMS_PER_BATCH", "32"]
    else:  # ViT-B/16 stride 12 at 256x128 (21 x 10 grid), random init; 768 images: 12 it/epoch
        model = ["MODEL.DEVICE", "cuda", "MODEL.BACKBONE.DEPTH", "base",
                 "MODEL.BACKBONE.FEAT_DIM", "768", "MODEL.BACKBONE.STRIDE_SIZE", "(12, 12)",
                 "MODEL.BACKBONE.DROP_PATH_RATIO", "0.1",
                 "INPUT.SIZE_TRAIN", "[256, 128]", "INPUT.SIZE_TEST", "[256, 128]",
                 "INPUT.PADDING.SIZE", "10", "DATASETS.SYNTHETIC.HEIGHT", "256",
                 "DATASETS.SYNTHETIC.WIDTH", "128", "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "64",
                 "DATASETS.SYNTHETIC.NUM_TEST_IDS", "48", "SOLVER.IMS_PER_BATCH", "64",
                 "SOLVER.MAX_EPOCH", "24", "SOLVER.CHECKPOINT_PERIOD", "12",
                 "TEST.EVAL_PERIOD", "24", "SOLVER.LOG_PERIOD", "12",
                 "DATALOADER.NUM_WORKERS", "8", "TEST.EVAL_DEVICE", "cuda",
                 "TEST.IMS_PER_BATCH", "256", "CUDNN_BENCHMARK", "True"]
    return model + ["DATASETS.ROOT", data, "OUTPUT_DIR", out, "SOLVER.AMP.ENABLED", "True",
                    "SOLVER.BASE_LR", "0.0003", "SOLVER.WARMUP_EPOCHS", "1",
                    "TEST.EVAL_BEFORE_TRAIN", "False", "SEED", "0"], out


def eval_table(text):
    """The last fast-reid result table row: {"Rank-1": .., "mAP": .., ...} (percent)."""
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Rank-1" in line and "|" in line:
            head = [c.strip() for c in line.strip().strip("|").split("|")]
            for row in lines[i + 1:i + 4]:
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                if len(cells) == len(head) and not set(cells[-1]) <= set(":-"):
                    try:
                        rows.append({h: float(c) for h, c in zip(head[1:], cells[1:])})
                    except ValueError:
                        continue
    return rows[-1] if rows else None


def loss_curve(out_dir):
    path = os.path.join(out_dir, "metrics.json")
    pts = []
    if os.path.isfile(path):
        for line in open(path):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if "total_loss" in d:
                pts.append((d.get("iteration"), d["total_loss"]))
    return pts


def weight_change(a_path, b_path):
    """max |a - b| and the relative L2 change of the model weights of two checkpoints."""
    import torch

    sys.path.insert(0, REPO)
    from gltrans_plugin.checkpoint import load_file

    a, b = load_file(a_path)["model"], load_file(b_path)["model"]
    num = den = 0.0
    mx = 0.0
    for k, v in a.items():
        if torch.is_floating_point(v) and k in b:
            d = (b[k].float() - v.float())
            num += float(d.pow(2).sum())
            den += float(v.float().pow(2).sum())
            mx = max(mx, float(d.abs().max()))
    return {"max_abs": mx, "rel_l2": (num / max(den, 1e-30)) ** 0.5}


def step_train(r):
    opts, out_dir = train_opts(ARGS.work)
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = ["--config-file", "configs/GLTrans/synthetic_demo.yml"]
    rc, out, wall, limit = r.run("train", [PY, "projects/train_net.py", *cfg, *opts], py_env())
    figs, checks = {}, {}
    pts = loss_curve(out_dir)
    figs["loss_curve (iteration, total_loss)"] = pts
    if len(pts) >= 2:
        k = max(1, len(pts) // 4)
        first = sum(x for _, x in pts[:k]) / k
        last = sum(x for _, x in pts[-k:]) / k
        figs["loss_first"], figs["loss_last"] = first, last
        checks["loss falls"] = last < 0.9 * first
    else:
        checks["loss falls"] = False
    table = eval_table(out)
    figs["eval_after_training (percent)"] = table
    checks["eval table printed"] = table is not None
    final = os.path.join(out_dir, "model_final.pth")
    mids = sorted(f for f in os.listdir(out_dir) if re.fullmatch(r"model_\d+\.pth", f)) \
        if os.path.isdir(out_dir) else []
    checks["checkpoint written"] = os.path.isfile(final)
    if mids and os.path.isfile(final):
        try:
            figs["weights_change_mid_to_final"] = weight_change(os.path.join(out_dir, mids[0]),
                                                                final)
            checks["weights move"] = figs["weights_change_mid_to_final"]["rel_l2"] > 0
        except Exception as e:  # noqa: BLE001
            figs["weights_change_error"] = repr(e)
            checks["weights move"] = False
    else:
        checks["weights move"] = False
    m = re.findall(r"Total inference time: \S+ \(([\d.]+) s / batch", out)
    if m:
        figs["inference_s_per_batch"] = float(m[-1])
    speed = re.findall(r"time: ([\d.]+)\s+data_time: ([\d.]+)", out)
    if speed:
        figs["train_s_per_iter_last"] = float(speed[-1][0])
    figs["checks"] = checks
    ok = rc == 0 and all(checks.values())
    note = ", ".join(f"{k}: {'ok' if v else 'NO'}" for k, v in checks.items())
    r.record("train", "pass" if ok else "fail", wall, limit, rc, figs, note=note, output=out)
    return {"final": final if os.path.isfile(final) else None, "table": table,
            "queries": valid_queries(out), "cfg": cfg, "opts": opts}


def valid_queries(text):
    """The number of queries the last evaluation counted ("Evaluated N of M queries")."""
    m = re.findall(r"Evaluated (\d+) of (\d+) queries", text)
    return int(m[-1][0]) if m else None


def step_eval_only(r, trained):
    """``--eval-only`` of the training's final checkpoint: the same table, each metric within
    one query's weight (100 / valid queries percent).  The model, weights and data are the
    same; only kernel choices may differ (cuDNN autotuning), moving a feature by ~1e-6, which
    can swap a near tie: each swap changes one query's contribution, at most its weight, and
    more than one swap at this size would be a fault, not rounding."""
    if not trained or not trained["final"]:
        return r.record("eval_only", "fail", note="no checkpoint: the train step did not write "
                                                  "model_final.pth")
    rc, out, wall, limit = r.run("eval_only", [PY, "projects/train_net.py", *trained["cfg"],
                                               "--eval-only", *trained["opts"],
                                               "MODEL.WEIGHTS", trained["final"]], py_env())
    table, table2 = trained["table"], eval_table(out)
    n = trained["queries"] or valid_queries(out)
    tol = 100.0 / n + 1e-6 if n else 0.0  # the tables print 2 decimals: 1e-6 is below
    diff = (max(abs(table[k] - table2[k]) for k in table if k in table2)
            if table and table2 else None)
    figs = {"eval_only_of_final_checkpoint (percent)": table2, "eval_only_max_diff_pp": diff,
            "tolerance_pp (one query's weight)": tol, "valid_queries": n}
    ok = rc == 0 and diff is not None and diff <= tol
    note = (f"max diff {diff:.2f} pp vs training's table (tolerance {tol:.2f} pp = one of {n} "
            f"queries)" if diff is not None else f"rc {rc}, no table")
    return r.record("eval_only", "pass" if ok else "fail", wall, limit, rc, figs, note=note,
                    output=out)


def step_launch(r, trained):
    """nccl_launch.py (gloo on CPU): ``--eval-only`` of the training's checkpoint in a spawned
    worker of the plugin's launch worker: the worker's process group, its backend and an
    evaluation under it, without a second training."""
    if not trained or not trained["final"]:
        return r.record("launch", "fail", note="no checkpoint: the train step did not write "
                                               "model_final.pth")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = list(trained["opts"])
    opts[opts.index("OUTPUT_DIR") + 1] = os.path.join(ARGS.work, "launch")
    cmd = [PY, "bench/gpu/nccl_launch.py", "--dist-url", f"tcp://127.0.0.1:{port}",
           *trained["cfg"], "--eval-only", *opts, "MODEL.WEIGHTS", trained["final"]]
    rc, out, wall, limit = r.run("launch", cmd, py_env())
    backend = re.findall(r"BACKEND (\w+)", out)
    want = "nccl" if ARGS.device == "cuda" else "gloo"
    table = eval_table(out)
    ok = rc == 0 and backend[-1:] == [want] and table == trained["table"]
    r.record("launch", "pass" if ok else "fail", wall, limit, rc,
             {"backend": backend[-1] if backend else None, "eval (percent)": table},
             note=f"backend {backend}, the training's table: {table == trained['table']}",
             output=out)


def step_eval(r):
    path = os.path.join(ARGS.work, "eval_bench.json")
    if ARGS.tiny:
        cmd = ["--num-query", "300", "--num-gallery", "2000", "--num-ids", "100",
               "--num-cams", "4", "--dim", "64", "--repeat", "1", "--threads", "1",
               "--skip", "fastreid_py", "fastreid_cy", "--device", "cpu"]
    else:
        cmd = ["--full", "--device", "cuda", "--repeat", "2", "--chunk-size", "2048",
               "--threads", str(min(8, os.cpu_count() or 1))]
    rc, out, wall, limit = r.run("eval_bench", [PY, "bench/eval_bench.py", *cmd, "--json", path],
                                 py_env())
    if rc != 0 or not os.path.isfile(path):
        return r.record("eval_bench", "fail", wall, limit, rc,
                        note="timed out" if rc is None else f"rc {rc}", output=out)
    s = json.load(open(path))
    ratio = s.get("ours_over_matmul_x")
    t_ours = s.get("median_s", {}).get("ours")
    targets = [] if ARGS.tiny else [
        target("evaluation / bare fp32 product time", ratio, "x", "<=", 1.2),
        target("MSMT17-scale evaluation time", t_ours, "s", "<=", 10)]
    ok = ratio is not None and not s.get("errors")
    r.record("eval_bench", "pass" if ok else "fail", wall, limit, rc, {"summary": s}, targets,
             note=f"ours {t_ours} s, {ratio if ratio else float('nan'):.3f}x the bare product",
             output=out)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU dry-run)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu_check/out",
                    help="report.json, summary.txt and log.txt go here (default $OUT)")
    ap.add_argument("--work", default="/tmp/gpu_check/work", help="scratch: data, checkpoints")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                    help="seconds for all steps together; each step also has its own limit")
    ap.add_argument("--steps", default="", help="comma list of steps to run (default: all)")
    ARGS = ap.parse_args(argv)
    if ARGS.device == "cpu" and not ARGS.tiny:
        ap.error("--device cpu runs only with --tiny (the dry-run)")
    os.makedirs(ARGS.out, exist_ok=True)
    os.makedirs(ARGS.work, exist_ok=True)
    r = Runner(ARGS)
    order = ORDER + (["launch"] if ARGS.tiny else [])
    wanted = [s for s in ARGS.steps.split(",") if s] or order
    unknown = sorted(set(wanted) - set(order))
    if unknown:
        ap.error(f"--steps: unknown {unknown}; steps are {order}")
    state = {"env": {}, "trained": None}

    def train():
        state["trained"] = step_train(r)

    actions = {
        "env": lambda: state.update(env=step_env(r)),
        "cuda_tests": lambda: step_pytest(r, "cuda_tests", CUDA_TEST_FILES),
        "train": train,
        "eval_only": lambda: step_eval_only(r, state["trained"]),
        "eval_bench": lambda: step_eval(r),
        "bench_bf16": lambda: step_bench(r, "bench_bf16", "bf16",
                                         [] if ARGS.tiny else ["--max-batch-gb", "24"]),
        "bench_fp16": lambda: step_bench(r, "bench_fp16", "fp16"),
        "bench_ckpt": lambda: step_bench(r, "bench_ckpt", "bf16", ["--grad-ckpt"]),
        "multi_gpu": lambda: step_multi_gpu(r, state["env"]),
        "launch": lambda: step_launch(r, state["trained"]),
    }
    for name in order:
        # env always runs: the GPU count decides the multi_gpu step; eval_only and launch
        # evaluate train's checkpoint
        if name not in wanted and name != "env" and not (
                name == "train" and {"eval_only", "launch"} & set(wanted)):
            continue
        if r.remaining() < 3:
            r.record(name, "fail", note="no time left in the run's budget")
            continue
        try:
            actions[name]()
        except Exception as e:  # noqa: BLE001  (a broken step must not lose the report)
            r.record(name, "fail", note=f"check.py error: {e!r}")
        write_report(r, state["env"])  # after every step: a killed run keeps what it did
    counts = write_report(r, state["env"], final=True)
    r.log.close()
    return 1 if counts["fail"] else 0


def write_report(r, env, final=False):
    """report.json and summary.txt of the steps so far; returns the status counts."""
    counts = {k: sum(s["status"] == k for s in r.steps) for k in ("pass", "fail", "skip")}
    report = {"env": env, "steps": r.steps, "counts": counts, "finished": final,
              "total_wall_s": round(time.perf_counter() - r.t0, 1), "budget_s": ARGS.budget,
              "units": "time s / ms as named, throughput img/s, FLOP rates TFLOP/s, memory "
                       "GiB or MB as named, metrics in percent"}
    with open(os.path.join(ARGS.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    lines = [f"bench/gpu/check.py {env.get('date', '')}  device {ARGS.device}  "
             f"{env.get('gpu', '')} x {env.get('gpu_count')}  driver {env.get('driver')}  "
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')})  "
             f"mode {'tiny' if ARGS.tiny else 'full'}"]
    for s in r.steps:
        lines.append(f"[{s['status']:4s}] {s['name']:<11s} {s['wall_s']:6.1f} s  {s['note']}")
        for t in s["targets"]:
            met = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
            val = t["value"] if t["value"] is None else round(t["value"], 3)
            lines.append(f"        target {t['name']}: {val} {t['unit']} "
                         f"(target {t['target']}): {met}")
    lines.append(f"{counts} in {report['total_wall_s']} s (budget {ARGS.budget:.0f} s)"
                 + ("" if final else "  (unfinished)"))
    with open(os.path.join(ARGS.out, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if final:
        print("\n".join(lines), flush=True)
    return counts


ARGS = None

if __name__ == "__main__":
    sys.exit(main())
