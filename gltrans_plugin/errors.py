"""One-line errors for the command-line programs (``projects/train_net.py``, ``tools/*``).

A program wraps its ``main`` in ``run_main``; an error ends it with one line on stderr,

    error: <what> (<file or key>): <fix>

and exit code 2 for a problem with the user's input (config, data, checkpoint, disk), 1 for
anything else (a bug: the line says so).  The full traceback goes to ``OUTPUT_DIR/log.txt``
(``set_log_dir``; ``log.txt.rank<r>`` for the other ranks, as fast-reid names them) and, with
``--debug`` or env ``GLTRANS_DEBUG=1``, to stderr too.

``UserError`` is the plugin's own error type with that form; the plugin's other error types
(``ConfigKeyError``, ``CorruptImageError``, ``NonFiniteLossError``) and the known upstream
ones (missing files, unreadable checkpoints, yacs' config errors, ENOSPC) are reported from
their message.  Multi-process runs: each worker reports its own error (``guarded``) and exits
with that code (a rank other than 0 prints its line after 3 s, so that when rank 0 failed the
same way only rank 0's line shows); the launcher then adds nothing
(``ProcessExitedException`` with code 2).  An error raised in a DataLoader worker process, which
torch re-raises with the worker's whole traceback as its message, is reported from the
original error's message alone (its file and fix first).
"""
import errno
import os
import pickle
import re
import sys
import time
import traceback

__all__ = [
    "DEBUG_ENV",
    "DiskFullError",
    "last_checkpoint",
    "nan_advice",
    "resume_advice",
    "EXIT_INTERNAL",
    "EXIT_USER",
    "NonFiniteFeaturesError",
    "UserError",
    "format_error",
    "guarded",
    "report",
    "run_main",
    "set_log_dir",
]

DEBUG_ENV = "GLTRANS_DEBUG"  # "1": print the full traceback on stderr too
EXIT_USER = 2      # bad input: config, data, checkpoint, disk
EXIT_INTERNAL = 1  # anything else (a bug)

_LOG = {"dir": ""}


class UserError(Exception):
    """A problem with the user's input, in one line: ``<what> (<where>): <fix>``.

    ``where`` is the file or config key at fault, ``fix`` what to do.  Subclasses mix in the
    builtin type callers expect (``ValueError``, ``OSError``, ...)."""

    def __init__(self, what, where="", fix=""):
        self.what, self.where, self.fix = str(what), str(where or ""), str(fix or "")
        super().__init__(self._line())

    def _line(self):
        return self.what + (f" ({self.where})" if self.where else "") \
            + (f": {self.fix}" if self.fix else "")

    def __str__(self):
        return self._line()


class ConfigKeyError(KeyError, ValueError):
    """A config key that does not exist (file or command line)."""

    def __str__(self):  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, SIGTERM) after saving what it had: the message says what
    was saved and how to continue; the exit code is the convention's 128 + signal number."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = int(signum)


class CorruptImageError(OSError):
    """An image file that PIL cannot read (corrupt, truncated, not an image)."""


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; raised before the optimizer step."""


class NonFiniteFeaturesError(UserError, FloatingPointError):
    """A model gave NaN or infinite features: names the images and the weights."""


class DiskFullError(UserError, OSError):
    """ENOSPC while writing ``path``; the file it would have replaced is intact."""

    def __init__(self, path):
        folder = os.path.dirname(os.path.abspath(path))
        super().__init__(f"no space left on the device of {folder} while writing "
                         f"{os.path.basename(path)}", path, resume_advice(folder, "free disk "
                                                                                 "space there"))
        self.errno, self.filename = errno.ENOSPC, path


def last_checkpoint(output_dir):
    """The checkpoint ``OUTPUT_DIR/last_checkpoint`` names, when that file exists, else None."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            name = f.read().strip()
    except OSError:
        return None
    path = os.path.join(output_dir, name)
    return path if name and os.path.isfile(path) else None


