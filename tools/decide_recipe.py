#!/usr/bin/env python
"""Decide between recipes on validation over several synthetic sets and seeds; report test.

    python tools/decide_recipe.py configs/GLTrans/protocol/demo_recipes.yml --jobs 2
    python tools/decide_recipe.py RECIPES.yml --sets 1 2 --seeds 0 --dry-run     # commands only
    python tools/decide_recipe.py RECIPES.yml --collect-only                      # report only

The recipe file lists recipes (a config, a preset, overrides) and the grid: synthetic sets (the
built-in generator's seed), training seeds, the validation split (val_ids identities held out of
training) and how often it is evaluated.  Every (recipe, set, seed) runs `projects/train_net.py
--config-file <out>/<recipe>/set<k>/recipe.yml OUTPUT_DIR <out>/<recipe>/set<k>/seed<s> SEED <s>
[KEY VALUE ...]` in its own subprocess, --jobs at a time; each set's images are generated once
into <out>/data/set<k>.  A run folder with results.json is finished and skipped (a changed
recipe needs another --output); a failed run is reported and the others go on (exit code 1).
The runs' periodic checkpoints are deleted once they finish (--keep-checkpoints keeps them).

The pick is the recipe with the best validation mAP (mean over sets of the per-set means over
seeds); the test numbers of each run's validation-chosen checkpoint are reported beside it,
never used to choose.  Per recipe: mean and 95% t-interval over the per-set means; per pair of
recipes: the mean difference on the same (set, seed) and its 95% interval, and whether it
excludes 0.  Written to <out>/decision.md, decision_recipes.csv, decision_pairs.csv and
decision_runs.csv.  --sets / --seeds / --val-ids / --val-seed / --eval-period replace the
file's; trailing KEY VALUE options go to every run (e.g. MODEL.DEVICE cuda).

Stopping (SIGINT / SIGTERM) and --resume: as tools/reproduce.py.
"""
import argparse
import logging
import os
import shlex
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)

from reproduce import PRESETS, TRAIN_NET  # noqa: E402  (this repository's files)


def _split_ints(values, flag, parser):
    """A nargs="+" list of integers followed by trailing KEY VALUE options -> (ints, rest)."""
    if values is None:
        return None, []
    n = next((i for i, v in enumerate(values) if not v.lstrip("-").isdigit()), len(values))
    if n == 0:
        parser.error(f"{flag} needs integers")
    return [int(v) for v in values[:n]], list(values[n:])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", help="recipe file (configs/GLTrans/protocol/*.yml)")
    p.add_argument("--sets", nargs="+", metavar="SEED",
                   help="synthetic sets (DATASETS.SYNTHETIC.SEED); default: the file's")
    p.add_argument("--seeds", nargs="+", metavar="SEED",
                   help="training seeds; default: the file's")
    p.add_argument("--val-ids", type=int, help="DATASETS.VAL.IDS; default: the file's")
    p.add_argument("--val-seed", type=int, help="DATASETS.VAL.SEED; default: the file's")
    p.add_argument("--eval-period", type=int,
                   help="validate and checkpoint every N epochs; default: the file's")
    p.add_argument("--output", help="output folder (default logs/protocol/<recipe file name>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (CPU: each gets cores / jobs threads; default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="MODEL.DEVICE of every run")
    p.add_argument("--num-gpus", type=int, default=1, help="train_net.py --num-gpus")
    p.add_argument("--resume", action="store_true",
                   help="an unfinished run with a checkpoint continues from it")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the finished runs' periodic checkpoints (default: deleted; "
                        "model_best.pth and model_final.pth always stay)")
    p.add_argument("--stop-timeout", type=float, default=60.0, metavar="S",
                   help="after SIGINT / SIGTERM, seconds the trainings get to exit (default 60)")
    p.add_argument("--train-script", default=TRAIN_NET,
                   help="the training script of every run (default: projects/train_net.py)")
    p.add_argument("--collect-only", action="store_true",
                   help="run nothing: report the runs found in the output folder")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("opts", nargs="*", help="config overrides KEY VALUE ... (anywhere after the "
                                           "recipe file)")
    args = p.parse_intermixed_args(argv)
    args.sets, rest_sets = _split_ints(args.sets, "--sets", p)
    args.seeds, rest_seeds = _split_ints(args.seeds, "--seeds", p)
    args.opts = rest_sets + rest_seeds + list(args.opts)
    if args.output is None:
        stem = os.path.splitext(os.path.basename(args.recipes))[0]
        args.output = os.path.join("logs", "protocol", stem)
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("gltrans_plugin.reproduce").setLevel(logging.INFO)  # the progress lines
    from gltrans_plugin.reproduce import RunsInterrupted
    from gltrans_plugin.reproduce import protocol as pr

    rf = pr.read_recipes(args.recipes, PRESETS)
    grid = pr.with_overrides(rf.grid, sets=args.sets, seeds=args.seeds, val_ids=args.val_ids,
                             val_seed=args.val_seed, eval_period=args.eval_period)
    opts = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])
    outcomes, interrupted = [], None
    if not args.collect_only:
        pr.check_recipes(rf, grid, opts)
        rows, runs = pr.plan_grid(rf, grid, args.output)
        if args.dry_run:
            from gltrans_plugin.reproduce import train_command

            for r in runs:
                flag = "  # finished, skipped" if r.done else ""
                print(shlex.join(train_command(r, opts, num_gpus=args.num_gpus,
                                               train_script=args.train_script)) + flag)
            return {"runs": runs, "opts": opts, "grid": grid}
        todo = sum(not r.done for r in runs)
        print(f"{len(rf.recipes)} recipe(s) x {len(grid.sets)} set(s) x {len(grid.seeds)} "
              f"seed(s) = {len(runs)} runs -> {args.output} ({todo} to run, {len(runs) - todo} "
              f"finished before)")
        try:
            outcomes = pr.run_grid(runs, opts, train_script=args.train_script,
                                   keep_checkpoints=args.keep_checkpoints, resume=args.resume,
                                   num_gpus=args.num_gpus, jobs=args.jobs,
                                   stop_timeout=args.stop_timeout)
        except RunsInterrupted as e:  # the report of what finished, then the signal's code
            outcomes, interrupted = e.outcomes, e
    results = pr.collect_grid(rf, grid, args.output)
    paths = pr.write_decision(results, rf, grid, args.output)
    print()
    print(paths["markdown"])
    print(f"Written: {paths['md']}, {paths['recipes']}, {paths['pairs']}, {paths['runs']}")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(
            f"{r.recipe} set {r.set} seed {r.seed}" for r in failed))
    code = interrupted.returncode if interrupted else 1 if failed else 0
    result = {"results": results, "outcomes": outcomes, "paths": paths, "grid": grid,
              "decision": paths["decision"], "returncode": code}
    if interrupted:
        sys.stdout.flush()
        sys.stderr.write(f"error: {interrupted}\n")
    if code and __name__ == "__main__":
        sys.exit(code)
    return result


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
