"""tools/reproduce.py and gltrans_plugin/reproduce/: the paper's table rows, run planning
(seeds, finished runs skipped), the command of each run, failures reported and not fatal, the CPU
preset (derived from the synthetic demo, flattened to command-line options that merge back to the
same values, every row building at its size), and the md / csv / png summary.

No training except one 1-epoch run of the tiny preset on a small synthetic set (marked slow).
"""
import csv
import fcntl
import json
import os
import re
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin import reproduce as rp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import reproduce as tool  # noqa: E402  (tools/reproduce.py: the repository's files)

DEMO = os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml")
ABLATIONS = tool.ABLATIONS
PRESETS = tool.PRESETS
ALL_ROWS = [row for n in sorted(rp.PAPER_TABLES) for row in rp.table_rows(n, ABLATIONS)]

# keys the tool or the preset set differently from the demo on purpose; MODEL.GLTRANS.* is what
# the ablation rows change
PRESET_DIFFERS = ("OUTPUT_DIR", "SEED", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
                  "TEST.EVAL_BEFORE_TRAIN")


def cfg_items(node, prefix=""):
    """CfgNode -> {"A.B": value} (values as the config holds them)."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(cfg_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def norm(v):
    """Tuples and lists compare equal (fast-reid's config converts between them)."""
    return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def cfg_get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


# ---------------------------------------------------------------------- tables
def test_tables_cover_every_ablation_config_with_the_papers_numbers():
    files = {f[:-4] for f in os.listdir(ABLATIONS) if f.endswith(".yml")}
    names = [r.name for r in ALL_ROWS]
    assert sorted(names) == sorted(files) and len(set(names)) == len(names)
    assert {n: len(rp.table_rows(n, ABLATIONS)) for n in rp.PAPER_TABLES} == {
        4: 4, 5: 5, 6: 4, 7: 4, 8: 4, 9: 5, 10: 4}
    for n in rp.PAPER_TABLES:
        assert all(r.name.startswith(f"table{n}_") for r in rp.table_rows(n, ABLATIONS))
    for row in ALL_ROWS:
        comment = rp.first_comment(row.config)  # e.g. "Table 10, 1 GMA head(s) (68.5 / 85.4)."
        m = re.search(r"\((\d+\.\d) / (\d+\.\d)", comment)
        assert m, comment
        assert (row.paper_map, row.paper_rank1) == (float(m.group(1)), float(m.group(2))), row
    assert rp.table_rows(5, ABLATIONS)[0].description == "Model-1: baseline (ViT-B/16 + SIE)"
    with pytest.raises(ValueError, match="No table 3"):
        rp.table_rows(3, ABLATIONS)


def test_config_rows_keep_paper_rows_and_name_others(tmp_path):
    other = tmp_path / "my_variant.yml"
    other.write_text("# my variant: lower LR\nSOLVER: {BASE_LR: 0.004}\n")
    rows = rp.config_rows([os.path.join(ABLATIONS, "table8_parts_6.yml"), str(other),
                           str(other)], ABLATIONS)
    assert [r.name for r in rows] == ["table8_parts_6", "my_variant", "my_variant_2"]
    assert (rows[0].label, rows[0].paper_map, rows[0].paper_rank1) == ("P = 6", 68.9, 85.7)
    assert rows[1].changes == "my variant: lower LR" and rows[1].paper_map is None
    with pytest.raises(FileNotFoundError):
        rp.config_rows([str(tmp_path / "nope.yml")])


# ---------------------------------------------------------------------- planning
def test_plan_every_row_and_seed_seed_by_seed_and_finished_runs(tmp_path):
    rows = rp.table_rows(5, ABLATIONS)
    runs = rp.plan(rows, [0, 1, 1], str(tmp_path))
    assert [(r.row.name, r.seed) for r in runs] == [(row.name, s) for s in (0, 1) for row in rows]
    assert runs[6].out_dir == str(tmp_path / "table5_model2" / "seed1")
    assert not any(r.done for r in runs)
    os.makedirs(runs[6].out_dir)
    with open(os.path.join(runs[6].out_dir, "results.json"), "w") as f:
        json.dump({"final": {"Rank-1": 1.0, "mAP": 2.0, "mINP": 3.0}}, f)
    assert [r.done for r in rp.plan(rows, [0, 1], str(tmp_path))] == [i == 6 for i in range(10)]
    with pytest.raises(ValueError):
        rp.plan(rows, [], str(tmp_path))


def test_train_command_and_shared_overrides():
    run = rp.Run(rp.table_rows(8, ABLATIONS)[3], 2, "out/table8_parts_6/seed2")
    cmd = rp.train_command(run, ["A.B", "1"], train_script="t.py")
    assert cmd == [sys.executable, "t.py", "--config-file", run.row.config,
                   "OUTPUT_DIR", run.out_dir, "SEED", "2", "A.B", "1"]
    assert rp.train_command(run, resume=True, num_gpus=2, train_script="t.py")[4:7] == [
        "--num-gpus", "2", "--resume"]

    over = rp.shared_overrides(dataset="Market1501", epochs=3, device="cuda",
                               opts=["SOLVER.BASE_LR", "0.1"])
    assert over == ["DATASETS.NAMES", "('Market1501',)", "DATASETS.TESTS", "('Market1501',)",
                    "SOLVER.MAX_EPOCH", "3", "SOLVER.CHECKPOINT_PERIOD", "3",
                    "TEST.EVAL_PERIOD", "3", "MODEL.DEVICE", "cuda", "SOLVER.BASE_LR", "0.1"]
    with pytest.raises(ValueError, match="not registered"):
        rp.shared_overrides(dataset="NoSuchSet")
    with pytest.raises(ValueError, match="set per run"):
        rp.shared_overrides(opts=["OUTPUT_DIR", "x"])
    with pytest.raises(ValueError, match="pairs"):
        rp.shared_overrides(opts=["SOLVER.BASE_LR"])
    # the preset's epoch count gives the periods (evaluate / checkpoint at the end); --epochs wins
    demo_epochs = rp.own_keys(DEMO)["SOLVER.MAX_EPOCH"]
    for epochs, want in ((None, demo_epochs), (2, 2)):
        over = rp.shared_overrides(preset="cpu", epochs=epochs, presets=PRESETS)
        flat = dict(zip(over[0::2], over[1::2]))
        assert [flat[k] for k in ("SOLVER.MAX_EPOCH", "SOLVER.CHECKPOINT_PERIOD",
                                  "TEST.EVAL_PERIOD")] == [str(want)] * 3


def test_cli_parses_trailing_options_after_configs_and_seeds():
    a = tool.parse_args(["--configs", "a.yml", "b.yaml", "SOLVER.BASE_LR", "0.1"])
    assert a.configs == ["a.yml", "b.yaml"] and a.opts == ["SOLVER.BASE_LR", "0.1"]
    assert a.output == os.path.join("logs", "reproduce", "configs")
    a = tool.parse_args(["--table", "5", "--seeds", "0", "1", "MODEL.X", "-1"])
    assert a.seeds == [0, 1] and a.opts == ["MODEL.X", "-1"] and a.table == 5
    assert a.output == os.path.join("logs", "reproduce", "table5")
    with pytest.raises(SystemExit):
        tool.parse_args(["--table", "3"])


# ---------------------------------------------------------------------- preset
@pytest.mark.parametrize("value", [
    "tiny", "Adam", "", "a b", "1", "True", "(1, 2)", "logs/x", 0, -3, 0.0001, 1e-05, 2.5, True,
    False, None, (16, 16), (-1,), ("SyntheticReID",), ("local", "cls_last"), [128, 64],
    [127.5, 127.5, 127.5]])
def test_format_value_round_trips_through_merge_from_list(value):
    from fastreid.config import CfgNode

    cfg = CfgNode({"K": value})
    cfg.merge_from_list(["K", rp.format_value(value)])
    assert cfg.K == value and type(cfg.K) is type(value)


def test_preset_opts_merge_back_to_the_preset_values():
    from gltrans_plugin.config import setup_cfg

    values = rp.preset_values("cpu", PRESETS)
    opts = rp.preset_opts("cpu", PRESETS)
    assert opts[0::2] == list(values) and all(isinstance(v, str) for v in opts)
    cfg = setup_cfg(os.path.join(ABLATIONS, "table4_ours.yml"), opts)
    for k, v in values.items():
        assert norm(cfg_get(cfg, k)) == norm(v), k


def test_cpu_preset_is_the_demo_recipe_on_every_row():
    """Under the tool's options, a row config equals the synthetic demo in every key but the
    row's own GLTrans switches and the output / seed / evaluation settings."""
    from gltrans_plugin.config import setup_cfg

    values = rp.preset_values("cpu", PRESETS)
    demo = cfg_items(setup_cfg(DEMO))
    own = rp.own_keys(DEMO)
    for k, v in own.items():  # every key the demo sets is in the preset, with its value
        if k not in PRESET_DIFFERS:
            assert k in values and norm(values[k]) == norm(demo[k]), k
    for k in ("MODEL.BACKBONE.DEPTH", "MODEL.BACKBONE.FEAT_DIM", "MODEL.BACKBONE.STRIDE_SIZE",
              "MODEL.BACKBONE.DROP_PATH_RATIO", "MODEL.BACKBONE.PRETRAIN", "INPUT.SIZE_TRAIN",
              "INPUT.SIZE_TEST", "INPUT.PADDING.SIZE", "DATASETS.NAMES", "DATASETS.TESTS",
              "DATALOADER.NUM_WORKERS", "SOLVER.AMP.ENABLED", "SOLVER.OPT", "SOLVER.BASE_LR",
              "SOLVER.WEIGHT_DECAY", "SOLVER.MAX_EPOCH", "SOLVER.IMS_PER_BATCH",
              "SOLVER.WARMUP_EPOCHS", "CUDNN_BENCHMARK", "SOLVER.LOG_PERIOD"):
        assert k in values, k
    assert "OUTPUT_DIR" not in values and "SEED" not in values
    assert values["TEST.EVAL_BEFORE_TRAIN"] is False
    opts = rp.shared_overrides(preset="cpu", presets=PRESETS)
    for row in ALL_ROWS:
        cfg = cfg_items(setup_cfg(row.config, opts))
        differ = sorted(k for k in set(cfg) | set(demo) if norm(cfg.get(k)) != norm(demo.get(k))
                        and k not in PRESET_DIFFERS and not k.startswith("MODEL.GLTRANS."))
        assert not differ, (row.name, {k: (cfg.get(k), demo.get(k)) for k in differ})
        assert cfg["SOLVER.CHECKPOINT_PERIOD"] == cfg["TEST.EVAL_PERIOD"] == demo[
            "SOLVER.MAX_EPOCH"]


def test_preset_follows_its_source_file(tmp_path):
    demo = tmp_path / "demo.yml"
    demo.write_text("_BASE_: Base.yml\nMODEL:\n  BACKBONE:\n    DEPTH: small\n"
                    "    STRIDE_SIZE: (12, 12)\nSOLVER:\n  BASE_LR: 0.002\n"
                    "  AMP: {ENABLED: False}\nOUTPUT_DIR: x\n")
    (tmp_path / "p").mkdir()
    preset = tmp_path / "p" / "preset.yml"
    preset.write_text("_PRESET_: {FROM: ../demo.yml, EXCLUDE: [OUTPUT_DIR, SOLVER.AMP]}\n"
                      "SOLVER: {BASE_LR: 0.003}\n")
    assert rp.preset_values(str(preset)) == {"MODEL.BACKBONE.DEPTH": "small",
                                             "MODEL.BACKBONE.STRIDE_SIZE": (12, 12),
                                             "SOLVER.BASE_LR": 0.003}
    demo.write_text(demo.read_text().replace("small", "tiny"))  # the demo changes ...
    # ... and so does the preset
    assert rp.preset_values(str(preset))["MODEL.BACKBONE.DEPTH"] == "tiny"
    bad = tmp_path / "bad.yml"
    bad.write_text("_BASE_: demo.yml\n")
    with pytest.raises(ValueError, match="_BASE_"):
        rp.preset_values(str(bad))
    with pytest.raises(ValueError, match="Unknown preset"):
        rp.preset_values("gpu", PRESETS)


def expected_feat_dim(cfg):
    """(P + 2)·D for the full model; per test branch: global D (K·D when concatenated), local
    P·D, cls_last D, cls K·D; D = 192 for the tiny ViT."""
    g, d = cfg.MODEL.GLTRANS, 192
    k, p = len(g.AGG_LAYERS), g.PTL.NUM_PARTS
    dims = {"global": k * d if g.GAE.AGGREGATION == "concat" else d, "local": p * d,
            "cls_last": d, "cls": k * d}
    return sum(dims[b] for b in g.TEST_BRANCHES)


@pytest.fixture
def one_thread():
    """One torch thread: 30 small models build ~10x faster than with two on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("row", ALL_ROWS, ids=[r.name for r in ALL_ROWS])
def test_every_row_builds_at_the_cpu_preset_size(row, one_thread):
    from fastreid.modeling import build_model

    from gltrans_plugin.config import setup_cfg
    from gltrans_plugin.checks import validate_config

    cfg = setup_cfg(row.config, rp.shared_overrides(preset="cpu", presets=PRESETS) + [
        "MODEL.HEADS.NUM_CLASSES", "8", "MODEL.BACKBONE.NUM_CAMERAS", "4", "MODEL.DEVICE", "cpu"])
    assert tuple(cfg.INPUT.SIZE_TEST) == (128, 64) and cfg.MODEL.BACKBONE.FEAT_DIM == 192
    validate_config(cfg)  # what the trainer checks before reading data
    model = build_model(cfg).eval()
    with torch.no_grad():
        feat = model({"images": torch.rand(2, 3, 128, 64) * 255, "camids": torch.tensor([0, 3])})
    assert tuple(feat.shape) == (2, expected_feat_dim(cfg)) and torch.isfinite(feat).all()
    if row.name == "table4_ours":
        assert feat.shape[1] == (3 + 2) * 192


# ---------------------------------------------------------------------- running
FAKE_TRAIN = """
import json, os, sys
args = sys.argv[1:]
cfg = args[args.index("--config-file") + 1]
out = args[args.index("OUTPUT_DIR") + 1]
seed = int(args[args.index("SEED") + 1])
print("fake training", cfg, "seed", seed)
if "bad" in os.path.basename(cfg):
    print("Traceback: something broke in", os.path.basename(cfg))
    sys.exit(3)
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "config.yaml"), "w") as f:
    f.write("DATASETS:\\n  TESTS: ('SyntheticReID',)\\n")
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"final": {"Rank-1": 10.0 + seed, "mAP": 20.0 + 2 * seed, "mINP": 5.0},
               "before": None, "iteration": 9}, f)
