#!/usr/bin/env python
"""Train / evaluate GLTrans (or any fast-reid model) with fast-reid's own trainer and launcher.

    python projects/train_net.py --config-file configs/GLTrans/msmt17.yml [--num-gpus N]
        [--eval-only] [--resume] [KEY VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# gltrans_plugin must be imported before fastreid: it makes fastreid importable.
import gltrans_plugin  # noqa: E402,F401  (compat fixes + registrations)
from fastreid.engine import default_argument_parser, launch  # noqa: E402
from fastreid.utils.checkpoint import Checkpointer  # noqa: E402
from gltrans_plugin.engine import (  # noqa: E402
    Trainer, default_setup_gltrans, fill_from_checkpoint, setup_cfg)


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup_gltrans(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise FileNotFoundError(f"--eval-only needs MODEL.WEIGHTS, a trained checkpoint file; "
                                    f"{cfg.MODEL.WEIGHTS!r} does not exist.")
        cfg = fill_from_checkpoint(cfg, cfg.MODEL.WEIGHTS)  # trained classifier / SIE sizes
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False
        model = Trainer.build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
