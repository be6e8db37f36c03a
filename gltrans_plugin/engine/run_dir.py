"""One run per OUTPUT_DIR: a lock held for the run's life, and no silent mix of two runs.

``claim_output_dir(output_dir, resume, overwrite)`` (rank 0 of a training, before anything is
written there):

* takes an exclusive ``flock`` on ``OUTPUT_DIR/run.lock`` and writes the owner (pid, host, start
  time, command) into it.  The kernel drops the lock when its process dies, so a lock file left
  by a killed run is taken over, with one line naming the dead owner; a live owner stops the new
  run with one line naming its pid.
* refuses a fresh start (no ``--resume``) into a folder that holds another run's checkpoints:
  resume it, choose another OUTPUT_DIR, or pass ``--overwrite`` to train over it.

The returned ``RunLock`` is released by ``release()`` or at process exit.
"""
import datetime
import fcntl
import glob
import json
import logging
import os
import socket
import sys

from ..errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "OutputDirInUse", "RunLock", "claim_output_dir"]

LOCK_FILE = "run.lock"


class OutputDirInUse(UserError, RuntimeError):
    """OUTPUT_DIR belongs to a live run, or holds another run's checkpoints."""


class RunLock:
    """An exclusive lock on a run folder (``flock`` on ``run.lock``), held until ``release``."""

    def __init__(self, path, fd):
        self.path, self._fd = path, fd

    def release(self):
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def _owner(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _describe(owner):
    if not owner:
        return "another process"
    return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started "
            f"{owner.get('started', '?')}")


def _checkpoints(output_dir):
    names = glob.glob(os.path.join(glob.escape(output_dir), "model_*.pth"))
    if os.path.exists(os.path.join(output_dir, "last_checkpoint")):
        names.append(os.path.join(output_dir, "last_checkpoint"))
    return sorted(names)


def claim_output_dir(output_dir, resume=False, overwrite=False) -> RunLock:
    """Lock ``output_dir`` for this run (see the module docstring); returns the lock."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputDirInUse(
            f"OUTPUT_DIR {output_dir} is in use by a running training ({_describe(_owner(path))}): "
            f"wait for it to end, stop it, or choose another OUTPUT_DIR") from None
    previous = _owner(path)
    if previous:  # an owner recorded, but nothing holds the lock: that run died
        logger.warning(f"Taking over {path}: its run ({_describe(previous)}) is no longer "
                       f"running.")
    found = _checkpoints(output_dir)
    if found and not resume and not overwrite:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise OutputDirInUse(
            f"OUTPUT_DIR {output_dir} holds another run's checkpoints "
            f"({os.path.basename(found[0])}{' ...' if len(found) > 1 else ''}): continue that "
            f"run with --resume, choose another OUTPUT_DIR, or pass --overwrite to train over "
            f"it from the start")
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": datetime.datetime.now().isoformat(timespec="seconds"),
             "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    return RunLock(path, fd)
