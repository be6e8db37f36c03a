"""Several processes as one, whoever starts them, without orphans.

* ``launch``: fast-reid's ``launch`` (``mp.spawn`` of one worker per device; ``--num-gpus``,
  ``--num-machines``, ``--machine-rank``, ``--dist-url``), but on one machine a busy rendezvous
  port (fast-reid's default is one fixed port per user) is replaced by a free one, with a
  warning naming the process that holds it; across machines (where every machine must use the
  same address) it is an error naming the holder.  In a process that ``torchrun`` or SLURM's
  ``srun`` started (``launcher_env``), that process is the worker: rank, world size, local
  rank and rendezvous come from their environment (``run_launched``).
* ``run_worker``: every worker's set-up, whoever started it: NCCL and one GPU per process for a
  CUDA MODEL.DEVICE, gloo otherwise, fast-reid's per-machine process group, a clean shutdown.
* ``die_with_launcher``: called first in every worker: the kernel kills the worker when its
  launcher dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a watchdog thread polling the
  parent pid), so a ``kill -9`` of the launcher leaves no worker writing checkpoints into
  ``OUTPUT_DIR`` or holding the port.
* ``broadcast_buffers``: rank 0's buffers (BatchNorm running statistics; DDP runs with
  ``broadcast_buffers=False``) copied to every rank before an evaluation, so the model every
  rank evaluates is the model rank 0 saves.
* ``convert_sync_batchnorm``: fast-reid's ``NORM syncBN`` keys applied to every BatchNorm of
  the model (GLTrans builds plain ones).
"""
import errno
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from urllib.parse import urlparse

from . import devices
from .errors import EXIT_USER, UserError

logger = logging.getLogger(__name__)

__all__ = ["broadcast_buffers", "convert_sync_batchnorm", "die_with_launcher",
           "distributed_worker", "first_host", "free_dist_url", "launch", "launch_device",
           "launcher_env", "PeerLostError", "PeerWatch", "port_holders", "run_launched",
           "run_worker"]

LAUNCHER_PID_ENV = "GLTRANS_LAUNCHER_PID"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1", "")


# ----------------------------------------------------------------------------- orphans
def die_with_launcher(signum=signal.SIGKILL):
    """Make this process die when its parent (the launcher) dies.  Returns how: "prctl",
    "watchdog" or "" (no launcher recorded)."""
    expected = os.environ.get(LAUNCHER_PID_ENV)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0:
                # the launcher may have died before the call: then the signal never comes
                if expected and os.getppid() != int(expected):
                    os._exit(1)
                return "prctl"
        except (OSError, AttributeError):
            pass
    parent = int(expected) if expected else os.getppid()

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()
    return "watchdog"


