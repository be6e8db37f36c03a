#!/usr/bin/env python
r"""Convert a TransReID-trained ViT or an authors'-released-GLTrans checkpoint into a fast-reid
checkpoint of this plugin's model (load it with MODEL.WEIGHTS).

    # (a) TransReID ViT (base.*, bottleneck, classifier) -> backbone (+ the ViT baseline's neck)
    python tools/convert_checkpoint.py --format transreid --input transformer_120.pth \
        --config-file configs/GLTrans/vit_baseline.yml --output vit_baseline_from_transreid.pth
    # (b) released GLTrans code -> the released-code preset
    python tools/convert_checkpoint.py --format released-gltrans --input GLTrans_msmt17.pth \
        --config-file configs/GLTrans/msmt17_released_code.yml --output gltrans_released.pth

Every key is mapped by name (table in gltrans_plugin/modeling/convert.py); keys left over on
either side are printed by name; a shape mismatch is an error.  Class and camera counts are
read from the checkpoint.  --strict fails when any model key stays unfilled.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--format", required=True, choices=("transreid", "released-gltrans"))
    p.add_argument("--input", required=True, help="source checkpoint")
    p.add_argument("--config-file", required=True, help="yaml of the target model")
    p.add_argument("--output", required=True, help="fast-reid checkpoint to write")
    p.add_argument("--old-grid", type=int, nargs=2, default=None, metavar=("HG", "WG"),
                   help="patch grid of the source when not square and not the model's")
    p.add_argument("--strict", action="store_true", help="fail if a model key stays unfilled")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a legacy pickled file, as env GLTRANS_ALLOW_PICKLE=1 does (runs "
                        "code from it: trusted files only)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def _source_sizes(sd, fmt):
    """NUM_CLASSES / NUM_CAMERAS of the source checkpoint, by its own key names."""
    cls_key = "classifier.weight" if fmt == "transreid" else "classifier1.weight"
    sie_key = "base.sie_embed" if fmt == "transreid" else "base.base.sie_embed"
    opts = []
    if cls_key in sd:
        opts += ["MODEL.HEADS.NUM_CLASSES", str(int(sd[cls_key].shape[0]))]
    if sie_key in sd:
        opts += ["MODEL.BACKBONE.NUM_CAMERAS", str(int(sd[sie_key].shape[0]))]
    return opts


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import gltrans_plugin  # noqa: F401
    from gltrans_plugin.checkpoint import load_file, unwrap_state_dict
    from gltrans_plugin.loading import load_model
    from gltrans_plugin.modeling import convert

    sd = unwrap_state_dict(load_file(args.input, key="--input", safetensors=True,
                                     allow_pickle=args.allow_pickle or None))
    _, model = load_model(args.config_file, None, _source_sizes(sd, args.format) + list(args.opts),
                          device="cpu")
    if args.format == "transreid":
        report = convert.convert_transreid(sd, model, old_grid=args.old_grid)
    else:
        report = convert.convert_released_gltrans(sd, model)
    print(report.summary())
    if args.strict and report["unfilled_model"]:
        raise SystemExit(f"--strict: {len(report['unfilled_model'])} model keys not filled.")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    convert.save_converted(report, model, args.output)
    summary = {"output": args.output, "converted": len(report["state_dict"]),
               "unused_source": report["unused_source"],
               "unfilled_model": report["unfilled_model"]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
