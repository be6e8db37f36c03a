"""pytest plugin of the GPU check: one result line per test, written when the test finishes, and a
time limit per test.

    GPU_CHECK_RESULTS=/tmp/r.jsonl GPU_CHECK_TEST_LIMIT=60 \
        python -m pytest -p pytest_results -m cuda tests/...     # bench/gpu on PYTHONPATH

Each line of ``GPU_CHECK_RESULTS`` is a JSON object, appended and flushed to disk at once:
``{"test": nodeid, "status": "start"}`` when a test begins, then ``{"test": nodeid, "status":
"pass" | "fail" | "skip", "time_s": ..., "reason": ...}`` when it ends.  A step killed at its
limit therefore keeps the result of every finished test, and its last "start" line names the
test it was killed in.  ``GPU_CHECK_TEST_LIMIT`` (seconds, default 0 = none): a test still
running then fails with ``TestTimeLimit`` (SIGALRM, main thread, POSIX) and the next test runs.
"""
import json
import os
import signal
import time

import pytest


class TestTimeLimit(Exception):
    """A test ran past GPU_CHECK_TEST_LIMIT."""

    __test__ = False  # not a test class


def _write(row):
    path = os.environ.get("GPU_CHECK_RESULTS")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


_STARTED = {}


def pytest_runtest_logstart(nodeid, location):
    _STARTED[nodeid] = time.perf_counter()
    _write({"test": nodeid, "status": "start"})


def pytest_runtest_logreport(report):
    # one final line per test: its failing phase, or its call phase, or a skip at setup
    final = (report.failed or (report.when == "call")
             or (report.when == "setup" and report.skipped))
    if not final:
        return
    status = "fail" if report.failed else "skip" if report.skipped else "pass"
    reason = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
    elif report.failed:  # the exception line ("AssertionError: ...")
        crash = getattr(report.longrepr, "reprcrash", None)
        reason = (crash.message if crash is not None else report.longreprtext)[:300]
    t0 = _STARTED.get(report.nodeid)
    _write({"test": report.nodeid, "status": status, "phase": report.when,
            "time_s": round(time.perf_counter() - t0, 2) if t0 else None, "reason": reason})


def _on_alarm(signum, frame):
    limit = os.environ.get("GPU_CHECK_TEST_LIMIT")
    raise TestTimeLimit(f"test ran past GPU_CHECK_TEST_LIMIT={limit} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = int(float(os.environ.get("GPU_CHECK_TEST_LIMIT", "0") or 0))
    if limit <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def read_results(path):
    """{nodeid: {"status", "time_s", "reason"}} from a results file; a test with a "start" line
    and no result is reported as "killed" (its step was stopped while it ran)."""
    tests = {}
    if not os.path.isfile(path):
        return tests
    for line in open(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if row.get("status") == "start":
            tests.setdefault(row["test"], {"status": "killed", "time_s": None, "reason":
                                           "the step's time limit stopped it"})
        else:
            tests[row["test"]] = {k: row.get(k) for k in ("status", "time_s", "reason")}
    return tests