# ----------------------------------------------------------------------------- ports
def _port_busy(port):
    """True when a process on this machine listens on TCP ``port``: torch's TCPStore listens
    on every interface, so a bind of the wildcard address is what it will try."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's TCPStore does
        try:
            s.bind(("", port))
            return False
        except OSError as e:
            return e.errno == errno.EADDRINUSE


def _socket_inodes(port):
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":
                inodes.add(f[9])  # a socket listening on the port
    return inodes


def port_holders(port):
    """[(pid, command line)] of the processes listening on TCP ``port`` (Linux /proc; the
    processes of other users are not visible)."""
    inodes = _socket_inodes(port)
    found = []
    if not inodes or not os.path.isdir("/proc"):
        return found
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
                except OSError:
                    cmd = b"?"
                found.append((int(pid), cmd.decode(errors="replace").strip()))
                break
    return found


def _holder_text(port):
    holders = port_holders(port)
    if not holders:
        return f"a process not visible here (`ss -ltnp 'sport = :{port}'` names it)"
    return ", ".join(f"pid {pid} ({cmd[:120]})" for pid, cmd in holders)


def free_dist_url(dist_url, num_machines=1, machine_rank=0):
    """``dist_url`` unless its port is taken here, else (one machine) a free local port's url.

    Across machines the address is shared, so a busy port on the rank-0 machine is a
    ``UserError`` naming the process that holds it.  Only the port is checked: the host may be
    any name or address that leads to the rank-0 machine (a name, an address of another
    interface, a NAT'd address), which need not be bindable here."""
    if not dist_url or not str(dist_url).startswith("tcp://"):
        return dist_url
    url = urlparse(dist_url)
    host, port = url.hostname or "", url.port
    if port is None or (num_machines > 1 and machine_rank != 0):
        return dist_url
    if num_machines == 1 and host not in _LOCAL_HOSTS:
        return dist_url
    if not _port_busy(port):
        return dist_url
    holder = _holder_text(port)
    if num_machines > 1:
        raise UserError(f"the rendezvous port {port} is in use by {holder}", "--dist-url",
                        "stop that process (an orphan of an earlier run?) or give every machine "
                        "another --dist-url port")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        new = s.getsockname()[1]
    logger.warning("Rendezvous port %d (--dist-url %s) is in use by %s; using the free port %d.",
                   port, dist_url, holder, new)
    return f"tcp://127.0.0.1:{new}"


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None,
           args=()):
    """fast-reid's ``launch`` with a free rendezvous port and workers that die with this
    process (``die_with_launcher``, run by ``distributed_worker``); in a process that torchrun
    or SLURM's srun started (``launcher_env``), that process is the worker."""
    from fastreid.engine import launch as fastreid_launch

    spec = launcher_env()
    if spec is not None:
        return run_launched(main_func, spec, num_gpus_per_machine, num_machines, args)
    if num_gpus_per_machine * num_machines > 1:
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # inherited by the spawned workers
        # after a worker's one-line error, torch would log each SIGTERM of the others below it
        logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
        if dist_url != "auto":
            dist_url = free_dist_url(dist_url, num_machines, machine_rank)
    from torch.multiprocessing import ProcessExitedException

    try:
        return fastreid_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                               machine_rank=machine_rank, dist_url=dist_url, args=args)
    except ProcessExitedException as e:
        if not e.signal_name:
            raise  # the worker ended with its own one-line error
        rank = machine_rank * num_gpus_per_machine + e.error_index
        raise PeerLostError(
            f"rank {rank} (machine {machine_rank}, its process {e.error_index}, pid {e.error_pid}) "
            f"was "
            f"killed by {e.signal_name}; this machine's other processes were stopped",
            f"OUTPUT_DIR/log.txt.rank{rank}" if rank else "OUTPUT_DIR/log.txt",
            "a signal from outside (kill, the out-of-memory killer, the scheduler): start every "
            "machine again with --resume (training continues from the last checkpoint)"
        ) from None


# ----------------------------------------------------------------------------- buffers
def broadcast_buffers(model):
    """Copy rank 0's floating-point buffers (BatchNorm running mean / var) to every rank; a
    no-op in a single process.  Call on every rank at the same point."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 0
    module = getattr(model, "module", model)
    n = 0
    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point() or b.dtype in (torch.int64, torch.int32):
                dist.broadcast(b, src=0)
                n += 1
    return n


# ----------------------------------------------------------------------------- SyncBN
SYNC_BN = "syncBN"  # fast-reid's NORM value for BatchNorm synchronised across processes


def sync_bn_asked(cfg):
    """fast-reid's switch: ``MODEL.BACKBONE.NORM`` or ``MODEL.HEADS.NORM`` is "syncBN"."""
    return SYNC_BN in (cfg.MODEL.BACKBONE.NORM, cfg.MODEL.HEADS.NORM)


