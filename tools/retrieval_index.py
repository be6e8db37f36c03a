#!/usr/bin/env python
"""Build, save and query a faiss retrieval index of a trained model's gallery features.

Build (gallery of the config's first test dataset):
    python tools/retrieval_index.py --config-file CFG.yml --build --index-dir out/index \
        MODEL.WEIGHTS model_final.pth
Query with images (top-k with distances and paths):
    python tools/retrieval_index.py --config-file CFG.yml --index-dir out/index \
        --query a.jpg b.jpg --camid 0 --topk 10 MODEL.WEIGHTS model_final.pth
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gltrans_plugin  # noqa: E402,F401  (fastreid compat + registrations)


def query_batch(cfg, paths, camid=-1):
    """fast-reid test transforms applied to image files -> batch dict (camera ``camid`` for
    every query; -1: none, no SIE term)."""
    import torch
    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms

    tf = build_transforms(cfg, is_train=False)
    images = torch.stack([tf(read_image(p)) for p in paths])  # B x 3 x H x W
    n = len(paths)
    return {"images": images, "camids": torch.full((n,), camid, dtype=torch.long),
            "targets": torch.full((n,), -1), "img_paths": list(paths)}


def main(argv=None):
    from gltrans_plugin.engine import model_arg_parser

    p = model_arg_parser(__doc__)
    p.add_argument("--index-dir", required=True, help="folder with index.faiss + meta.json")
    p.add_argument("--build", action="store_true", help="build the index from the gallery")
    p.add_argument("--query", nargs="*", default=[], help="query image files")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--camid", type=int, default=-1,
                   help="0-based camera id of the query images (SIE); -1: none")
    p.add_argument("--flip-test", action="store_true", help="average with flipped images")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    from gltrans_plugin.evaluation.index import RetrievalIndex, extract_features
    from gltrans_plugin.evaluation.inference import flip_features

    from gltrans_plugin.engine import Trainer, load_model

    cfg, model = load_model(args.config_file, args.weights, args.opts, args.device)
    if args.build:
        loader, num_query = Trainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
        feats, paths, pids, camids = extract_features(model, loader, args.flip_test)
        paths = [os.path.abspath(q) for q in paths]
        idx = RetrievalIndex(feats.shape[1], cfg.TEST.METRIC)
        idx.add(feats[num_query:], paths[num_query:], pids[num_query:], camids[num_query:])
        idx.save(args.index_dir)
    if args.query:
        idx = RetrievalIndex.load(args.index_dir)
        batch = query_batch(cfg, args.query, args.camid)
        feats = flip_features(model, batch, args.flip_test)
        for path, hits in zip(args.query, idx.search(feats, args.topk)):
            print(json.dumps({"query": path, "results": hits}))


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