"""


def test_failed_runs_are_reported_and_the_others_go_on(tmp_path, caplog):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    configs = []
    for name in ("good_a", "bad_b", "good_c"):
        (tmp_path / f"{name}.yml").write_text(f"# {name}\n")
        configs.append(str(tmp_path / f"{name}.yml"))
    rows = rp.config_rows(configs)
    out = str(tmp_path / "out")
    runs = rp.plan(rows, [0, 1], out)
    os.makedirs(runs[0].out_dir)  # good_a seed 0 finished before
    with open(os.path.join(runs[0].out_dir, "results.json"), "w") as f:
        json.dump({"final": {"Rank-1": 50.0, "mAP": 60.0, "mINP": 7.0}}, f)
    caplog.set_level("INFO", logger="gltrans_plugin.reproduce")
    outcomes = rp.execute(runs, ["K", "V"], train_script=str(script))
    got = {(o.run.row.name, o.run.seed): o.status for o in outcomes}
    assert got == {("good_a", 0): "skipped", ("bad_b", 0): "failed", ("good_c", 0): "ok",
                   ("good_a", 1): "ok", ("bad_b", 1): "failed", ("good_c", 1): "ok"}
    failed = [o for o in outcomes if o.status == "failed"]
    assert all(o.returncode == 3 and "something broke in bad_b.yml" in o.tail[-1]
               for o in failed)
    log = caplog.text
    assert "good_a seed 0: finished before" in log and "skipped" in log
    assert "bad_b seed 0 FAILED (exit code 3)" in log and "something broke" in log
    assert "good_c seed 1: done in" in log and "mAP 22.00" in log
    info = json.load(open(os.path.join(out, "bad_b", "seed1", "reproduce.json")))
    assert info["returncode"] == 3 and info["command"][-2:] == ["K", "V"]
    summaries = rp.collect(rows, [0, 1], out)
    assert [s.status for s in summaries] == ["ok", "failed", "ok"]
    assert summaries[1].note == "seed 0: exit 3, seed 1: exit 3"
    assert summaries[0].stat("mAP") == (41.0, pytest.approx(np.std([60.0, 22.0], ddof=1)))


def test_parallel_jobs_give_the_same_outcomes_and_split_the_threads(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text("import os\nprint('threads', os.environ.get('OMP_NUM_THREADS'))\n"
                      + FAKE_TRAIN)
    configs = []
    for name in ("good_a", "bad_b", "good_c"):
        (tmp_path / f"{name}.yml").write_text(f"# {name}\n")
        configs.append(str(tmp_path / f"{name}.yml"))
    runs = rp.plan(rp.config_rows(configs), [0, 1], str(tmp_path / "out"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    outcomes = rp.execute(runs, [], train_script=str(script), env=env, jobs=2)
    assert [(o.run.row.name, o.run.seed, o.status) for o in outcomes] == [
        (r.row.name, r.seed, "failed" if r.row.name == "bad_b" else "ok") for r in runs]
    expected = str(max(1, (os.cpu_count() or 1) // 2))
    for r in runs:
        assert f"threads {expected}" in open(os.path.join(r.out_dir, rp.OUTPUT_FILE)).read()


def _configs(tmp_path, *names):
    paths = []
    for name in names:
        (tmp_path / f"{name}.yml").write_text(f"# {name}\n")
        paths.append(str(tmp_path / f"{name}.yml"))
    return paths


RESTARTING_TRAIN = """
import json, os, sys
args = sys.argv[1:]
out = args[args.index("OUTPUT_DIR") + 1]
resume = "--resume" in args
print("resuming" if resume else "fresh start")
with open(os.path.join(out, "metrics.json"), "a") as f:  # appends, as fast-reid's JSONWriter
    for it in range(2 if resume else 0, 4):
        f.write(json.dumps({"iteration": it, "total_loss": 2.0 if resume else 1.0}) + "\\n")