def convert_sync_batchnorm(model, cfg):
    """``model`` with every BatchNorm layer (GLTrans' BNNecks and PTF BatchNorms included, which
    are built as plain BatchNorm whatever the NORM keys say) turned into torch's
    ``SyncBatchNorm`` when fast-reid's NORM keys ask for "syncBN" and several processes train:
    the batch statistics are then those of the global batch, not of each process's share.  One
    process: unchanged.  torch's SyncBatchNorm runs on GPUs only: on CPU it is a ``UserError``."""
    import torch
    from fastreid.utils import comm

    if not sync_bn_asked(cfg) or comm.get_world_size() < 2:
        return model
    key = "MODEL.BACKBONE.NORM" if cfg.MODEL.BACKBONE.NORM == SYNC_BN else "MODEL.HEADS.NORM"
    if not str(cfg.MODEL.DEVICE).startswith("cuda"):
        raise UserError(f"{key} syncBN needs CUDA: torch's SyncBatchNorm runs on GPUs only, and "
                        f"MODEL.DEVICE is {cfg.MODEL.DEVICE}", key,
                        "use BN on CPU (each process then normalises its own share of the batch)")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logger.info("%s syncBN: %d BatchNorm layers share their statistics across the %d "
                "processes.", key, len(bns), comm.get_world_size())
    return model


# ----------------------------------------------------------------------------- worker
def launch_device(args):
    """cfg.MODEL.DEVICE of the run a launched worker is for (from its --config-file and opts),
    or None where that cannot be read here (the worker's own set-up then reports it)."""
    ns = args[0] if args else None
    if not hasattr(ns, "opts"):
        return None
    try:
        from .config import setup_cfg

        return str(setup_cfg(getattr(ns, "config_file", ""), list(ns.opts or [])).MODEL.DEVICE)
    except Exception:  # noqa: BLE001  (reported by the worker's setup, with its message)
        return None


def distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                       dist_url, args):
    """fast-reid's launch worker (``fastreid.engine.launch._distributed_worker``, which the
    plugin's runtime patch replaces with this one): NCCL and one GPU per worker for a CUDA
    MODEL.DEVICE, gloo otherwise; the worker dies with its launcher and shuts its process group
    down cleanly."""
    die_with_launcher()  # a killed launcher leaves no worker behind
    run_worker(main_func, args, rank=machine_rank * num_gpus_per_machine + local_rank,
               world_size=world_size, local_rank=local_rank, machine=machine_rank,
               init_method=dist_url)


def run_worker(main_func, args, *, rank, world_size, local_rank, machine, init_method):
    """Run ``main_func(*args)`` as ``rank`` of ``world_size`` processes: the process group
    (NCCL and GPU ``local_rank`` for a CUDA MODEL.DEVICE, gloo otherwise), fast-reid's
    per-machine group (the ranks that report the same ``machine``), then a clean shutdown."""
    import torch
    import torch.distributed as dist
    from fastreid.utils import comm

    device = launch_device(args)  # NCCL and one GPU per worker only for a CUDA MODEL.DEVICE
    use_cuda = devices.cuda_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise UserError(f"process {local_rank} of its machine needs GPU {local_rank} but "
                            f"{visible} GPUs are visible to it", "--num-gpus / LOCAL_RANK",
                            "start at most one process per visible GPU on each machine (and "
                            "let every process of a machine see all its GPUs)")
        torch.cuda.set_device(local_rank)
    _fork_loader_workers()
    if rank > 0:
        _quiet_console()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=init_method,
                            world_size=world_size, rank=rank)
    comm.synchronize()
    comm._LOCAL_PROCESS_GROUP, machines = _machine_group(machine)
    watch = PeerWatch.connect(init_method, rank, machines) if world_size > 1 else None
    comm.synchronize()  # every rank beat once: each counter exists before anyone reads them
    if watch is not None:
        watch.start()
        main_func = watch.checked(main_func)
    try:
        main_func(*args)
    finally:
        if watch is not None:
            watch.finish()  # this rank is done: its silence from now on is no failure
    # Clean shutdown: wait until every rank is done, then join the backend's threads.  A worker
    # exiting with its process group alive can abort in a C++ destructor ("terminate called
    # without an active exception", SIGABRT) while another rank still talks to it.
    comm.synchronize()
    if watch is not None:
        watch.stop()
    dist.destroy_process_group()


