#!/usr/bin/env python
r"""Ranked-list pictures: N queries and their top-k gallery images, green / red frames.

    python tools/visualize_ranking.py --config-file configs/GLTrans/synthetic_demo.yml \
        --weights logs/synthetic_demo/gltrans/model_final.pth --num-queries 6 --topk 8 \
        --output docs/images/ranking.png [--select worst] [--fastreid-visualizer DIR] \
        [KEY VALUE ...]

The query has a blue frame; a gallery image of the query's identity a green one, any other a red
one; captions give rank, distance and identity.  Same-identity same-camera gallery images are
excluded, as in evaluation.  ``--fastreid-visualizer DIR`` also runs fast-reid's own
``Visualizer`` (rank-list JPEGs and ROC curve) on the same features.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from gltrans_plugin.cli import model_arg_parser

    p = model_arg_parser(__doc__, "the model's yaml", "trained checkpoint (else MODEL.WEIGHTS)")
    p.add_argument("--dataset", default=None, help="test set name (default: DATASETS.TESTS[0])")
    p.add_argument("--num-queries", type=int, default=6, help="queries (rows) to draw")
    p.add_argument("--topk", type=int, default=8, help="gallery images per query")
    p.add_argument("--select", default="first", choices=("first", "random", "worst", "best"),
                   help="which queries: first N, random N, or lowest / highest AP")
    p.add_argument("--output", default="ranking.png", help="PNG file to write")
    p.add_argument("--cell-size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    p.add_argument("--flip-test", action="store_true", help="average with flipped images")
    p.add_argument("--fastreid-visualizer", default="", metavar="DIR",
                   help="also write fast-reid's Visualizer rank lists and ROC curve to DIR")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import gltrans_plugin  # noqa: F401  (compat + registrations)
    from gltrans_plugin.analysis import ranking_vis
    from gltrans_plugin.data.loaders import build_test_loader
    from gltrans_plugin.loading import load_model

    cfg, model = load_model(args.config_file, args.weights, args.opts, args.device)
    loader, num_query = build_test_loader(cfg, args.dataset or cfg.DATASETS.TESTS[0])
    data = ranking_vis.extract_query_gallery(model, loader, num_query, flip_test=args.flip_test)
    ranks = ranking_vis.rank_lists(data["q_feat"], data["g_feat"], data["q_pids"],
                                   data["g_pids"], data["q_camids"], data["g_camids"],
                                   topk=args.topk, metric=cfg.TEST.METRIC)
    rows = ranking_vis.select_queries(ranks, args.num_queries, args.select)
    name = os.path.basename(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else "untrained"
    ranking_vis.draw_rank_grid(ranks, rows, data["q_paths"], data["g_paths"], args.output,
                               q_pids=data["q_pids"], g_pids=data["g_pids"],
                               cell_size=tuple(args.cell_size),
                               title=f"{cfg.MODEL.META_ARCHITECTURE} {name}: top-{args.topk}")
    result = {"output": args.output, "queries": [ranks[r] for r in rows]}
    if args.fastreid_visualizer:
        result["fastreid_visualizer"] = ranking_vis.fastreid_visualizer(
            loader.dataset, data, args.fastreid_visualizer, num_vis=args.num_queries,
            max_rank=args.topk, metric=cfg.TEST.METRIC)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