if os.environ.get("FAKE_KILLED"):
    sys.exit(-9 % 256)
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"final": {"Rank-1": 1.0, "mAP": 2.0, "mINP": 3.0}}, f)
"""


def test_a_run_started_again_sets_the_earlier_attempt_aside(tmp_path, caplog):
    """A run that starts from scratch does not mix its metrics.json (appended to by fast-reid)
    with an unfinished earlier attempt's: that folder is kept as seed<s>.attempt<k>; a resumed
    run continues in its folder."""
    script = tmp_path / "fake_train.py"
    script.write_text(RESTARTING_TRAIN)
    rows = rp.config_rows(_configs(tmp_path, "row_a", "row_b"))
    out = tmp_path / "out"
    runs = rp.plan(rows, [0], str(out))
    env = dict(os.environ, FAKE_KILLED="1")
    assert [o.status for o in rp.execute(runs, train_script=str(script), env=env)] == [
        "failed", "failed"]
    (out / "row_b" / "seed0" / "last_checkpoint").write_text("model_0000001.pth")
    caplog.set_level("INFO", logger="gltrans_plugin.reproduce")
    outcomes = rp.execute(runs, train_script=str(script), resume=True)
    assert [o.status for o in outcomes] == ["ok", "ok"]

    def iterations(folder):
        return [json.loads(line)["iteration"] for line in open(folder / "metrics.json")]

    a = out / "row_a" / "seed0"  # no checkpoint: started again, the earlier files set aside
    assert iterations(a) == [0, 1, 2, 3]
    assert iterations(out / "row_a" / "seed0.attempt1") == [0, 1, 2, 3]
    assert open(a / rp.OUTPUT_FILE).read() == "fresh start\n"
    assert f"row_a seed 0: starting again; the earlier attempt's files are now in " \
           f"{out / 'row_a' / 'seed0.attempt1'}" in caplog.text
    b = out / "row_b" / "seed0"  # a checkpoint: resumed in place
    assert iterations(b) == [0, 1, 2, 3, 2, 3] and not (out / "row_b" / "seed0.attempt1").exists()
    assert open(b / rp.OUTPUT_FILE).read() == "fresh start\nresuming\n"
    assert [s.seeds for s in rp.collect(rows, None, str(out))] == [[0], [0]]  # attempts unread

    (a / rp.RESULTS_FILE).unlink()  # unfinished, but a live training holds the folder's lock
    with open(a / "run.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        got = {o.run.row.name: o for o in rp.execute(runs, train_script=str(script))}
    assert got["row_b"].status == "skipped"
    assert got["row_a"].status == "failed" and got["row_a"].tail == [
        f"{a} is in use by a running training (its run.lock): wait for it to end or stop it, "
        f"or choose another --output"]
    assert not (out / "row_a" / "seed0.attempt2").exists() and iterations(a) == [0, 1, 2, 3]


STOPPABLE_TRAIN = """
import os, signal, subprocess, sys, time
args = sys.argv[1:]
out = args[args.index("OUTPUT_DIR") + 1]
stubborn = "stubborn" in args[args.index("--config-file") + 1]
# a worker in the training's process group (as a launcher's or a data loader's) that outlives
# the training unless it is killed: it ignores SIGINT and SIGTERM
worker = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                           "[signal.signal(s, signal.SIG_IGN) for s in (2, 15)]; "
                           "open(%r, 'w').close(); time.sleep(120)"
                           % os.path.join(out, "worker_ready")])


