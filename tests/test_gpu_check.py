"""bench/gpu/check.py, the one-command GPU check, stays runnable while no GPU is lent: its CPU
dry-run (``--device cpu --tiny``) runs every step end to end here, and a step that hangs is
killed at its limit without eating the rest of the run."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "bench", "gpu", "check.py")


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hung_step_is_killed_at_its_limit(tmp_path, monkeypatch):
    check = load_check()
    args = check.argparse.Namespace(out=str(tmp_path), tiny=True, budget=100.0,
                                    device="cpu", work=str(tmp_path))
    monkeypatch.setattr(check, "TINY_BUDGETS", dict(check.TINY_BUDGETS, train=1))
    r = check.Runner(args)
    t = time.perf_counter()
    # a step that would hang, with a child process of its own
    rc, out, wall, limit = r.run("train", [sys.executable, "-c",
                                           "import subprocess, sys, time; subprocess.Popen("
                                           "[sys.executable, '-c', 'import time; "
                                           "time.sleep(60)']); time.sleep(60)"])
    assert rc is None and limit == 1 and time.perf_counter() - t < 15
    r.args.budget = 0.0  # the run's deadline caps every later step
    assert r.remaining() <= 0


def test_eval_table_parser():
    check = load_check()
    text = ("[12/02 00:07:49 fastreid.evaluation.testing]: Evaluation results in csv format: \n"
            "| Dataset       | Rank-1   | Rank-5   | mAP   |\n"
            "|:--------------|:---------|:---------|:------|\n"
            "| SyntheticReID | 12.50    | 25.00    | 14.20 |\n")
    assert check.eval_table(text) == {"Rank-1": 12.5, "Rank-5": 25.0, "mAP": 14.2}
    assert check.eval_table("no table") is None


@pytest.mark.slow
def test_cpu_dry_run_of_the_gpu_check(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, CHECK, "--device", "cpu", "--tiny", "--out", str(out),
                        "--work", str(work), "--budget", "900"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    report = json.loads((out / "report.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert r.returncode == 0, (status, r.stdout[-3000:])
    assert status == {"env": "pass", "cuda_tests": "skip", "bench_bf16": "pass",
                      "train": "pass", "eval_bench": "pass", "bench_fp16": "pass",
                      "bench_ckpt": "pass", "launch": "pass"}
    assert (out / "summary.txt").is_file() and (out / "log.txt").stat().st_size > 0
    train = next(s for s in report["steps"] if s["name"] == "train")
    assert all(train["figures"]["checks"].values())
    assert report["env"]["torch"] and "packages" in report["env"]
