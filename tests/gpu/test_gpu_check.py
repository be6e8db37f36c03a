"""bench/gpu/check.py, the one-command GPU check, stays runnable while no GPU is lent: its CPU
dry-run (``--device cpu --tiny``) runs every step end to end here; a step that hangs is killed
at its limit without eating the rest of the run; the step limits add up inside the budget; every
file with CUDA tests is in the check's lists; a CUDA test's result survives a killed step; and
the evaluator keeps its products in full fp32 whichever TF32 API the caller used."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def test_step_limits_add_up_inside_the_budget():
    check = load_check()
    assert set(check.BUDGETS) == set(check.ORDER)
    assert sum(check.BUDGETS.values()) <= check.DEFAULT_BUDGET
    # every CUDA test gets its own limit, below its step's
    assert check.TEST_LIMIT < check.BUDGETS["cuda_tests"]
    assert check.ORDER.index("train") < check.ORDER.index("eval_only")  # its checkpoint


def test_every_file_with_cuda_tests_is_checked():
    check = load_check()
    marked = set()
    for folder, _, names in os.walk(os.path.join(ROOT, "tests")):
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            if re.search(r"^(@pytest\.mark\.cuda\b|pytestmark\b.*pytest\.mark\.cuda\b)",
                         open(path).read(), re.M):
                marked.add(os.path.relpath(path, ROOT))
    listed = set(check.CUDA_TEST_FILES) | set(check.MULTI_GPU_TEST_FILES)
    assert marked == listed
    # and a test that calls .cuda() carries the marker: none is left unmarked in those files
    for path in check.CUDA_TEST_FILES:
        text = open(os.path.join(ROOT, path)).read()
        for m in re.finditer(r"\ndef (test_\w+)\(", text):
            body = text[m.end():].split("\ndef ")[0]
            head = text[:m.start()].rsplit("\n\n", 1)[-1]
            if ".cuda()" in body and "pytestmark" not in text:
                assert "@pytest.mark.cuda" in head, f"{path}::{m.group(1)} lacks the cuda marker"


_TESTS = '''
import os, signal, time
import pytest


def test_a():
    pass


def test_b():
    assert 1 == 2


def test_c():
    pytest.skip("no GPU here")


def test_d():
    time.sleep(30)  # past the per-test limit


def test_e():
    os.kill(os.getpid(), signal.SIGKILL)  # the step killed while this test runs


def test_f():
    pass
'''


def test_results_are_written_as_tests_finish(tmp_path):
    check = load_check()
    (tmp_path / "test_fake.py").write_text(textwrap.dedent(_TESTS))
    results = tmp_path / "results.jsonl"
    env = dict(os.environ, GPU_CHECK_RESULTS=str(results), GPU_CHECK_TEST_LIMIT="1",
               PYTHONPATH=os.path.join(ROOT, "bench", "gpu"))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "pytest_results", "-p",
                        "no:cacheprovider", str(tmp_path / "test_fake.py")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == -9 and time.perf_counter() - t < 30, r.stdout[-2000:]
    tests = {k.split("::")[-1]: v for k, v in check.read_results(str(results)).items()}
    assert {k: v["status"] for k, v in tests.items()} == {
        "test_a": "pass", "test_b": "fail", "test_c": "skip", "test_d": "fail",
        "test_e": "killed"}
    assert "GPU_CHECK_TEST_LIMIT=1" in tests["test_d"]["reason"]
    assert tests["test_c"]["reason"].endswith("no GPU here")


def test_multi_gpu_step_skips_with_one_gpu(tmp_path):
    check = load_check()
    check.ARGS = check.argparse.Namespace(out=str(tmp_path), tiny=False, budget=10.0,
                                          device="cuda", work=str(tmp_path))
    r = check.Runner(check.ARGS)
    step = check.step_multi_gpu(r, {"gpu_count": 1})
    assert step["status"] == "skip" and step["note"].startswith("1 GPU(s)")
    assert "multi_gpu" not in (tmp_path / "log.txt").read_text()  # nothing was started


def test_eval_table_and_query_count_parsers():
    check = load_check()
    text = ("[12/02 00:07:49 fastreid.evaluation.testing]: Evaluation results in csv format: \n"
            "| Dataset       | Rank-1   | Rank-5   | mAP   |\n"
            "|:--------------|:---------|:---------|:------|\n"
            "| SyntheticReID | 12.50    | 25.00    | 14.20 |\n")
    assert check.eval_table(text) == {"Rank-1": 12.5, "Rank-5": 25.0, "mAP": 14.2}
    assert check.eval_table("no table") is None
    assert check.valid_queries("x Evaluated 95 of 96 queries (others ...)\n") == 95


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="torch without the fp32_precision API")
def test_ranking_products_in_full_fp32_under_the_current_tf32_api():
    """A caller that switched TF32 on through ``fp32_precision`` (after which torch refuses to
    read the legacy ``allow_tf32``): inside the evaluator's products it is off, after them
    the caller's setting is back.  (The flags are host state: settable without a GPU.)"""
    from gltrans_plugin.evaluation.ranking import full_fp32_matmul

    mm = torch.backends.cuda.matmul
    old = mm.fp32_precision
    try:
        mm.fp32_precision = "tf32"
        with full_fp32_matmul("cuda"):
            assert mm.fp32_precision == "ieee"
        assert mm.fp32_precision == "tf32"
        with full_fp32_matmul("cpu"):
            assert mm.fp32_precision == "tf32"  # CPU: nothing to change
    finally:
        mm.fp32_precision = old


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
    assert status == {"env": "pass", "cuda_tests": "skip", "train": "pass", "eval_only": "pass",
                      "eval_bench": "pass", "bench_bf16": "pass", "bench_fp16": "pass",
                      "bench_ckpt": "pass", "multi_gpu": "skip", "launch": "pass"}
    assert [s["name"] for s in report["steps"]] == load_check().ORDER + ["launch"]
    assert report["finished"] and (out / "summary.txt").is_file()
    assert (out / "log.txt").stat().st_size > 0
    train = next(s for s in report["steps"] if s["name"] == "train")
    assert all(train["figures"]["checks"].values())
    cuda = next(s for s in report["steps"] if s["name"] == "cuda_tests")
    assert cuda["figures"]["tests"] and {t["status"] for t in cuda["figures"]["tests"].values()} \
        == {"skip"}  # every CUDA test collected, one row each
    assert report["env"]["torch"] and "packages" in report["env"]
