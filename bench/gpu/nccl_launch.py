#!/usr/bin/env python
"""projects/train_net.py in one spawned worker of the plugin's launch worker
(``distributed.distributed_worker``: NCCL for a CUDA MODEL.DEVICE, gloo otherwise).

fast-reid's ``launch`` calls ``main`` in-process at world size 1, and two NCCL ranks cannot
share one GPU; so on a one-GPU machine this is how the NCCL path (process group, device
binding, ``comm.synchronize``, the trainer under an initialised group) runs at all.  Same
arguments as train_net.py (``--num-gpus`` is ignored: one worker).

    python bench/gpu/nccl_launch.py --config-file configs/GLTrans/synthetic_demo.yml \
        MODEL.DEVICE cuda SOLVER.MAX_EPOCH 1
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "projects"))

import gltrans_plugin  # noqa: E402,F401  (compat fixes first)
import train_net  # noqa: E402
from gltrans_plugin.errors import guarded  # noqa: E402


def worker_main(args):
    import torch.distributed as dist

    print(f"BACKEND {dist.get_backend()} world {dist.get_world_size()}", flush=True)
    return guarded(train_net.main)(args)


def cli():
    import torch.multiprocessing as mp

    from gltrans_plugin import distributed
    from gltrans_plugin.distributed import LAUNCHER_PID_ENV

    args = train_net.argument_parser().parse_args()
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    mp.spawn(distributed.distributed_worker, nprocs=1, daemon=False,
             args=(worker_main, 1, 1, 0, args.dist_url, (args,)))


if __name__ == "__main__":
    cli()