def resume_advice(output_dir, first):
    """What to do after a stop, from the folder's state: ``first``, then --resume where a
    checkpoint exists (it is intact: writes are atomic), else a fresh start into the folder."""
    ck = last_checkpoint(output_dir)
    if ck:
        return (f"{first}, then run the same command again with --resume (it continues from "
                f"{os.path.basename(ck)}, which is intact); a run moved to another disk needs "
                f"that folder copied there first")
    return (f"{first}, then start the run again with --overwrite (no checkpoint was saved in "
            f"{output_dir} yet)")


def nan_advice(output_dir):
    """What to do after a NaN / infinite loss, from ``output_dir``'s state (None: unknown)."""
    tail = ("with a lower SOLVER.BASE_LR or a longer warm-up (SOLVER.WARMUP_EPOCHS); or check "
            "the inputs of that branch.")
    ck = last_checkpoint(output_dir) if output_dir else None
    if output_dir and ck is None:
        return f"No checkpoint was saved in {output_dir} yet: start again (--overwrite) {tail}"
    where = ck or "<OUTPUT_DIR>/<the file last_checkpoint names>"
    return ("--resume would restore the checkpoint's learning-rate schedule and diverge again: "
            f"instead start a new run from its weights, MODEL.WEIGHTS {where} without --resume "
            f"and with another OUTPUT_DIR, {tail}")


def set_log_dir(output_dir):
    """Where ``report`` appends tracebacks: ``<output_dir>/log.txt`` (fast-reid's log file)."""
    _LOG["dir"] = str(output_dir or "")


def _rank():
    try:
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    except Exception:  # noqa: BLE001  (no torch / no process group: rank 0)
        return 0


def _log_file():
    if not _LOG["dir"]:
        return ""
    rank = _rank()
    name = "log.txt" + (f".rank{rank}" if rank else "")
    return name if _LOG["dir"] in (".", "") else os.path.join(_LOG["dir"], name)


def _one_line(text):
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    out = ""
    for p in parts:
        out += ("" if not out else " " if out.endswith(":") else "; ") + p
    return out


def _chain(exc):
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


# torch's DataLoader re-raises a worker's error as ``Type("Caught Type in DataLoader worker
# process N.\nOriginal Traceback (most recent call last): ...")`` (torch/_utils.py,
# ExceptionWrapper.reraise): the original message is the end of that traceback.
_WRAPPED = re.compile(r"^Caught (\w+) (in [^\n]*)\.\nOriginal Traceback \(most recent call last\)")


def _unwrapped(exc):
    """(type name, message) of ``exc``; for an error re-raised from a DataLoader worker, the
    original error's type name and message (not the worker's traceback)."""
    text = str(exc)
    if not _WRAPPED.match(text):
        return type(exc).__name__, text
    lines = text.splitlines()
    last_frame = max((i for i, ln in enumerate(lines) if ln.startswith("  File ")), default=0)
    tail = lines[last_frame + 1:]
    while tail and (not tail[0].strip() or tail[0].startswith(" ")):  # code line, ^^^ marks
        tail = tail[1:]
    if not tail:
        return type(exc).__name__, text
    head, _, message = tail[0].partition(": ")
    name = head.rsplit(".", 1)[-1]
    return name, "\n".join([message] + tail[1:])


def _in_the_way(exc):
    """The existing regular file that stands where ``exc`` (FileExistsError /
    NotADirectoryError of a folder being made or written into) needs a folder, or None."""
    if not isinstance(exc, (FileExistsError, NotADirectoryError)) or not exc.filename:
        return None
    path = os.path.abspath(os.fsdecode(exc.filename))
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    if isinstance(exc, NotADirectoryError):  # the file is the path or one of its parents
        while path and not os.path.isfile(path):
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
    return path if os.path.isfile(path) else None


def _enospc(exc):
    return next((e for e in _chain(exc) if isinstance(e, OSError)
                 and e.errno == errno.ENOSPC), None)


