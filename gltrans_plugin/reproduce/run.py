"""Running the planned trainings: one training subprocess per (row, seed), ``jobs`` at a time,
and stopping all of them on SIGINT / SIGTERM without leaving a process behind.

Stopping: every training runs in its own process group, so a signal reaches the tool alone
(Ctrl-C in a terminal included) and the tool forwards it, once and at once, to every running
training's whole group (the training, its launched workers, their data-loader workers).  No
further run starts.  The tool waits up to ``stop_timeout`` seconds for the trainings to save
and exit, then kills (SIGKILL) the groups still running; a second signal kills at once.
``execute`` then raises ``RunsInterrupted`` (exit code 128 + the signal).  Whatever is left in
a training's group after the training itself exits is killed too.  Only a SIGKILL of the tool
itself leaves its trainings running (nothing can forward it).

A run that starts again from scratch (no ``resume``, or no checkpoint to resume from) first
moves the earlier attempt's folder to ``seed<s>.attempt<k>`` beside it, so the new training's
``metrics.json``, log and checkpoints are its own and nothing of the earlier attempt is lost.
A run folder that a live training holds (its ``run.lock``, as every training takes) is not
touched: that run fails with one line naming the folder.
"""
import concurrent.futures
import fcntl
import json
import logging
import os
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..engine.run_dir import LOCK_FILE
from .plan import (METRICS, OUTPUT_FILE, RESULTS_FILE, RUN_INFO_FILE, Run, read_results,
                   train_command)

logger = logging.getLogger(__name__)

