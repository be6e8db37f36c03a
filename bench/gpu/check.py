#!/usr/bin/env python
"""The GPU path end to end, in one command with a time budget per step (docs/gpu/README.md).

    python bench/gpu/check.py --device cuda --out $OUT        # on the GPU machine (run.sh)
    python bench/gpu/check.py --device cpu --tiny --out DIR   # the same steps, tiny, on CPU

Steps (each a subprocess with its own timeout, killed with its children when it runs over;
every step also stops at the run's overall deadline, ``--budget``):

  env          GPU name, driver, torch / CUDA / cuDNN versions, package versions
  cuda_tests   ``pytest -m cuda tests/test_cuda.py`` (skipped without CUDA), one row per test
  bench_bf16   bench/model_bench.py: ViT-B GLTrans and the ViT baseline, 256x128, batch 64, bf16
               AMP: step time, img/s, MFU against the bf16 ``torch.mm`` 8192^3 peak measured in
               the same process, peak memory, GLTrans / ViT time vs FLOP ratio, and the
               largest GLTrans batch within 24 GiB
  bench_fp16   the same in fp16 AMP (GradScaler)
  bench_ckpt   the same in bf16 with activation checkpointing
  train        projects/train_net.py on the synthetic set at 256x128, ViT-B GLTrans from random
               init, AMP, ~300 iterations: the loss falls, weights move between the two
               checkpoints, the evaluation table is printed; then ``--eval-only`` of the final
               checkpoint gives the same table
  launch       (--tiny only) bench/gpu/nccl_launch.py: train_net in a spawned worker (gloo on
               CPU; on CUDA cuda_tests runs it with NCCL)
  eval_bench   bench/eval_bench.py --full --device cuda: MSMT17-scale evaluation vs a bare
               ``torch.mm`` of the same shapes

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
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable

# a-priori budgets (seconds) per step on the GPU machine; their sum stays under --budget
BUDGETS = {"env": 20, "cuda_tests": 150, "bench_bf16": 75, "bench_fp16": 35, "bench_ckpt": 35,
           "train": 90, "eval_only": 40, "launch": 60, "eval_bench": 60}
TINY_BUDGETS = {k: 240 for k in BUDGETS}  # shared CPUs: generous, the deadline still holds


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
def step_env(r):
    t = time.perf_counter()
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "mode": "tiny" if ARGS.tiny else "full",
            "device": ARGS.device}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                    else None, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                        capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count)
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = repr(e)
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
    rc, out, _, _ = r.run("env", [PY, "-c", "import gltrans_plugin, fastreid, fvcore, faiss; "
                                            "print('imports ok')"], py_env())
    ok = rc == 0 and (ARGS.device == "cpu" or info.get("cuda_available"))
    r.write(json.dumps(info, indent=1) + "\n")
    r.record("env", "pass" if ok else "fail", time.perf_counter() - t, BUDGETS["env"], rc,
             figures=info, note=info.get("gpu", info.get("torch", "")), output=out)
    return info


def step_cuda_tests(r):
    junit = os.path.join(ARGS.work, "junit.xml")
    cmd = [PY, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "addopts="]
    try:
        import pytest_timeout  # noqa: F401

        cmd += ["--timeout", "120"]
    except ImportError:
        pass
    rc, out, wall, limit = r.run("cuda_tests", cmd, py_env())
    tests = {}
    if os.path.isfile(junit):
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = "pass"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "fail"
                elif child.tag == "skipped":
                    outcome = "skip"
            tests[case.get("name")] = {"status": outcome, "time_s": float(case.get("time", 0))}
        os.remove(junit)
    statuses = {t["status"] for t in tests.values()}
    if rc is None:
        status, note = "fail", "timed out"
    elif rc not in (0, 5) or "fail" in statuses or not tests:
        status, note = "fail", f"rc {rc}"
    elif statuses == {"skip"}:
        status, note = "skip", "no CUDA: every test skipped"
    else:
        status = "pass"
        note = f"{sum(t['status'] == 'pass' for t in tests.values())} passed"
    r.record("cuda_tests", status, wall, limit, rc, figures={"tests": tests}, note=note,
             output=out)


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
                 "DATASETS.SYNTHETIC.WIDTH", "32", "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "16",
                 "DATASETS.SYNTHETIC.NUM_TEST_IDS", "8", "SOLVER.IMS_PER_BATCH", "16",
                 "SOLVER.MAX_EPOCH", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                 "TEST.EVAL_PERIOD", "4", "SOLVER.LOG_PERIOD", "3",
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
    if os.path.isfile(final) and r.remaining() > 5:
        rc2, out2, wall2, _ = r.run("eval_only", [PY, "projects/train_net.py", *cfg,
                                                  "--eval-only", *opts, "MODEL.WEIGHTS", final],
                                    py_env())
        wall += wall2
        table2 = eval_table(out2)
        figs["eval_only_of_final_checkpoint (percent)"] = table2
        diff = (max(abs(table[k] - table2[k]) for k in table if k in table2)
                if table and table2 else None)
        figs["eval_only_max_diff_pp"] = diff
        checks["checkpoint loads (eval-only table = training's)"] = \
            rc2 == 0 and diff is not None and diff <= 0.2
        out += out2
    else:
        checks["checkpoint loads (eval-only table = training's)"] = False
    figs["checks"] = checks
    ok = rc == 0 and all(checks.values())
    note = ", ".join(f"{k}: {'ok' if v else 'NO'}" for k, v in checks.items())
    r.record("train", "pass" if ok else "fail", wall, limit, rc, figs, note=note, output=out)


def step_launch(r):
    out_dir = os.path.join(ARGS.work, "launch")
    shutil.rmtree(out_dir, ignore_errors=True)
    opts, _ = train_opts(ARGS.work)
    opts = [x for x in opts]
    i = opts.index("OUTPUT_DIR")
    opts[i + 1] = out_dir
    i = opts.index("SOLVER.MAX_EPOCH")
    opts[i + 1] = "1"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [PY, "bench/gpu/nccl_launch.py", "--dist-url", f"tcp://127.0.0.1:{port}",
           "--config-file", "configs/GLTrans/synthetic_demo.yml", *opts,
           "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "1"]
    rc, out, wall, limit = r.run("launch", cmd, py_env())
    backend = re.findall(r"BACKEND (\w+)", out)
    want = "nccl" if ARGS.device == "cuda" else "gloo"
    ok = rc == 0 and backend[-1:] == [want] and os.path.isfile(
        os.path.join(out_dir, "model_final.pth"))
    r.record("launch", "pass" if ok else "fail", wall, limit, rc,
             {"backend": backend[-1] if backend else None}, note=f"backend {backend}", output=out)


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
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds for all steps together; each step also has its own limit")
    ap.add_argument("--steps", default="", help="comma list of steps to run (default: all)")
    ARGS = ap.parse_args(argv)
    if ARGS.device == "cpu" and not ARGS.tiny:
        ap.error("--device cpu runs only with --tiny (the dry-run)")
    os.makedirs(ARGS.out, exist_ok=True)
    os.makedirs(ARGS.work, exist_ok=True)
    r = Runner(ARGS)
    order = ["env", "cuda_tests", "bench_bf16", "train", "eval_bench", "bench_fp16",
             "bench_ckpt"] + (["launch"] if ARGS.tiny else [])
    wanted = [s for s in ARGS.steps.split(",") if s] or order
    actions = {
        "env": lambda: step_env(r),
        "cuda_tests": lambda: step_cuda_tests(r),
        "bench_bf16": lambda: step_bench(r, "bench_bf16", "bf16",
                                         [] if ARGS.tiny else ["--max-batch-gb", "24"]),
        "bench_fp16": lambda: step_bench(r, "bench_fp16", "fp16"),
        "bench_ckpt": lambda: step_bench(r, "bench_ckpt", "bf16", ["--grad-ckpt"]),
        "train": lambda: step_train(r),
        "launch": lambda: step_launch(r),
        "eval_bench": lambda: step_eval(r),
    }
    env = {}
    for name in order:
        if name not in wanted:
            continue
        if r.remaining() < 3:
            r.record(name, "fail", note="no time left in the run's budget")
            continue
        try:
            res = actions[name]()
            if name == "env":
                env = res
        except Exception as e:  # noqa: BLE001  (a broken step must not lose the report)
            r.record(name, "fail", note=f"check.py error: {e!r}")
    counts = {k: sum(s["status"] == k for s in r.steps) for k in ("pass", "fail", "skip")}
    report = {"env": env, "steps": r.steps, "counts": counts,
              "total_wall_s": round(time.perf_counter() - r.t0, 1), "budget_s": ARGS.budget,
              "units": "time s / ms as named, throughput img/s, FLOP rates TFLOP/s, memory "
                       "GiB or MB as named, metrics in percent"}
    with open(os.path.join(ARGS.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    lines = [f"bench/gpu/check.py {env.get('date', '')}  device {ARGS.device}  "
             f"{env.get('gpu', '')}  driver {env.get('driver')}  torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda')})  mode {'tiny' if ARGS.tiny else 'full'}"]
    for s in r.steps:
        lines.append(f"[{s['status']:4s}] {s['name']:<11s} {s['wall_s']:6.1f} s  {s['note']}")
        for t in s["targets"]:
            met = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
            val = t["value"] if t["value"] is None else round(t["value"], 3)
            lines.append(f"        target {t['name']}: {val} {t['unit']} "
                         f"(target {t['target']}): {met}")
    lines.append(f"{counts} in {report['total_wall_s']} s (budget {ARGS.budget:.0f} s)")
    with open(os.path.join(ARGS.out, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    r.log.close()
    return 1 if counts["fail"] else 0


ARGS = None

if __name__ == "__main__":
    sys.exit(main())