def format_error(exc):
    """(one line starting with ``error: ``, or None to print nothing; exit code) for ``exc``."""
    try:
        from torch.multiprocessing import ProcessExitedException
    except ImportError:  # pragma: no cover
        ProcessExitedException = ()
    if isinstance(exc, ProcessExitedException) and exc.exit_code in (EXIT_USER, EXIT_INTERNAL):
        return None, exc.exit_code  # the worker printed its own line
    if isinstance(exc, ProcessExitedException):
        return (f"error: worker process {exc.error_index} ended with "
                f"{'signal ' + str(exc.signal_name) if exc.signal_name else exc.exit_code} "
                f"(pid {exc.pid}): see its log (OUTPUT_DIR/log.txt.rank<r>); a signal usually "
                f"means out of memory (OOM killer) or a kill from outside"), EXIT_INTERNAL
    if isinstance(exc, Interrupted):
        return f"error: {exc}", 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return "error: interrupted (Ctrl-C): resume with --resume", 130
    disk = _enospc(exc) if not isinstance(exc, UserError) else None
    if disk is not None:
        path = disk.filename or "?"
        return "error: " + str(DiskFullError(path)), EXIT_USER
    name, message = _unwrapped(exc)
    if isinstance(exc, (UserError, ConfigKeyError, CorruptImageError, NonFiniteLossError)):
        return "error: " + _one_line(message), EXIT_USER
    file = _in_the_way(exc)
    if file is not None:
        return (f"error: a file is in the way where a folder is needed ({file}): move or "
                f"remove the file, or choose another folder (OUTPUT_DIR, the tool's output "
                f"option)"), EXIT_USER
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.errno:
        return (f"error: file or folder not found ({exc.filename}): check the path (relative "
                f"paths are from {os.getcwd()})"), EXIT_USER
    if isinstance(exc, PermissionError) and exc.filename:
        return (f"error: permission denied ({exc.filename}): make it readable / writable, or "
                f"choose another path"), EXIT_USER
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                        pickle.UnpicklingError, FloatingPointError)):
        return "error: " + _one_line(message), EXIT_USER
    where = _log_file()
    return (f"error: internal error, {name}: {_one_line(message)[:300]}"
            + (f" ({where})" if where else "")
            + ": this is a bug, not a problem with your input; rerun with --debug (or "
              f"{DEBUG_ENV}=1) for the traceback and report it"), EXIT_INTERNAL


def _debug():
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report(exc):
    """Print ``exc``'s one line on stderr (the traceback too with --debug), append the
    traceback to the log file; returns the exit code."""
    line, code = format_error(exc)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path = _log_file()
    if path and line is not None:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a") as f:
                f.write(text + line + "\n")
        except OSError:
            pass  # the disk may be what failed: stderr still gets the line
    if line is not None:
        if _rank() > 0:  # rank 0 usually has the same error: its line, then the launcher
            time.sleep(3.0)  # ends this process; a rank alone in its error still prints it
        if _debug():
            sys.stderr.write(text)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    return code


class guarded:
    """``main`` that reports its own error and exits with the code (picklable, for the
    launcher's worker processes)."""

    def __init__(self, main):
        self.main = main

    def __call__(self, *args, **kwargs):
        try:
            return self.main(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as e:  # noqa: BLE001  (every error ends in one line)
            code = report(e)
            _flush()
            raise SystemExit(code) from None


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


def run_main(main, *args, **kwargs):
    """Run a program's ``main``: ``--debug`` (anywhere on the command line) is removed from
    ``sys.argv`` and sets ``GLTRANS_DEBUG=1`` (inherited by worker processes); an error ends
    the program with one line (``report``) and exit code 2 (input) or 1 (bug)."""
    if "--debug" in sys.argv[1:]:
        sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"
    try:
        return guarded(main)(*args, **kwargs)
    except SystemExit as e:
        sys.exit(e.code)
