#!/usr/bin/env python
r"""Export a trained model for a deployment client (ONNX / TorchScript), checked against torch.

One image input in the client's convention, the camera policy baked in, metadata inside and
beside the file.

    python tools/export_onnx.py --config-file logs/run/config.yaml \
        --weights logs/run/model_final.pth --output gltrans.onnx --preset boxmot
    python tools/export_onnx.py --config-file ... --weights ... --output gltrans.onnx \
        [--format onnx|torchscript|both] [--input raw|unit|imagenet|raw-bgr|unit-bgr|imagenet-bgr]
        [--camera mean|none|input|N] [--normalize] [--opset 17] [--rtol 1e-3] [KEY VALUE ...]

Input ``images`` float32 B x 3 x H x W (B dynamic, H x W = INPUT.SIZE_TEST), in the --input
convention: ``raw`` RGB 0..255 (default), ``unit`` RGB 0..1, ``imagenet`` RGB / 255 then
ImageNet mean / std (BoxMOT's crops); ``-bgr``: the same in OpenCV's channel order.  The graph
undoes the convention and applies the model's own pixel mean / std, so every convention gives
the same feature.  Output ``feature`` float32 B x F (the test feature; L2-normalised with
--normalize).
Camera policy (--camera): ``mean`` (default) adds the mean of the learned camera embeddings
(SIE) to every image, as the torch model does for images without a camera id under
MODEL.BACKBONE.SIE_UNSEEN mean; ``none`` adds no SIE term; ``N`` adds camera N's embedding (a
fixed camera); ``input`` keeps a second input ``camids`` int64 B (an id of -1 or outside the
table then gets SIE_UNSEEN, not an error: the strict check is not in the graph).  A model
without an SIE table has policy none.  --camids / --no-camids are the old names of
--camera input / --camera mean.
--preset boxmot: --input imagenet --camera mean --format both (``<stem>.onnx`` and
``<stem>.torchscript``, which BoxMOT's ReID backends load by suffix); options given override it.
Metadata (input size, channel order, scale, mean / std, feature dim, L2 or not, camera policy,
config and checkpoint): in the ONNX file's metadata_props and in ``<file>.metadata.json`` beside
each file (BoxMOT reads img_size and model_name from it).
After export the graph runs (onnxruntime / torch.jit.load) on a batch of another size, fed in
its own input convention, and must equal torch within --rtol times the features' largest
magnitude; otherwise the files are removed and the tool fails.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from gltrans_plugin.cli import model_arg_parser
    from gltrans_plugin.export import INPUT_CONVENTIONS, PRESETS

    p = model_arg_parser(__doc__, "the model's yaml", "trained checkpoint (else MODEL.WEIGHTS)")
    p.add_argument("--output", default="model.onnx",
                   help="file to write (.onnx or .torchscript; with --format both its stem)")
    p.add_argument("--format", choices=("onnx", "torchscript", "both"), default=None,
                   help="default: from the --output suffix (the preset's with --preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a client's contract: boxmot = --input imagenet --camera mean "
                        "--format both")
    p.add_argument("--input", choices=sorted(INPUT_CONVENTIONS), default=None,
                   help="what the client feeds (default raw: RGB 0..255)")
    p.add_argument("--camera", default=None, metavar="mean|none|input|N",
                   help="camera policy baked into the graph (default mean)")
    p.add_argument("--camids", dest="camera", action="store_const", const="input",
                   help="same as --camera input")
    p.add_argument("--no-camids", dest="camera", action="store_const", const="mean",
                   help="same as --camera mean (the mean camera embedding, not 'no SIE')")
    p.add_argument("--normalize", action="store_true", default=None,
                   help="L2-normalise the output feature in the graph")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="tolerance of the check, relative to the features' largest magnitude")
    p.add_argument("--no-verify", action="store_true", help="skip the check")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def contract_from_args(args):
    """(ExportContract, [(format, path), ...]) from the options and the preset."""
    from gltrans_plugin.export import ExportContract, PRESETS

    base = PRESETS[args.preset] if args.preset else ExportContract()
    contract = ExportContract(
        input=args.input or base.input,
        camera=args.camera if args.camera is not None else base.camera,
        normalize=base.normalize if args.normalize is None else True,
        preprocess=base.preprocess)
    stem, suffix = os.path.splitext(args.output)
    fmt = args.format or ("both" if args.preset else
                          "torchscript" if suffix in (".torchscript", ".pt", ".ts") else "onnx")
    if fmt == "both":
        targets = [("onnx", stem + ".onnx"), ("torchscript", stem + ".torchscript")]
    else:
        targets = [(fmt, args.output)]
    return contract, targets


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore", category=Warning, module="torch")  # tracer chatter
    import gltrans_plugin  # noqa: F401  (compat + registrations)
    from gltrans_plugin.export import export_model
    from gltrans_plugin.loading import load_model

    contract, targets = contract_from_args(args)
    cfg, model = load_model(args.config_file, args.weights, args.opts, args.device)
    model = model.cpu()  # graphs are traced and checked on the CPU
    weights = args.weights or str(cfg.MODEL.WEIGHTS)
    out = []
    for fmt, path in targets:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        out.append(export_model(model, cfg, path, contract, fmt=fmt, opset=args.opset,
                                verify=not args.no_verify, rtol=args.rtol,
                                config_file=args.config_file, weights=weights))
    info = out[0] if len(out) == 1 else {"files": out}
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