def _quiet_console():
    """Warnings once per job: every rank meets the same ones (a deprecated torch API used by
    fast-reid, DDP's, "No CUDA runtime" when fast-reid collects its environment report), so
    only rank 0 prints them; the other ranks' logs go to their OUTPUT_DIR/log.txt.rank<r>
    (fast-reid's convention) and their errors still print."""
    warnings.simplefilter("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)


def _fork_loader_workers():
    """DataLoader workers forked from this rank (Linux), as in a process torchrun or srun
    starts.  A rank that fast-reid's launcher spawned inherits the "spawn" start method, with
    which every loader worker starts a new interpreter that imports the program again (torch,
    fast-reid, the plugin: ~6 s of CPU each, at every evaluation and training start; measured:
    a 2-process CPU evaluation of the demo took 43 s, 30 s of it before the first batch; with
    fork 6.5 s)."""
    import multiprocessing

    if sys.platform.startswith("linux") and multiprocessing.get_start_method() != "fork":
        multiprocessing.set_start_method("fork", force=True)


def _machine_group(machine):
    """fast-reid's local process group: the ranks on this process's machine.  Every rank
    creates every machine's group, in the same order (``new_group`` is collective)."""
    import torch.distributed as dist

    ids = [None] * dist.get_world_size()
    dist.all_gather_object(ids, str(machine))
    mine = None
    for m in dict.fromkeys(ids):  # machines in the order of their first rank
        group = dist.new_group([r for r, x in enumerate(ids) if x == m])
        if m == str(machine):
            mine = group
    return mine, ids


# ----------------------------------------------------------------------------- failures
PEER_TIMEOUT_ENV = "GLTRANS_PEER_TIMEOUT"  # seconds of silence after which a rank is lost


class PeerLostError(UserError, RuntimeError):
    """Another rank of the run stopped: its process ended or its machine became unreachable."""


class PeerWatch:
    """Every rank beats in the rendezvous store (a counter, every ``PERIOD`` s) and watches the
    others' counters, so that a rank killed, or a machine lost, ends every other process in
    bounded time with one line naming it:

    * when a collective fails (gloo sees the dead peer's closed connection at once), the
      failing rank waits ``2 x SETTLE`` s and names the ranks whose counter stood still
      (``checked``) instead of reporting the backend's message, which names no rank;
    * when nothing fails but nothing moves (a machine that vanished without closing its
      connections, NCCL waiting on a dead peer), the watching thread ends the process after
      ``GLTRANS_PEER_TIMEOUT`` s (default 120) of a peer's silence.

    A rank that finished its work marks itself done, so its silence is no failure; the store
    is that of the process group's rendezvous (rank 0's process with tcp://, torchrun's agent
    with env://): when it cannot be reached, the rank holding it (0) is the one named."""

    PERIOD = 0.5
    SETTLE = 1.5

    def __init__(self, store, rank, machines, prefix, timeout):
        self.store, self.rank, self.machines = store, rank, machines
        self.world = len(machines)
        self.prefix, self.timeout = prefix, timeout
        now = time.monotonic()
        self._seen = {r: (None, now) for r in range(self.world)}  # rank -> (count, since)
        self._store_lost_since = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._beat()

    @classmethod
    def connect(cls, init_method, rank, machines):
        """A watch on a client of the rendezvous store (tcp:// or env://), or None."""
        import datetime

        import torch.distributed as dist

        if init_method == "env://":
            host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        else:
            url = urlparse(str(init_method))
            host, port = (url.hostname, url.port) if url.scheme == "tcp" else (None, None)
        if not host or not port:
            return None
        timeout = float(os.environ.get(PEER_TIMEOUT_ENV, "") or 120)
        run = os.environ.get("TORCHELASTIC_RUN_ID", "") + \
            os.environ.get("TORCHELASTIC_RESTART_COUNT", "")
        try:
            store = dist.TCPStore(host, int(port), is_master=False, wait_for_workers=False,
                                  timeout=datetime.timedelta(seconds=10))
            return cls(store, rank, machines, f"gltrans/peers/{run}/", timeout)
        except Exception as e:  # noqa: BLE001  (the run works without; only the line is lost)
            logger.warning("No watch on the other processes (rendezvous store %s:%s: %s): a "
                           "failed process will be reported by the backend's own error.",
                           host, port, e)
            return None

    # ------------------------------------------------------------------ store
    def _key(self, kind, r):
        return f"{self.prefix}{kind}/{r}"

    def _beat(self):
        self.store.add(self._key("beat", self.rank), 1)

    def _counts(self):
        keys = [self._key("beat", r) for r in range(self.world)]
        if hasattr(self.store, "multi_get"):
            return [int(v) for v in self.store.multi_get(keys)]
        return [int(self.store.add(k, 0)) for k in keys]

    def _finished(self, r):
        return self.store.check([self._key("done", r)])

    # ------------------------------------------------------------------ watching
    def _silent(self, counts, now, longer_than):
        """Ranks (not this one, not done) whose counter has not moved for ``longer_than`` s."""
        out = []
        for r, c in enumerate(counts):
            last, since = self._seen[r]
            if c != last:
                self._seen[r] = (c, now)
            elif r != self.rank and now - since > longer_than and not self._finished(r):
                out.append(r)
        return out

    def _loop(self):
        while not self._stop.wait(self.PERIOD):
            if self._done.is_set():
                continue  # this rank is done; the others may leave before it
            now = time.monotonic()
            try:
                self._beat()
                lost = self._silent(self._counts(), now, self.timeout)
                self._store_lost_since = None
            except Exception:  # noqa: BLE001  (the store, in rank 0 / machine 0, is gone)
                self._store_lost_since = self._store_lost_since or now
                lost = [0] if now - self._store_lost_since > self.timeout else []
            if lost and not self._done.is_set():
                from .errors import report

                error = self.error(lost, f"for {self.timeout:.0f} s")
                if self.reports(lost):
                    report(error)
                else:
                    logger.error("%s", error)
                os._exit(EXIT_USER)  # the main thread may be stuck in a collective: no unwinding

    def lost(self):
        """The ranks that stopped beating, watched for ``2 x SETTLE`` s ([0] when the store
        itself cannot be reached), [] when every rank is alive or done."""
        try:
            first = self._counts()
            time.sleep(2 * self.SETTLE)
            second = self._counts()
        except Exception:  # noqa: BLE001
            return [0]
        return [r for r in range(self.world) if r != self.rank and first[r] == second[r]
                and not self._finished(r)]

    def error(self, ranks, how=""):
        machines = sorted({self.machines[r] for r in ranks})
        who = (f"rank {ranks[0]}" if len(ranks) == 1 else
               "ranks " + ", ".join(str(r) for r in ranks))
        where = f"machine {machines[0]}" if len(machines) == 1 else \
            "machines " + ", ".join(machines)
        return PeerLostError(
            f"{who} ({where}) stopped answering{' ' + how if how else ''}: its process ended "
            f"or its machine is unreachable", f"OUTPUT_DIR/log.txt.rank{ranks[0]} on {where}"
            if ranks[0] else "OUTPUT_DIR/log.txt on machine " + self.machines[0],
            "see that log for why, then start every machine again with --resume (training "
            "continues from the last checkpoint)")

    def checked(self, main_func):
        """``main_func`` whose failure in a collective names the rank that caused it."""
        from .errors import guarded

        if isinstance(main_func, guarded):  # reports its own error: check inside it
            return guarded(self.checked(main_func.main))
        watch = self

        def main(*args, **kwargs):
            try:
                return main_func(*args, **kwargs)
            except RuntimeError as e:  # the backends' errors (DistError is one)
                if isinstance(e, UserError):
                    raise
                lost = watch.lost()
                if not lost:
                    raise
                error = watch.error(lost)
                if watch.reports(lost):
                    raise error from e
                logger.error("%s", error)  # this rank's log; the line is said elsewhere
                raise SystemExit(EXIT_USER) from None

        return main

    def reports(self, lost):
        """Whether this rank prints the line about ``lost``: one line per machine, by its
        first live process, and none on a machine that lost a process of its own (its
        launcher names it, with the signal: fast-reid's, torchrun, srun)."""
        mine = self.machines[self.rank]
        if any(self.machines[r] == mine for r in lost):
            return False
        first = min(r for r in range(self.world) if self.machines[r] == mine and r not in lost)
        return first == self.rank

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="gltrans-peer-watch",
                                        daemon=True)
        self._thread.start()

    def finish(self):
        self._done.set()
        try:
            self.store.set(self._key("done", self.rank), "1")
        except Exception:  # noqa: BLE001  (the store may be gone with rank 0 at the end)
            pass

    def stop(self):
        self._done.set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- launchers
