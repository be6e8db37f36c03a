"""Several processes as one, without orphans: fast-reid's launcher plus what it lacks.

* ``launch``: fast-reid's ``launch`` (``mp.spawn`` of one worker per device), but on one machine
  a busy rendezvous port (``--dist-url``; fast-reid's default is one fixed port per user) is
  replaced by a free one, with a warning naming the process that holds it; across machines
  (where every machine must use the same address) it is an error naming the holder.
* ``die_with_launcher``: called first in every worker (``distributed_worker``): the
  kernel kills the worker when the launcher dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere
  a watchdog thread polling the parent pid), so a ``kill -9`` of the launcher leaves no worker
  writing checkpoints into ``OUTPUT_DIR`` or holding the port.
* ``broadcast_buffers``: rank 0's buffers (BatchNorm running statistics; DDP runs with
  ``broadcast_buffers=False``) copied to every rank before an evaluation, so the model every
  rank evaluates is the model rank 0 saves.
"""
import logging
import os
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlparse

from . import devices
from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["broadcast_buffers", "die_with_launcher", "distributed_worker", "free_dist_url", "launch",
           "launch_device", "port_holders"]

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
def _bindable(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's TCPStore does
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


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
    """``dist_url`` if its port can be bound here, else (one machine) a free local port's url.

    Across machines the address is shared, so a busy port on the rank-0 machine is a
    ``UserError`` naming the process that holds it."""
    if not dist_url or not str(dist_url).startswith("tcp://"):
        return dist_url
    url = urlparse(dist_url)
    host, port = url.hostname or "", url.port
    if port is None or (num_machines > 1 and machine_rank != 0):
        return dist_url
    local = host in _LOCAL_HOSTS
    if num_machines == 1 and not local:
        return dist_url
    if _bindable(host or "127.0.0.1", port):
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
    process (``die_with_launcher``, run by ``distributed_worker``)."""
    from fastreid.engine import launch as fastreid_launch

    if num_gpus_per_machine * num_machines > 1:
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # inherited by the spawned workers
        # after a worker's one-line error, torch would log each SIGTERM of the others below it
        logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
        if dist_url != "auto":
            dist_url = free_dist_url(dist_url, num_machines, machine_rank)
    return fastreid_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                           machine_rank=machine_rank, dist_url=dist_url, args=args)


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
    """fast-reid's launch worker (``fastreid.engine.launch._distributed_worker``, which the plugin's
    runtime patch replaces with this one): NCCL and one GPU per worker for a CUDA MODEL.DEVICE,
    gloo otherwise; the worker dies with its launcher and shuts its process group down cleanly."""
    import torch
    import torch.distributed as dist
    from fastreid.utils import comm

    die_with_launcher()  # a killed launcher leaves no worker behind (distributed.py)
    device = launch_device(args)  # NCCL and one GPU per worker only for a CUDA MODEL.DEVICE
    use_cuda = devices.cuda_available() and (device is None or device.startswith("cuda"))
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=dist_url,
                            world_size=world_size, rank=global_rank)
    if use_cuda:
        if num_gpus_per_machine > torch.cuda.device_count():
            raise RuntimeError(f"--num-gpus {num_gpus_per_machine} but only "
                               f"{torch.cuda.device_count()} GPUs are visible.")
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        pg = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    main_func(*args)
    # Clean shutdown: wait until every rank is done, then join the backend's threads.  A worker
    # exiting with its process group alive can abort in a C++ destructor ("terminate called
    # without an active exception", SIGABRT) while another rank still talks to it.
    comm.synchronize()
    dist.destroy_process_group()
