#!/usr/bin/env python
"""Build, save and query a faiss retrieval index of a trained model's gallery features.

Build (gallery of the config's first test dataset):
    python tools/retrieval_index.py --config-file CFG.yml --build --index-dir out/index \
        MODEL.WEIGHTS model_final.pth
Query with images (top-k with distances and paths):
    python tools/retrieval_index.py --config-file CFG.yml --index-dir out/index \
        --query a.jpg b.jpg --topk 10 MODEL.WEIGHTS model_final.pth
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gltrans_plugin  # noqa: E402,F401  (fastreid compat + registrations)


def setup_cfg(args):
    from fastreid.config import get_cfg

    from gltrans_plugin.config import add_gltrans_config

    cfg = get_cfg()
    add_gltrans_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def build_model(cfg):
    from fastreid.engine import DefaultTrainer
    from fastreid.utils.checkpoint import Checkpointer

    model = DefaultTrainer.build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def query_batch(cfg, paths):
    """fast-reid test transforms applied to image files -> batch dict."""
    import torch
    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms

    tf = build_transforms(cfg, is_train=False)
    images = torch.stack([tf(read_image(p)) for p in paths])  # B x 3 x H x W
    n = len(paths)
    return {"images": images, "camids": torch.zeros(n, dtype=torch.long),
            "targets": torch.full((n,), -1), "img_paths": list(paths)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--index-dir", required=True, help="folder with index.faiss + meta.json")
    p.add_argument("--build", action="store_true", help="build the index from the gallery")
    p.add_argument("--query", nargs="*", default=[], help="query image files")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--flip-test", action="store_true", help="average with flipped images")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    from gltrans_plugin.evaluation.index import RetrievalIndex, extract_features
    from gltrans_plugin.evaluation.inference import flip_features

    cfg = setup_cfg(args)
    model = build_model(cfg)
    if args.build:
        from fastreid.engine import DefaultTrainer

        loader, num_query = DefaultTrainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
        feats, paths, pids, camids = extract_features(model, loader, args.flip_test)
        idx = RetrievalIndex(feats.shape[1], cfg.TEST.METRIC)
        idx.add(feats[num_query:], paths[num_query:], pids[num_query:], camids[num_query:])
        idx.save(args.index_dir)
    if args.query:
        idx = RetrievalIndex.load(args.index_dir)
        feats = flip_features(model, query_batch(cfg, args.query), args.flip_test)
        for path, hits in zip(args.query, idx.search(feats, args.topk)):
            print(json.dumps({"query": path, "results": hits}))


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
