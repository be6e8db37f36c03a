#!/usr/bin/env python
"""Training curves of a fast-reid run: loss per branch, learning rate and mAP / Rank-1, as a PNG.

    python tools/plot_training.py logs/synthetic_demo/gltrans --output docs/images/curves.png

Reads OUTPUT_DIR/metrics.json (fast-reid's JSONWriter), where ``import gltrans_plugin`` puts
every evaluation as ``<dataset>/<metric>`` (``Market1501/mAP``), for fast-reid's DefaultTrainer
and the plugin's Trainer; for older runs without them, the evaluations are read from
OUTPUT_DIR/log.txt.  A line cut off by a kill mid-write is skipped with a warning naming it; a
training resumed in the same folder replaces the earlier attempt's rows from the iteration it
resumed at.  Works for any fast-reid model (branch losses are whatever ``loss_*`` keys
the run logged).  Prints a JSON summary: the losses, the number of logged iterations, "eval"
(the first test set's values per metric), "accuracy" ({"<dataset>/<metric>": {"iterations",
"values"}}) and "eval_source" (metrics.json | log.txt | null).
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
    p.add_argument("run", help="fast-reid OUTPUT_DIR, or its metrics.json")
    p.add_argument("--output", default="", help="PNG to write (default: RUN/training_curves.png)")
    p.add_argument("--title", default=None, help="figure title (default: the run folder)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from gltrans_plugin.analysis.curves import plot_curves, training_curves

    curves = training_curves(args.run)
    run_dir = os.path.dirname(args.run) if args.run.endswith(".json") else args.run
    out = args.output or os.path.join(run_dir, "training_curves.png")
    plot_curves(curves, out, title=args.title or os.path.basename(os.path.normpath(run_dir)))
    summary = {"output": out, "losses": sorted(curves["losses"]),
               "iterations": len(curves["lr"][0]),
               "eval": {k: v[1] for k, v in curves["eval"].items()},
               "accuracy": {k: {"iterations": list(v[0]), "values": list(v[1])}
                            for k, v in sorted(curves["accuracy"].items())},
               "eval_source": curves["eval_source"]}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
