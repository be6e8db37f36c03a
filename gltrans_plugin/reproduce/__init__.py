"""Reproduce the paper's ablation tables (Tables 4-10): one training per (row, seed), each in its
own training subprocess and folder, then a markdown / CSV / bar-chart summary beside the paper's
MSMT17 numbers.  ``tools/reproduce.py`` is the command line; it passes the repository's files
(the ablation configs folder, the presets, ``projects/train_net.py``), which this package does
not know.

    rows = table_rows(5, "configs/GLTrans/ablations")     # <folder>/table5_*.yml
    overrides = shared_overrides(preset="cpu", epochs=2,
                                 presets={"cpu": "configs/GLTrans/presets/cpu_synthetic.yml"})
    runs = plan(rows, seeds=[0, 1], output="logs/reproduce/table5")
    execute(runs, overrides, train_script="projects/train_net.py")  # finished runs are skipped
    summaries = collect(rows, [0, 1], "logs/reproduce/table5")
    write_reports(summaries, "logs/reproduce/table5", "table5")   # .md, .csv, .png

Rooms: ``plan`` (rows, presets, runs and their commands), ``run`` (the subprocesses, signals),
``report`` (collection and summaries), ``protocol`` (recipes x synthetic sets x seeds, decided
on a validation split; ``tools/decide_recipe.py``).

Files per run (``<output>/<row>/seed<s>/``): fast-reid's ``log.txt``, ``config.yaml``,
``metrics.json`` and checkpoints; ``train_output.txt`` (the subprocess' stdout + stderr, with
tracebacks); ``reproduce.json`` (command, exit code, seconds, the signal that stopped it);
``results.json`` (written by the trainer at the end of a finished training: its presence marks
the run as done).
"""
from .plan import (METRICS, OUTPUT_FILE, PAPER_TABLES, RESULTS_FILE, RUN_INFO_FILE, Row, Run,
                   config_rows, first_comment, format_value, own_keys, plan, preset_opts,
                   preset_values, read_results, run_dir, shared_overrides, table_rows,
                   table_title, train_command)
from .report import RowSummary, collect, mean_std, write_reports
from .run import Outcome, RunsInterrupted, execute

__all__ = ["METRICS", "OUTPUT_FILE", "PAPER_TABLES", "RESULTS_FILE", "RUN_INFO_FILE", "Outcome",
           "Row", "RowSummary", "Run", "RunsInterrupted", "collect", "config_rows", "execute",
           "first_comment", "format_value", "mean_std", "own_keys", "plan", "preset_opts",
           "preset_values", "read_results", "run_dir", "shared_overrides", "table_rows",
           "table_title", "train_command", "write_reports"]
