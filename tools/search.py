#!/usr/bin/env python
r"""Image search with a trained Re-ID model: index a gallery folder, query it, see the top-k.

Index every .jpg / .jpeg / .png / .bmp under a folder (recursively) into a faiss index:
    python tools/search.py index --config-file logs/run/config.yaml \
        --weights logs/run/model_final.pth --gallery gallery/ --index-dir out/index \
        [--camid-from-name market | --camid N] [--flip-test] [--device cpu] [KEY VALUE ...]
Query it with image files and / or folders (top-k, distances, camera ids):
    python tools/search.py query --config-file logs/run/config.yaml \
        --weights logs/run/model_final.pth --index-dir out/index --topk 10 \
        --json out/results.json --html out/results.html --query q1.jpg queries/

The index folder holds ``index.faiss`` and ``meta.json`` (absolute image paths, camera ids
(-1 = not known), the metric TEST.METRIC and the feature settings; queries reuse the index's
flip test and normalisation).  ``--html`` writes a self-contained page: per query its image
and the ranked results with rank, distance and camera id; ``--thumbnails relative`` (img
paths relative to the page's folder, default), ``absolute`` (file:// URIs) or ``copy`` (small
JPEG copies in ``<page>_files/``, for a page to move or share).  Camera ids are 0-based:
``--camid-from-name market`` reads them from ``<pid>_c<cam>...`` names (camera 3 -> id 2);
``--exclude-same-camera`` drops the results from the query's own camera.  When every gallery
and query name is Market-style, the identities are read from them too: each result is marked
right or wrong (green / red frame on the page, ``match`` in the JSON) and the output gives the
fraction of queries whose first result is right (``top1_right``).
Only the config, the checkpoint and the given images are read: never DATASETS.ROOT or the
ImageNet weights.  Config overrides KEY VALUE go last; after ``--query`` they would be taken
for query paths, so put ``--query`` after them or end its list with another option.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model_options():
    """--config-file / --weights / --device, as ``engine.model_arg_parser`` gives every tool."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config-file", required=True,
                        help="the model's yaml (a run's OUTPUT_DIR/config.yaml or a leaf config)")
    parent.add_argument("--weights", default="", help="trained checkpoint (else MODEL.WEIGHTS)")
    parent.add_argument("--device", default="auto",
                        help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    return parent


def parse_args(argv=None):
    parent = _model_options()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{index,query}")

    def cam_options(sp, what):
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--camid", type=int, default=None,
                       help=f"0-based camera id of every {what} image")
        g.add_argument("--camid-from-name", choices=("market",), default=None,
                       help=f"parse the {what} images' camera ids from Market-1501 / DukeMTMC "
                            f"file names (<pid>_c<cam>...)")

    ix = sub.add_parser("index", parents=[parent], help="index a gallery folder",
                        description="Index every image under a folder.")
    ix.add_argument("--gallery", required=True, metavar="DIR",
                    help="gallery image folder (searched recursively)")
    ix.add_argument("--index-dir", required=True, help="folder for index.faiss + meta.json")
    cam_options(ix, "gallery")
    ix.add_argument("--flip-test", action="store_true", help="average with flipped images")
    ix.add_argument("--no-normalize", action="store_true",
                    help="index raw features (default: L2-normalised)")

    q = sub.add_parser("query", parents=[parent], help="query a saved index",
                       description="Rank a saved index for query images.")
    q.add_argument("--index-dir", required=True, help="folder with index.faiss + meta.json")
    q.add_argument("--query", nargs="+", required=True, metavar="IMAGE_OR_DIR",
                   help="query image files and / or folders (searched recursively)")
    q.add_argument("--topk", type=int, default=10, help="results per query")
    q.add_argument("--exclude-same-camera", action="store_true",
                   help="drop results taken by the query's own camera (both ids known), as "
                        "Re-ID evaluation does: they dominate the top hits")
    cam_options(q, "query")
    q.add_argument("--json", default="", metavar="FILE", help="write the ranked lists here")
    q.add_argument("--html", default="", metavar="FILE", help="write an HTML page here")
    q.add_argument("--thumbnails", default="relative", choices=("relative", "absolute", "copy"),
                   help="how the page refers to the images (default: relative paths)")

    for sp in (ix, q):
        sp.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
        sp.add_argument("--amp", action="store_true", help="autocast on CUDA (ignored on CPU)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def run_index(args):
    from gltrans_plugin.data.listing import image_camids, list_images
    from gltrans_plugin.extractor import FeatureExtractor
    from gltrans_plugin.search import build_index

    paths = list_images(args.gallery)
    if not paths:
        raise ValueError(f"--gallery {args.gallery}: no .jpg / .jpeg / .png / .bmp images in "
                         f"the folder (or its sub-folders).")
    camids = image_camids(paths, None, args.camid, args.camid_from_name)
    extractor = FeatureExtractor(args.config_file, args.weights, device=args.device,
                                 batch_size=args.batch_size, amp=args.amp,
                                 flip_test=args.flip_test, normalize=not args.no_normalize,
                                 opts=args.opts)
    info = {"config_file": os.path.abspath(args.config_file),
            "weights": os.path.abspath(args.weights) if args.weights else
            extractor.cfg.MODEL.WEIGHTS, "gallery": os.path.abspath(args.gallery)}
    index = build_index(extractor, paths, camids, progress=not args.no_progress, info=info)
    index.save(args.index_dir)
    return {"command": "index", "index_dir": os.path.abspath(args.index_dir),
            "images": len(index), "dim": index.dim, "metric": index.metric,
            "camids_known": int((index.camids >= 0).sum()), "device": str(extractor.device)}


def run_query(args):
    from gltrans_plugin.evaluation.index import RetrievalIndex
    from gltrans_plugin.data.listing import image_camids
    from gltrans_plugin.extractor import FeatureExtractor
    from gltrans_plugin.search import image_sources, query_index, write_html, write_json

    if args.topk < 1:
        raise ValueError(f"--topk {args.topk}: give at least 1.")
    index = RetrievalIndex.load(args.index_dir)  # before the model: a wrong folder fails fast
    paths = image_sources(args.query)
    camids = image_camids(paths, None, args.camid, args.camid_from_name)
    extractor = FeatureExtractor(args.config_file, args.weights, device=args.device,
                                 batch_size=args.batch_size, amp=args.amp,
                                 flip_test=bool(index.info.get("flip_test", False)),
                                 normalize=bool(index.info.get("normalize", True)),
                                 opts=args.opts)
    results = query_index(extractor, index, paths, camids, args.topk,
                          progress=not args.no_progress,
                          exclude_same_camera=args.exclude_same_camera)
    out = {"command": "query", "index_dir": os.path.abspath(args.index_dir),
           "queries": len(results), "topk": min(args.topk, len(index)),
           "metric": index.metric, "device": str(extractor.device)}
    judged = [q for q in results if q["results"] and "match" in q["results"][0]]
    if judged:  # identities from Market-style names: how often the first result is right
        out["top1_right"] = sum(q["results"][0]["match"] for q in judged) / len(judged)
    if args.json:
        write_json(results, args.json, index, args.index_dir, out["topk"])
        out["json"] = os.path.abspath(args.json)
    if args.html:
        name = os.path.basename(index.info.get("weights") or "") or "model"
        about = (f"{len(index)} gallery images ({index.metric} distance) in "
                 f"{os.path.abspath(args.index_dir)}; model {name}.")
        write_html(results, args.html, args.thumbnails, title="Re-ID search: top-"
                   f"{out['topk']}", about=about)
        out["html"] = os.path.abspath(args.html)
    if not args.json:
        out["results"] = results
    return out


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import gltrans_plugin  # noqa: F401  (compat + registrations)

    result = run_index(args) if args.command == "index" else run_query(args)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
