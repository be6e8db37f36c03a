#!/usr/bin/env python
"""Reproduce the paper's ablation tables: train every row (x seeds), then tabulate.

    python tools/reproduce.py --table 5 --seeds 0 1 2                  # GPU, MSMT17 (paper recipe)
    python tools/reproduce.py --table 5 --preset cpu --seeds 0 1       # CPU, synthetic set
    python tools/reproduce.py --configs a.yml b.yml --epochs 60 SOLVER.BASE_LR 0.004
    python tools/reproduce.py --table 5 --collect-only                 # tables from finished runs

Each (row, seed) runs `projects/train_net.py --config-file <row> OUTPUT_DIR <out>/<row>/seed<s>
SEED <s> <preset> <overrides>` in its own subprocess, one after another (the whole table with the
first seed, then the next seed).  A run folder with results.json is finished and skipped (other
settings need another --output); a run that fails is reported (exit code, last lines of its
train_output.txt) and the next one starts; the tool exits 1 if any row failed.  Afterwards
<out>/table<N>.md, .csv and .png (bar chart) hold Rank-1 / mAP / mINP per row as mean ± std over
seeds beside the paper's MSMT17 numbers.

--preset cpu applies configs/GLTrans/presets/cpu_synthetic.yml (the synthetic demo's tiny ViT,
128x64, SyntheticReID and recipe; its keys are derived from configs/GLTrans/synthetic_demo.yml)
as command-line options after the row's config.  Trailing KEY VALUE options go to every row.

Stopping: SIGINT (Ctrl-C) or SIGTERM is forwarded at once to every running training, which then
has --stop-timeout seconds to save and exit before it is killed; no other run starts, the
tables are written from what finished, and the tool exits 130 (SIGINT) or 143 (SIGTERM).  Rerun
the same command with --resume to continue the stopped runs from their last checkpoint; without
--resume an unfinished run starts again, its earlier files moved to <row>/seed<s>.attempt<k>.
"""
import argparse
import logging
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TABLES = range(4, 11)
# this repository's files, which the gltrans_plugin.reproduce package does not know
ABLATIONS = os.path.join(REPO, "configs", "GLTrans", "ablations")
TRAIN_NET = os.path.join(REPO, "projects", "train_net.py")
PRESETS = {"cpu": os.path.join(REPO, "configs", "GLTrans", "presets", "cpu_synthetic.yml")}


def _is_int(s):
    try:
        int(s)
        return True
    except ValueError:
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", type=int, choices=TABLES, help="paper table (4..10)")
    what.add_argument("--configs", nargs="+", metavar="YAML", help="run these configs instead")
    p.add_argument("--seeds", nargs="+", metavar="SEED",
                   help="seeds, one run per row and seed (default 0; with --collect-only: "
                        "every seed folder found)")
    p.add_argument("--preset", help="'cpu' (tiny ViT on the synthetic set) or a preset yaml")
    p.add_argument("--dataset", help="a registered fast-reid dataset for training and test "
                                     "(sets DATASETS.NAMES and DATASETS.TESTS)")
    p.add_argument("--epochs", type=int, help="SOLVER.MAX_EPOCH; evaluation and checkpoint at "
                                              "the end")
    p.add_argument("--device", choices=("cpu", "cuda"), help="MODEL.DEVICE")
    p.add_argument("--num-gpus", type=int, default=1, help="train_net.py --num-gpus")
    p.add_argument("--output", help="output folder (default logs/reproduce/table<N>, or "
                                    "logs/reproduce/configs)")
    p.add_argument("--resume", action="store_true",
                   help="an unfinished run with a checkpoint continues from it (default: "
                        "it starts again)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (CPU: each gets cores / jobs threads; default 1)")
    p.add_argument("--stop-timeout", type=float, default=60.0, metavar="S",
                   help="after SIGINT / SIGTERM, seconds the running trainings get to save and "
                        "exit before they are killed (default 60)")
    p.add_argument("--train-script", default=TRAIN_NET,
                   help="the training script every run starts (default: this repository's "
                        "projects/train_net.py)")
    p.add_argument("--collect-only", action="store_true",
                   help="run nothing: tabulate the runs found in the output folder")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    # --configs / --seeds take several values and would swallow the trailing KEY VALUE options
    rest = []
    if args.configs:
        n = next((i for i, c in enumerate(args.configs)
                  if not c.endswith((".yml", ".yaml"))), len(args.configs))
        args.configs, rest = args.configs[:n], args.configs[n:]
        if not args.configs:
            p.error("--configs needs yaml files (*.yml, *.yaml)")
    if args.seeds:
        n = next((i for i, s in enumerate(args.seeds) if not _is_int(s)), len(args.seeds))
        args.seeds, rest = [int(s) for s in args.seeds[:n]], args.seeds[n:] + rest
        if not args.seeds:
            p.error("--seeds needs integers")
    args.opts = rest + list(args.opts)
    if args.output is None:
        args.output = os.path.join("logs", "reproduce",
                                   f"table{args.table}" if args.table else "configs")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("gltrans_plugin.reproduce").setLevel(logging.INFO)  # the progress lines
    from gltrans_plugin import reproduce as rp

    rows = (rp.table_rows(args.table, ABLATIONS) if args.table
            else rp.config_rows(args.configs, ABLATIONS))
    stem = f"table{args.table}" if args.table else "configs"
    title = rp.table_title(args.table)
    outcomes, interrupted = [], None
    if not args.collect_only:
        try:
            overrides = rp.shared_overrides(args.preset, args.dataset, args.epochs, args.device,
                                            args.opts, presets=PRESETS)
        except ValueError as e:
            sys.exit(f"error: {e}")
        runs = rp.plan(rows, args.seeds if args.seeds else [0], args.output)
        if args.dry_run:
            for r in runs:
                flag = "  # finished, skipped" if r.done else ""
                print(shlex.join(rp.train_command(r, overrides, num_gpus=args.num_gpus,
                                                  train_script=args.train_script)) + flag)
            return {"runs": runs, "overrides": overrides}
        todo = sum(not r.done for r in runs)
        print(f"{title}: {len(rows)} row(s) x {len(runs) // max(1, len(rows))} seed(s) -> "
              f"{args.output} ({todo} to run, {len(runs) - todo} finished before)")
        try:
            outcomes = rp.execute(runs, overrides, train_script=args.train_script,
                                  resume=args.resume, num_gpus=args.num_gpus, jobs=args.jobs,
                                  stop_timeout=args.stop_timeout)
        except rp.RunsInterrupted as e:  # the tables of what finished, then the signal's code
            outcomes, interrupted = e.outcomes, e
    seeds = args.seeds or (None if args.collect_only else [0])  # None: the seed folders found
    summaries = rp.collect(rows, seeds, args.output)
    paths = rp.write_reports(summaries, args.output, stem, title)
    print()
    print(paths["markdown"])
    print(f"Written: {paths['md']}, {paths['csv']}, {paths['png']}")
    failed = [s for s in summaries if s.status == "failed"]
    if failed:
        print(f"{len(failed)} row(s) failed: {', '.join(s.row.name for s in failed)}")
    code = interrupted.returncode if interrupted else 1 if failed else 0
    result = {"summaries": summaries, "outcomes": outcomes, "paths": paths, "returncode": code}
    if interrupted:
        sys.stdout.flush()
        sys.stderr.write(f"error: {interrupted}\n")
    if code and __name__ == "__main__":
        sys.exit(code)
    return result


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