def on_signal(signum, frame):
    with open(os.path.join(out, "signals"), "a") as f:
        f.write(f"{signum}\\n")
    if not stubborn:  # a training that saves and exits; the stubborn one goes on
        sys.exit(128 + signum)


for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, on_signal)
while not os.path.exists(os.path.join(out, "worker_ready")):
    time.sleep(0.01)
with open(os.path.join(out, "pids"), "w") as f:
    f.write(f"{os.getpid()} {worker.pid}")
while True:
    time.sleep(0.05)
"""


def _alive(pid):
    """True while ``pid`` exists and is not a zombie (/proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_every_running_row_at_once_and_leaves_no_process(tmp_path, sig, caplog,
                                                                        capsys):
    """--jobs 2 and SIGINT / SIGTERM to the tool: forwarded at once to both running trainings;
    the one that exits is done, the one that ignores it is killed after --stop-timeout; their
    workers are killed too; the third row never starts; tables written; code 128 + signal."""
    script = tmp_path / "fake_train.py"
    script.write_text(STOPPABLE_TRAIN)
    configs = _configs(tmp_path, "polite", "stubborn", "later")
    out = tmp_path / "out"
    pid_files = [out / name / "seed0" / "pids" for name in ("polite", "stubborn")]
    pids, sent = [], []
    handler = signal.getsignal(sig)  # pytest's, or SIG_IGN in a pytest-xdist worker

    def signal_the_tool():  # the tool runs in this process (main thread): signal it
        deadline = time.monotonic() + 60
        while not all(p.is_file() and p.read_text() for p in pid_files):
            if time.monotonic() > deadline:
                break  # the trainings did not start: stop the tool anyway (the test fails)
            time.sleep(0.02)
        pids.extend(int(x) for p in pid_files if p.is_file() for x in p.read_text().split())
        sent.append(time.monotonic())
        os.kill(os.getpid(), sig)

    sender = threading.Thread(target=signal_the_tool)
    sender.start()
    try:
        res = tool.main(["--configs", *configs, "--jobs", "2", "--stop-timeout", "1",
                         "--train-script", str(script), "--output", str(out)])
        took = time.monotonic() - sent[0]
    finally:
        sender.join()
        gone = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < gone:
            time.sleep(0.02)
        left = [p for p in pids if _alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
    assert len(pids) == 4 and left == []  # two trainings and their workers: none left
    assert res["returncode"] == 128 + sig
    for name in ("polite", "stubborn"):  # forwarded once, at once
        assert (out / name / "seed0" / "signals").read_text() == f"{int(sig)}\n"
    assert took < 10  # the stop timeout (1 s) and the tables, not the trainings' end
    assert not (out / "later").exists()
    assert [(o.run.row.name, o.status) for o in res["outcomes"]] == [
        ("polite", "interrupted"), ("stubborn", "interrupted"), ("later", "not run")]
    name = signal.Signals(sig).name
    assert (f"{name}: stopping; forwarded to the running trainings (polite seed 0, stubborn "
            f"seed 0), waiting up to 1 s") in caplog.text
    assert "Killing (SIGKILL) the trainings still running: stubborn seed 0" in caplog.text
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: stopped by {name}; runs stopped: polite seed 0, stubborn seed 0: run the "
        f"same command with --resume to continue them from their last checkpoint")
    info = json.loads((out / "polite" / "seed0" / rp.RUN_INFO_FILE).read_text())
    assert info["interrupted"] == name and info["returncode"] == 128 + sig
    md = (out / "configs.md").read_text()
    assert "| polite |" in md and "interrupted (seed 0: interrupted)" in md
    assert "| later |" in md and "| missing |" in md
    assert signal.getsignal(sig) == handler  # the tool put the caller's handler back


def test_cli_bad_config_key_fails_its_row_only(tmp_path):
    """A real train_net.py subprocess failing on an unknown key: reported, not fatal."""
    bad = tmp_path / "bad_key.yml"
    bad.write_text(f"# a typo\n_BASE_: {DEMO}\nMODEL: {{NOT_A_KEY: 1}}\n")
    done = tmp_path / "done_row.yml"
    done.write_text("# finished before\n")
    out = tmp_path / "out"
    (out / "done_row" / "seed0").mkdir(parents=True)
    (out / "done_row" / "seed0" / "results.json").write_text(
        json.dumps({"final": {"Rank-1": 12.5, "mAP": 30.25, "mINP": 9.0}}))
    res = tool.main(["--configs", str(bad), str(done), "--output", str(out),
                          "DATASETS.ROOT", str(tmp_path / "data")])
    assert res["returncode"] == 1
    (o,) = [o for o in res["outcomes"] if o.status == "failed"]
    assert o.run.row.name == "bad_key" and o.returncode != 0
    assert any("NOT_A_KEY" in line for line in o.tail), o.tail
    assert [s.status for s in res["summaries"]] == ["failed", "ok"]
    md = open(out / "configs.md").read()
    assert "| bad_key |" in md and "failed" in md and "30.25 ± -" in md
    assert not (tmp_path / "data").exists()  # failed before reading any data


# ---------------------------------------------------------------------- collection
def test_collect_writes_md_csv_png_with_mean_and_sample_std(tmp_path):
    from PIL import Image

    rows = rp.table_rows(8, ABLATIONS)
    out = str(tmp_path)
    rng = np.random.default_rng(0)
    vals = {}
    seeds_of = {rows[0].name: [0, 1, 2], rows[1].name: [0], rows[2].name: [0, 2]}
    for row in rows[:3]:
        for s in seeds_of[row.name]:
            m = {"Rank-1": float(rng.uniform(10, 90)), "mAP": float(rng.uniform(5, 60)),
                 "mINP": float(rng.uniform(1, 20)), "Rank-5": 99.0}
            vals.setdefault(row.name, []).append(m)
            d = rp.run_dir(out, row, s)
            os.makedirs(d)
            final = {"MSMT17": m} if row is rows[2] else m  # nested: one dict per test set
            json.dump({"final": final, "before": None, "iteration": 3},
                      open(os.path.join(d, "results.json"), "w"))
            open(os.path.join(d, "config.yaml"), "w").write("DATASETS:\n  TESTS: ('MSMT17',)\n")
    d = rp.run_dir(out, rows[3], 0)  # the last row: seed 0 failed, seed 1 never ran
    os.makedirs(d)
    json.dump({"returncode": 1}, open(os.path.join(d, "reproduce.json"), "w"))

    summaries = rp.collect(rows, None, out)  # the seed folders found
    assert [s.seeds for s in summaries] == [[0, 1, 2], [0], [0, 2], [0]]
    assert [s.status for s in summaries] == ["ok", "ok", "ok", "failed"]
    assert rp.collect(rows, [0, 1], out)[1].status == "missing"
    paths = rp.write_reports(summaries, out, "table8", rp.table_title(8))

    with open(paths["csv"]) as f:
        table = {r["row"]: r for r in csv.DictReader(f)}
    for name, ms in vals.items():
        r = table[name]
        assert int(r["n_seeds"]) == len(ms)
        for col, metric in (("rank1", "Rank-1"), ("map", "mAP"), ("minp", "mINP")):
            x = np.array([m[metric] for m in ms])
            assert float(r[f"{col}_mean"]) == pytest.approx(x.mean(), abs=1e-9)
            if len(x) > 1:
                assert float(r[f"{col}_std"]) == pytest.approx(x.std(ddof=1), abs=1e-9)
            else:
                assert r[f"{col}_std"] == ""
    last = table[rows[3].name]
    assert (last["status"], last["n_seeds"], last["map_mean"]) == ("failed", "0", "")
    assert (float(last["paper_map"]), float(last["paper_rank1"])) == (68.9, 85.7)

    md = open(paths["md"]).read()
    assert md == paths["markdown"] and md.startswith("# Table 8: Number of parts")
    assert "Test set: MSMT17" in md
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
             for ln in md.splitlines() if ln.startswith("| table8")}
    for j, metric in ((2, "Rank-1"), (3, "mAP"), (4, "mINP")):
        x = np.array([m[metric] for m in vals[rows[0].name]])
        assert lines[rows[0].name][j] == f"{x.mean():.2f} ± {x.std(ddof=1):.2f}"
        assert lines[rows[1].name][j] == f"{vals[rows[1].name][0][metric]:.2f} ± -"
    assert lines[rows[0].name][:2] == ["P = 1: PTL.NUM_PARTS 1", "3"]
    assert lines[rows[0].name][5:7] == ["68.3", "85.2"]
    assert lines[rows[3].name][1:5] == ["0", "-", "-", "-"]
    assert lines[rows[3].name][-1].startswith("failed")
    img = Image.open(paths["png"])
    assert img.size[0] > 300 and img.size[1] > 200


