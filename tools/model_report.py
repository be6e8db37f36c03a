#!/usr/bin/env python
r"""Model report: parameters and FLOPs per module (fvcore, fused attention counted) as a table.

    python tools/model_report.py --config-file configs/GLTrans/msmt17.yml [--weights W.pth] \
        [--max-depth 3] [--batch 1] [--output report.md] [KEY VALUE ...]

Works for any fast-reid config (GLTrans, the ViT baseline, fast-reid's own models).  FLOPs are
fvcore's multiply-adds of the test forward at INPUT.SIZE_TEST, with a handle for
``aten::scaled_dot_product_attention`` (fvcore skips it otherwise); the total of matrix
products / convolutions / attention is cross-checked against torch.utils.flop_counter.
No weights are needed: an untrained model has the same cost.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from gltrans_plugin.cli import model_arg_parser

    p = model_arg_parser(__doc__, "the model's yaml", "checkpoint (optional; sizes read from it)")
    p.add_argument("--max-depth", type=int, default=2, help="module depth shown in the table")
    p.add_argument("--batch", type=int, default=1, help="batch size of the counted forward")
    p.add_argument("--no-camids", action="store_true", help="count without camera ids (no SIE)")
    p.add_argument("--no-cross-check", action="store_true",
                   help="skip the torch.utils.flop_counter cross-check")
    p.add_argument("--output", default="", help="also write the table (markdown) to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import gltrans_plugin  # noqa: F401  (compat + registrations)
    from gltrans_plugin.analysis import flops
    from gltrans_plugin.loading import load_model
    from gltrans_plugin.export import example_inputs

    cfg, model = load_model(args.config_file, args.weights, list(args.opts), args.device)
    images, camids = example_inputs(cfg, args.batch, with_camids=False if args.no_camids else None)
    images = images.to(cfg.MODEL.DEVICE)
    camids = None if camids is None else camids.to(cfg.MODEL.DEVICE)
    report = flops.model_report(model, images, camids, max_depth=args.max_depth,
                                cross_check=not args.no_cross_check)
    print(report["table"])
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(report["table"] + "\n")
    summary = {k: v for k, v in report.items() if k not in ("table", "rows")}
    print(json.dumps(summary))
    return report


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
