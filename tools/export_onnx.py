#!/usr/bin/env python
r"""ONNX export: images (+ camera ids) -> test feature, dynamic batch, checked under onnxruntime.

    python tools/export_onnx.py --config-file configs/GLTrans/synthetic_demo.yml \
        --weights logs/synthetic_demo/gltrans/model_final.pth --output gltrans.onnx \
        [--camids | --no-camids] [--opset 17] [--atol 1e-4] [KEY VALUE ...]

Inputs: ``images`` float32 B x 3 x H x W with pixel values 0..255 (H x W = INPUT.SIZE_TEST; the
model's pixel mean/std are in the graph) and, with ``--camids`` (the default when the model has a
camera SIE table), ``camids`` int64 B.  Output: ``feature`` float32 B x F.  The strict camera-id
check is not in the graph (it reads tensor values, which tracing cannot record): an id outside
the SIE table gets no SIE term instead of an error (gltrans_plugin/export.py).
After export the tool runs onnxruntime on a batch of a different size and fails unless the
feature equals torch's within --atol.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from gltrans_plugin.engine import model_arg_parser

    p = model_arg_parser(__doc__, "the model's yaml", "trained checkpoint (else MODEL.WEIGHTS)")
    p.add_argument("--output", default="model.onnx", help="ONNX file to write")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--camids", dest="camids", action="store_true", default=None,
                     help="export a second input 'camids' (SIE); default when the model has SIE")
    cam.add_argument("--no-camids", dest="camids", action="store_false",
                     help="export images only (no SIE term)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance of the onnxruntime check")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore", category=Warning, module="torch")  # tracer chatter
    import gltrans_plugin  # noqa: F401  (compat + registrations)
    from gltrans_plugin.engine import load_model
    from gltrans_plugin.export import example_inputs, export_onnx, verify_onnx

    cfg, model = load_model(args.config_file, args.weights, args.opts, args.device)
    images, camids = example_inputs(cfg, 2, with_camids=args.camids)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    info = export_onnx(model, args.output, images, camids, opset=args.opset)
    if not args.no_verify:  # another batch size than the traced one: the batch is dynamic
        images3, camids3 = example_inputs(cfg, 3, with_camids=camids is not None)
        info["max_abs_diff"] = verify_onnx(args.output, model, images3, camids3, atol=args.atol)
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
