#!/usr/bin/env python
"""Train / evaluate GLTrans (or any fast-reid model) with fast-reid's own trainer and launcher.

    python projects/train_net.py --config-file configs/GLTrans/msmt17.yml [--num-gpus N]
        [--eval-only] [--resume] [--debug] [KEY VALUE ...]
    torchrun --nproc-per-node N projects/train_net.py --config-file ...    # or under srun

Several GPUs and machines (fast-reid's --num-machines / --machine-rank / --dist-url, torchrun,
SLURM): docs/distributed.md.

An error ends the run with one line ``error: <what> (<file or key>): <fix>`` and exit code 2
(1 for a bug); the traceback is in OUTPUT_DIR/log.txt (and on stderr with --debug or env
GLTRANS_DEBUG=1).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# gltrans_plugin must be imported before fastreid: it makes fastreid importable.
import gltrans_plugin  # noqa: E402,F401  (compat fixes + registrations)
from fastreid.engine import default_argument_parser  # noqa: E402
from fastreid.utils import comm  # noqa: E402
from gltrans_plugin.distributed import launch  # noqa: E402
from gltrans_plugin.config import setup_cfg  # noqa: E402
from gltrans_plugin.engine import Trainer, default_setup_gltrans  # noqa: E402
from gltrans_plugin.engine.run_dir import claim_output_dir  # noqa: E402
from gltrans_plugin.loading import build_trained_model  # noqa: E402
from gltrans_plugin.errors import guarded, run_main, set_log_dir  # noqa: E402


_LOCKS = []  # this process's lock on its OUTPUT_DIR, held until it exits


def setup(args):
    opts = list(args.opts or [])
    if "OUTPUT_DIR" in opts[:-1]:  # where the traceback goes if the config itself fails
        set_log_dir(opts[opts.index("OUTPUT_DIR") + 1])
    cfg = setup_cfg(args.config_file, opts)
    if not args.eval_only and cfg.OUTPUT_DIR and comm.is_main_process():
        # one run per folder: a live run's or another run's checkpoints stop this one here
        _LOCKS.append(claim_output_dir(cfg.OUTPUT_DIR, resume=args.resume,
                                       overwrite=args.overwrite))
    set_log_dir(cfg.OUTPUT_DIR)
    cfg.freeze()
    default_setup_gltrans(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise FileNotFoundError(f"--eval-only needs MODEL.WEIGHTS, a trained checkpoint file; "
                                    f"{cfg.MODEL.WEIGHTS!r} does not exist.")
        # sizes from the checkpoint; one of another architecture fails here
        cfg, model = build_trained_model(cfg)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback (else only in log.txt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh training in an OUTPUT_DIR that holds another run's "
                             "checkpoints (without it: an error; --resume continues that run)")
    return parser


def cli():
    # fast-reid's flags spawn the processes; under torchrun or srun this process is one of them
    args = argument_parser().parse_args()
    launch(guarded(main), args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    run_main(cli)