def first_host(nodelist):
    """The first host of a SLURM node list, as ``scontrol show hostnames`` would list it:
    "gpu[03-05,09],cpu1" -> "gpu03", "a[1-2]b[7]" -> "a1b7", "node7" -> "node7"."""
    entry, depth = "", 0
    for ch in str(nodelist).strip():
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            break  # the first comma outside brackets ends the first entry
        entry += ch
    # each bracketed range list -> its first number, zero-padding kept
    return re.sub(r"\[([^\],-]*)[^\]]*\]", r"\1", entry)


def launcher_env(environ=None):
    """The process as started by an outside launcher, or None (fast-reid's own spawning).

    torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``, the
    node's ``GROUP_RANK``): rendezvous ``env://``.  SLURM's ``srun`` (one task per process:
    ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` or ``SLURM_NTASKS``, ``SLURM_LOCALID``,
    ``SLURM_NODEID``, in a job step, ``SLURM_STEP_ID``: the batch script itself is not one):
    rendezvous on the first host of the step's node list (or ``MASTER_ADDR``) at
    ``MASTER_PORT``, else 20000 + the job id mod 20000 (jobs sharing a node differ).  Returns
    {"launcher", "rank", "world_size", "local_rank", "machine", "init_method"}."""
    env = os.environ if environ is None else environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return {"launcher": "torchrun", "rank": int(env["RANK"]),
                "world_size": int(env["WORLD_SIZE"]), "local_rank": int(env["LOCAL_RANK"]),
                "machine": env.get("GROUP_RANK") or socket.gethostname(),
                "init_method": "env://"}
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    ntasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS"))
    if step is None or "SLURM_PROCID" not in env or ntasks is None:
        return None
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") \
        or env.get("SLURM_NODELIST") or "127.0.0.1"
    host = env.get("MASTER_ADDR") or first_host(nodes)
    port = env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000
    return {"launcher": "srun", "rank": int(env["SLURM_PROCID"]), "world_size": int(ntasks),
            "local_rank": int(env.get("SLURM_LOCALID", "0")),
            "machine": env.get("SLURM_NODEID") or socket.gethostname(),
            "init_method": f"tcp://{host}:{port}"}


def run_launched(main_func, spec, num_gpus_per_machine=1, num_machines=1, args=()):
    """``main_func(*args)`` in a process an outside launcher started (``launcher_env``)."""
    if num_gpus_per_machine > 1 or num_machines > 1:
        flag = "--num-gpus" if num_gpus_per_machine > 1 else "--num-machines"
        raise UserError(f"{spec['launcher']} started this process as rank {spec['rank']} of "
                        f"{spec['world_size']}; {flag} would start more inside it", flag,
                        f"leave {flag} at 1: {spec['launcher']} sets the processes per machine "
                        f"and the machines")
    if spec["world_size"] == 1:
        return main_func(*args)
    logger.info("Started by %s: rank %d of %d (machine %s, local rank %d), rendezvous %s",
                spec["launcher"], spec["rank"], spec["world_size"], spec["machine"],
                spec["local_rank"], spec["init_method"])
    die_with_launcher()  # no worker outlives the launcher that started it
    return run_worker(main_func, args, rank=spec["rank"], world_size=spec["world_size"],
                      local_rank=spec["local_rank"], machine=spec["machine"],
                      init_method=spec["init_method"])
