#!/usr/bin/env python
r"""Where the model looks: GMA scores, patch-token maps of the aggregated layers and a Grad-CAM
style map of the final feature, overlaid on the images, as a PNG; ViT baseline and GLTrans side
by side when both checkpoints are given.

    python tools/visualize_attention.py --config-file configs/GLTrans/synthetic_demo.yml \
        --weights logs/synthetic_demo/gltrans/model_final.pth \
        [--baseline-config configs/GLTrans/combine/vit_baseline_synthetic.yml \
         --baseline-weights logs/synthetic_demo/vit_baseline/model_final.pth] \
        [--images a.jpg b.jpg | --num-images 4] --output docs/images/attention.png [KEY VALUE ...]

Without --images the first --num-images queries of the config's test set are used (with their
camera ids, so SIE applies).  KEY VALUE overrides apply to both models.  The maps are explained
in gltrans_plugin/analysis/attention.py; --save-npz also writes the raw maps.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from gltrans_plugin.cli import model_arg_parser

    p = model_arg_parser(__doc__, "GLTrans model yaml",
                         "its trained checkpoint (else MODEL.WEIGHTS)")
    p.add_argument("--baseline-config", default="", help="ViT baseline yaml (side by side)")
    p.add_argument("--baseline-weights", default="", help="ViT baseline checkpoint")
    p.add_argument("--images", nargs="*", default=[], help="image files (else test queries)")
    p.add_argument("--camids", nargs="*", type=int, default=None,
                   help="0-based camera ids of --images (SIE); default: none (no SIE term)")
    p.add_argument("--num-images", type=int, default=4, help="test queries to show")
    p.add_argument("--output", default="attention.png", help="PNG file to write")
    p.add_argument("--save-npz", default="", help="also save the raw maps to this .npz")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def _inputs(cfg, args):
    import torch

    from gltrans_plugin.analysis import attention
    from gltrans_plugin.data.loaders import build_test_loader

    if args.images:
        images = attention.load_images(cfg, args.images)
        camids = None
        if args.camids is not None:
            if len(args.camids) != len(args.images):
                raise ValueError(f"--camids gives {len(args.camids)} ids for "
                                 f"{len(args.images)} images.")
            camids = torch.tensor(args.camids, dtype=torch.long)
        return images, camids, [os.path.basename(p) for p in args.images]
    loader, num_query = build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    items = [loader.dataset[i] for i in range(min(args.num_images, num_query))]
    images = torch.stack([it["images"] for it in items])
    camids = torch.tensor([int(it["camids"]) for it in items], dtype=torch.long)
    captions = [f"id {it['targets']} cam {it['camids']}" for it in items]
    return images, camids, captions


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import numpy as np

    import gltrans_plugin  # noqa: F401  (compat + registrations)
    from gltrans_plugin.analysis import attention
    from gltrans_plugin.loading import load_model

    if bool(args.baseline_config) != bool(args.baseline_weights):
        raise SystemExit("give both --baseline-config and --baseline-weights, or neither.")
    cfg, model = load_model(args.config_file, args.weights, args.opts, args.device)
    images, camids, captions = _inputs(cfg, args)
    models = []
    if args.baseline_config:
        models.append(("ViT baseline", load_model(args.baseline_config, args.baseline_weights,
                                                  args.opts, args.device)[1]))
    models.append(("GLTrans" if args.baseline_config else cfg.MODEL.META_ARCHITECTURE, model))
    results = []
    for name, m in models:
        has_sie = getattr(m.backbone, "sie_embed", None) is not None
        results.append(attention.analyse(m, images, camids if has_sie else None))
    attention.draw_attention(images, results, [n for n, _ in models], args.output, captions)
    if args.save_npz:
        arrays = {}
        for (name, _), res in zip(models, results):
            key = name.replace(" ", "_")
            arrays[f"{key}_token_maps"] = res["token_maps"].numpy()
            arrays[f"{key}_gradcam"] = res["gradcam"].numpy()
            if res["gma"] is not None:
                arrays[f"{key}_gma"] = res["gma"].numpy()
        np.savez_compressed(args.save_npz, **arrays)
    summary = {"output": args.output, "images": len(images),
               "models": {n: {"layers": r["layers"], "grid": list(r["grid"]),
                              "gma_heads": None if r["gma"] is None else int(r["gma"].shape[1])}
                          for (n, _), r in zip(models, results)}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