__all__ = ["Outcome", "RunsInterrupted", "STOP_SIGNALS", "execute", "fmt_metrics",
           "fmt_seconds", "held_by_a_live_run", "set_aside", "tail_lines"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL_S = 0.2  # how often the tool checks for a stop deadline while runs are going


@dataclass
class Outcome:
    run: Run
    status: str                          # "ok", "failed", "skipped", "interrupted", "not run"
    returncode: Optional[int] = None
    seconds: float = 0.0
    metrics: Optional[Dict[str, float]] = None
    tail: List[str] = field(default_factory=list)


class RunsInterrupted(Exception):
    """A signal stopped ``execute``: ``outcomes`` of every run (those it stopped
    "interrupted", those it never started "not run"), ``signum`` and ``returncode``
    (128 + signum, the shell's code for a program ended by that signal)."""

    def __init__(self, signum: int, outcomes: List[Outcome]):
        self.signum, self.outcomes = int(signum), outcomes
        self.returncode = 128 + self.signum
        stopped = [o.run.title for o in outcomes if o.status == "interrupted"]
        super().__init__(
            f"stopped by {signal.Signals(self.signum).name}"
            + (f"; runs stopped: {', '.join(stopped)}" if stopped else "")
            + ": run the same command with --resume to continue them from their last "
              "checkpoint")


def tail_lines(path: str, n: int = 20) -> List[str]:
    if not os.path.isfile(path):
        return []
    with open(path, errors="replace") as f:
        return [line.rstrip("\n") for line in f.readlines()[-n:]]


def _progress_line(path: str) -> str:
    """fast-reid's last ``eta: ...`` line of a run's output, shortened (empty if none yet)."""
    for line in reversed(tail_lines(path, 200)):
        if "eta:" in line:
            return line[line.index("eta:"):][:120]
    return ""


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s"


def fmt_metrics(m: Optional[Dict[str, float]]) -> str:
    if not m:
        return "no metrics"
    return "  ".join(f"{k} {m[k]:.2f}" for k in METRICS if k in m)


def _write_json(path: str, data: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def held_by_a_live_run(out_dir: str) -> bool:
    """True while a training holds the run folder's lock (``LOCK_FILE``, an ``flock`` the
    kernel drops when its process dies)."""
    path = os.path.join(out_dir, LOCK_FILE)
    if not os.path.isfile(path):
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def set_aside(out_dir: str) -> Optional[str]:
    """Move a run folder that holds files to ``<out_dir>.attempt<k>`` (the first free k);
    returns the new path, or None when there was nothing to move."""
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return None
    k = 1
    while os.path.exists(f"{out_dir}.attempt{k}"):
        k += 1
    os.rename(out_dir, f"{out_dir}.attempt{k}")
    return f"{out_dir}.attempt{k}"


def _signal_group(pgid: int, signum: int):
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


class _Trainings:
    """The running training subprocesses, each the leader of its own process group, and the
    stop state that the signal handler sets."""

    def __init__(self, stop_timeout: float):
        self.lock = threading.RLock()  # the handler runs in the main thread, which may hold it
        self.procs: Dict[int, tuple] = {}  # pid (= process group id) -> (Popen, title)
        self.stop_timeout = float(stop_timeout)
        self.signum: Optional[int] = None
        self.deadline: Optional[float] = None
        self.signalled: List[str] = []  # the runs the stop signal was forwarded to

    def start(self, cmd, title: str, **kwargs) -> Optional[subprocess.Popen]:
        """The started subprocess, or None once a stop signal has come (nothing starts)."""
        with self.lock:
            if self.signum is not None:
                return None
            proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL,
                                    **kwargs)
            self.procs[proc.pid] = (proc, title)
            return proc

    def ended(self, proc: subprocess.Popen):
        """After ``proc`` exited (and was waited for): kill what is left of its group."""
        with self.lock:
            self.procs.pop(proc.pid, None)
            _signal_group(proc.pid, signal.SIGKILL)

    def on_signal(self, signum, frame=None):
        """Signal handler: the first signal is forwarded to every running group; a second one
        moves the kill deadline to now."""
        with self.lock:
            if self.signum is not None:
                self.deadline = time.monotonic()
                return
            self.signum = int(signum)
            self.deadline = time.monotonic() + self.stop_timeout
            for pid, (_, title) in list(self.procs.items()):
                _signal_group(pid, signum)
                self.signalled.append(title)

    def running(self) -> List[str]:
        with self.lock:
            return [title for _, title in self.procs.values()]

    def kill_all(self):
        with self.lock:
            if self.signum is None:
                self.signum = int(signal.SIGKILL)  # nothing starts any more
            for pid in list(self.procs):
                _signal_group(pid, signal.SIGKILL)


def _install(handler):
    """Install ``handler`` for SIGINT / SIGTERM (main thread only); returns the previous
    handlers to restore, or None where signals cannot be handled here."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {s: signal.signal(s, handler) for s in STOP_SIGNALS}


def execute(runs: Sequence[Run], overrides: Sequence[str] = (), *, train_script: str,
            resume: bool = False, num_gpus: int = 1, heartbeat_s: float = 300.0,
            tail: int = 20, env: Optional[dict] = None, jobs: int = 1,
            stop_timeout: float = 60.0) -> List[Outcome]:
    """Run every unfinished (row, seed) with ``train_script`` (``train_command``), each in its
    own subprocess, ``jobs`` at a time (one after another by default); a failed run (non-zero
    exit, or no results.json) is logged with the end of its output and the others go on.
    ``resume``: a run folder with a checkpoint continues from it; any other unfinished run
    folder is set aside (``set_aside``) and the run starts again.  With ``jobs`` > 1 on CPU
    each run gets cores / jobs torch threads (``OMP_NUM_THREADS``, unless the caller's
    environment sets it): parallel runs with one thread each use the cores better than one run
    with all of them, and results do not depend on it (timings do: a run's seconds then are
    not comparable to a lone run's).

    SIGINT / SIGTERM (module doc): forwarded to the running trainings, which get
    ``stop_timeout`` seconds to exit before they are killed; then ``RunsInterrupted``."""
    outcomes = [Outcome(r, "skipped", metrics=read_results(r.out_dir)) for r in runs if r.done]
    for o in outcomes:
        logger.info("%s: finished before (%s), skipped: %s", o.run.title, RESULTS_FILE,
                    fmt_metrics(o.metrics))
    todo = [r for r in runs if not r.done]
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    jobs = max(1, min(int(jobs), len(todo) or 1))
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    start, durations, lock = time.time(), [], threading.Lock()
    trainings = _Trainings(stop_timeout)

    def one(i: int, run: Run) -> Outcome:
        if trainings.signum is not None:
            return Outcome(run, "not run")
        if held_by_a_live_run(run.out_dir):
            why = (f"{run.out_dir} is in use by a running training (its {LOCK_FILE}): wait for "
                   f"it to end or stop it, or choose another --output")
            logger.error("[%d/%d] %s FAILED: %s", i, len(todo), run.title, why)
            return Outcome(run, "failed", tail=[why])
        cont = resume and os.path.isfile(os.path.join(run.out_dir, "last_checkpoint"))
        if not cont:
            moved = set_aside(run.out_dir)
            if moved:
                logger.info("%s: starting again; the earlier attempt's files are now in %s",
                            run.title, moved)
        os.makedirs(run.out_dir, exist_ok=True)
        cmd = train_command(run, overrides, resume=cont, num_gpus=num_gpus,
                            train_script=train_script)
        out_file = os.path.join(run.out_dir, OUTPUT_FILE)
        info = {"command": cmd, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "returncode": None, "seconds": None}
        info_file = os.path.join(run.out_dir, RUN_INFO_FILE)
        _write_json(info_file, info)
        t0 = time.time()
        with open(out_file, "a" if cont else "w") as f:
            proc = trainings.start(cmd, run.title, stdout=f, stderr=subprocess.STDOUT, env=env)
            if proc is None:  # a stop signal came while this run was being prepared
                _write_json(info_file, dict(info, interrupted="before the start"))
                return Outcome(run, "not run")
            logger.info("[%d/%d] %s: started%s (pid %d, output: %s)", i, len(todo), run.title,
                        " (resuming)" if cont else "", proc.pid, out_file)
            try:
                while True:
                    try:
                        rc = proc.wait(timeout=heartbeat_s)
                        break
                    except subprocess.TimeoutExpired:
                        if trainings.signum is None:
                            logger.info("    %s running for %s  %s", run.title,
                                        fmt_seconds(time.time() - t0), _progress_line(out_file))
            finally:
                trainings.ended(proc)
        seconds = time.time() - t0
        info.update(returncode=rc, seconds=round(seconds, 1))
        metrics = read_results(run.out_dir) if run.done else None
        stopped = trainings.signum is not None and not (rc == 0 and metrics is not None)
        if stopped:
            info["interrupted"] = signal.Signals(trainings.signum).name
        _write_json(info_file, info)
        with lock:
            durations.append(seconds)
            left = len(todo) - len(durations)
            eta = (f", about {fmt_seconds(left * statistics.mean(durations) / jobs)} left"
                   if left and not stopped else "")
        total = f"total {fmt_seconds(time.time() - start)}{eta}"
        if rc == 0 and metrics is not None:
            logger.info("[%d/%d] %s: done in %s: %s  (%s)", i, len(todo), run.title,
                        fmt_seconds(seconds), fmt_metrics(metrics), total)
            return Outcome(run, "ok", rc, seconds, metrics)
        lines = tail_lines(out_file, tail)
        if stopped:
            logger.warning("[%d/%d] %s: stopped after %s (exit code %s)", i, len(todo),
                           run.title, fmt_seconds(seconds), rc)
            return Outcome(run, "interrupted", rc, seconds, None, lines)
        why = (f"exit code {rc}" if rc != 0 else
               f"exit code 0 but no {RESULTS_FILE} (did the training finish?)")
        logger.error("[%d/%d] %s FAILED (%s) after %s; last lines of %s:\n%s\n(%s)", i,
                     len(todo), run.title, why, fmt_seconds(seconds), out_file,
                     "\n".join("    " + ln for ln in lines), total)
        return Outcome(run, "failed", rc, seconds, None, lines)

    previous = _install(trainings.on_signal)
    pool = concurrent.futures.ThreadPoolExecutor(jobs)
    try:
        futures = [pool.submit(one, i, run) for i, run in enumerate(todo, 1)]
        pending, announced, killed = set(futures), False, False
        while pending:
            _, pending = concurrent.futures.wait(pending, timeout=_POLL_S)
            if trainings.signum is not None and not announced:
                announced = True
                logger.warning("%s: stopping; forwarded to the running trainings (%s), waiting "
                               "up to %g s for them to exit (a second signal kills them now).",
                               signal.Signals(trainings.signum).name,
                               ", ".join(sorted(trainings.signalled)) or "none",
                               trainings.stop_timeout)
            if (trainings.deadline is not None and time.monotonic() >= trainings.deadline
                    and not killed and trainings.running()):
                killed = True
                logger.warning("Killing (SIGKILL) the trainings still running: %s",
                               ", ".join(trainings.running()))
                trainings.kill_all()
        done = [f.result() for f in futures]
    except BaseException:
        trainings.kill_all()  # an error in this thread: no training may outlive it
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous:
            for s, h in previous.items():
                signal.signal(s, h)
    if trainings.signum is not None:
        raise RunsInterrupted(trainings.signum, outcomes + done)
    return outcomes + done