def test_cli_collect_only(tmp_path, capsys):
    row = rp.table_rows(10, ABLATIONS)[0]
    for s, v in ((3, 40.0), (5, 44.0)):
        d = rp.run_dir(str(tmp_path), row, s)
        os.makedirs(d)
        json.dump({"final": {"Rank-1": v, "mAP": v / 2, "mINP": 1.0}},
                  open(os.path.join(d, "results.json"), "w"))
    res = tool.main(["--table", "10", "--collect-only", "--output", str(tmp_path)])
    assert res["returncode"] == 0 and res["outcomes"] == []
    assert [s.status for s in res["summaries"]] == ["ok", "missing", "missing", "missing"]
    printed = capsys.readouterr().out
    assert "| table10_heads_1 | h = 1: GMA.NUM_HEADS 1 | 2 | 42.00 ± 2.83 | 21.00 ± 1.41" in printed
    for ext in ("md", "csv", "png"):
        assert os.path.isfile(tmp_path / f"table10.{ext}")


# ---------------------------------------------------------------------- one real run
@pytest.mark.slow
def test_cli_trains_one_row_one_epoch_on_the_cpu_preset_then_skips_it(tmp_path):
    out, root = str(tmp_path / "out"), str(tmp_path / "data")
    argv = ["--configs", os.path.join(ABLATIONS, "table5_model5.yml"), "--preset", "cpu",
            "--epochs", "1", "--output", out, "DATASETS.ROOT", root,
            "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "8", "DATASETS.SYNTHETIC.NUM_TEST_IDS", "8",
            "DATASETS.SYNTHETIC.NUM_CAMERAS", "3", "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM", "2",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16", "SOLVER.LOG_PERIOD", "1"]
    res = tool.main(argv)
    assert res["returncode"] == 0, [o.tail for o in res["outcomes"]]
    (o,) = res["outcomes"]
    assert o.status == "ok" and set(rp.METRICS) <= set(o.metrics)
    d = os.path.join(out, "table5_model5", "seed0")
    for f in ("log.txt", "config.yaml", "metrics.json", "model_final.pth", "results.json",
              "train_output.txt", "reproduce.json"):
        assert os.path.isfile(os.path.join(d, f)), f
    saved = open(os.path.join(d, "config.yaml")).read()
    assert "DEPTH: tiny" in saved and "SyntheticReID" in saved and "SEED: 0" in saved
    (s,) = res["summaries"]
    assert s.status == "ok" and s.test_sets == ("SyntheticReID",)
    again = tool.main(argv)
    assert [o.status for o in again["outcomes"]] == ["skipped"]
