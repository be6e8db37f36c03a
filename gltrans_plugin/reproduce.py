"""Reproduce the paper's ablation tables (Tables 4-10): one training per (row, seed), each in its
own ``projects/train_net.py`` subprocess and folder, then a markdown / CSV / bar-chart summary
beside the paper's MSMT17 numbers.  ``tools/reproduce.py`` is the command line.

    rows = table_rows(5)                               # configs/GLTrans/ablations/table5_*.yml
    overrides = shared_overrides(preset="cpu", epochs=2)   # KEY VALUE options for every row
    runs = plan(rows, seeds=[0, 1], output="logs/reproduce/table5")
    execute(runs, overrides)                           # finished runs are skipped
    summaries = collect(rows, [0, 1], "logs/reproduce/table5")
    write_reports(summaries, "logs/reproduce/table5", "table5")   # .md, .csv, .png

Files per run (``<output>/<row>/seed<s>/``): fast-reid's ``log.txt``, ``config.yaml``,
``metrics.json`` and checkpoints; ``train_output.txt`` (the subprocess' stdout + stderr, with
tracebacks); ``reproduce.json`` (command, exit code, seconds); ``results.json`` (written by the
trainer at the end of a finished training: its presence marks the run as done).

Presets are yaml files of config keys turned into command-line options (``preset_values``):
fast-reid's config allows one ``_BASE_`` per file, and the row configs have theirs already.
"""
import concurrent.futures
import csv
import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = os.path.join(REPO, "configs", "GLTrans", "ablations")
TRAIN_NET = os.path.join(REPO, "projects", "train_net.py")
PRESETS = {"cpu": os.path.join(REPO, "configs", "GLTrans", "presets", "cpu_synthetic.yml")}
RESULTS_FILE = "results.json"      # written by gltrans_plugin.engine.write_results
RUN_INFO_FILE = "reproduce.json"   # command, exit code, time of the tool's last attempt
OUTPUT_FILE = "train_output.txt"   # the subprocess' stdout + stderr
METRICS = ("Rank-1", "mAP", "mINP")
PRESET_KEY = "_PRESET_"
RESERVED_OPTS = ("OUTPUT_DIR", "SEED")  # set per run by the tool


@dataclass(frozen=True)
class Row:
    """One row of a table: its config and the paper's MSMT17 result (None when not a paper row)."""
    name: str                  # folder name under the output directory (the config's stem)
    config: str                # yaml path
    label: str                 # short name, as in the paper ("Model-3", "PCB*", "P = 6")
    changes: str               # what the row changes
    paper_map: Optional[float] = None
    paper_rank1: Optional[float] = None

    @property
    def description(self) -> str:
        if self.label == self.name:  # a config of one's own: its first comment line
            return self.changes or self.label
        return f"{self.label}: {self.changes}" if self.changes else self.label


@dataclass(frozen=True)
class Table:
    title: str
    rows: tuple


# The paper's MSMT17 results per ablation row, (mAP, Rank-1) in percent, in the paper's row
# order: Table 4 (comparison with other part-based methods), Table 5 (the components), Table 6
# (aggregated layers), Table 7 (GAE aggregation strategies), Table 8 (number of parts), Table 9
# (PTL layers and sharing), Table 10 (GMA heads).  The first comment line of each
# configs/GLTrans/ablations/<name>.yml repeats the numbers (a test checks they agree).
_PAPER = {
    4: ("Comparison with other part-based methods", [
        ("table4_baseline", "Baseline", "ViT-B/16 + SIE, last-layer class token", 66.3, 84.0),
        ("table4_pcb", "PCB*", "last-layer tokens, stripe average pooling + cls^L", 68.2, 85.2),
        ("table4_msf", "MSF*", "GAE + PTF (last 3 layers), stripe average pooling", 67.6, 84.8),
        ("table4_ours", "Ours", "full GLTrans", 69.0, 85.8),
    ]),
    5: ("The impact of each component", [
        ("table5_model1", "Model-1", "baseline (ViT-B/16 + SIE)", 66.3, 84.0),
        ("table5_model2", "Model-2", "+ GAE", 67.8, 85.2),
        ("table5_model3", "Model-3", "+ PTL (last layer's patch tokens)", 68.5, 85.5),
        ("table5_model4", "Model-4", "+ PTF", 68.8, 85.7),
        ("table5_model5", "Model-5", "+ GMA (full GLTrans)", 69.0, 85.8),
    ]),
    6: ("Aggregated layers", [
        ("table6_layers_9-12", "layers 9-12", "AGG_LAYERS (-4, -3, -2, -1)", 68.2, 85.2),
        ("table6_layers_10-12", "layers 10-12", "AGG_LAYERS (-3, -2, -1) (default)", 68.6, 85.8),
        ("table6_layers_11-12", "layers 11-12", "AGG_LAYERS (-2, -1)", 67.8, 85.1),
        ("table6_layers_12", "layer 12", "AGG_LAYERS (-1,)", 67.5, 85.1),
    ]),
    7: ("GAE aggregation strategies", [
        ("table7_addition", "Addition", "f_g = sum of the class tokens", 66.4, 84.7),
        ("table7_concatenation", "Concatenation", "f_g = concat of the class tokens", 66.6, 84.5),
        ("table7_one_fc", "One FC", "GAE.AGGREGATION fc (default)", 69.0, 85.8),
        ("table7_two_fc", "Two FC", "GAE.AGGREGATION two_fc", 66.3, 84.1),
    ]),
    8: ("Number of parts", [
        ("table8_parts_1", "P = 1", "PTL.NUM_PARTS 1", 68.3, 85.2),
        ("table8_parts_2", "P = 2", "PTL.NUM_PARTS 2", 69.0, 85.7),
        ("table8_parts_3", "P = 3", "PTL.NUM_PARTS 3 (default)", 69.0, 85.8),
        ("table8_parts_6", "P = 6", "PTL.NUM_PARTS 6", 68.9, 85.7),
    ]),
    9: ("PTL layers and sharing", [
        ("table9_model1", "Model-1", "stripe average pooling (PTL.DEPTH 0)", 68.2, 85.5),
        ("table9_model2", "Model-2", "1 unshared PTL layer", 68.9, 85.7),
        ("table9_model3", "Model-3", "2 unshared PTL layers", 67.6, 85.1),
        ("table9_model4", "Model-4", "1 shared PTL layer", 68.5, 85.5),
        ("table9_model5", "Model-5", "2 shared PTL layers (default)", 69.0, 85.8),
    ]),
    10: ("GMA heads", [
        ("table10_heads_1", "h = 1", "GMA.NUM_HEADS 1", 68.5, 85.4),
        ("table10_heads_4", "h = 4", "GMA.NUM_HEADS 4", 68.6, 85.4),
        ("table10_heads_6", "h = 6", "GMA.NUM_HEADS 6", 68.8, 85.3),
        ("table10_heads_12", "h = 12", "GMA.NUM_HEADS 12 (default)", 69.0, 85.8),
    ]),
}

TABLES: Dict[int, Table] = {
    n: Table(title, tuple(Row(name, os.path.join(ABLATIONS, name + ".yml"), label, changes, m, r)
                          for name, label, changes, m, r in rows))
    for n, (title, rows) in _PAPER.items()
}


# ---------------------------------------------------------------------- rows
def table_rows(table: int) -> List[Row]:
    """The rows of paper table ``table`` (4..10), in the paper's order."""
    if table not in TABLES:
        raise ValueError(f"No table {table}: the ablation tables are {sorted(TABLES)}.")
    return list(TABLES[table].rows)


def _paper_row(path: str) -> Optional[Row]:
    real = os.path.realpath(path)
    for t in TABLES.values():
        for row in t.rows:
            if os.path.realpath(row.config) == real:
                return row
    return None


def first_comment(path: str) -> str:
    """The first comment line of a yaml file, without the '#' (empty if none)."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line:
                return ""
    return ""


def config_rows(paths: Sequence[str]) -> List[Row]:
    """Rows for a list of configs: a paper row keeps its label and numbers; another config is
    named by its file stem (made unique) and described by its first comment line."""
    rows, names = [], set()
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Config file not found: {path}")
        known = _paper_row(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}_{k}", k + 1
        names.add(name)
        if known:
            rows.append(Row(name, path, known.label, known.changes, known.paper_map,
                            known.paper_rank1))
        else:
            rows.append(Row(name, path, stem, first_comment(path)))
    return rows


# ---------------------------------------------------------------------- presets / options
def _decode(value):
    """A raw yaml / command-line value as fast-reid's config decodes it (literal_eval of
    strings that are python literals, other strings kept)."""
    from yacs.config import CfgNode

    return CfgNode._decode_cfg_value(value)


def format_value(value) -> str:
    """A config value as a command-line string that fast-reid's ``merge_from_list`` decodes back
    to the same value: python literals (tuples, lists, numbers, booleans, None) by ``repr``,
    strings as they are unless they would read as a literal ("1", "True", "(1, 2)": quoted)."""
    if isinstance(value, str):
        return value if _decode(value) == value else repr(value)
    return repr(value)


def flatten(node: dict, prefix: str = "") -> Dict[str, Any]:
    """Nested mapping (yaml dict or CfgNode) -> {"A.B.C": decoded value}, in file order."""
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = _decode(v)
    return out


def to_opts(values: Dict[str, Any]) -> List[str]:
    """{"KEY": value} -> ["KEY", "value", ...] for ``train_net.py``'s trailing options."""
    opts = []
    for k, v in values.items():
        opts += [k, format_value(v)]
    return opts


def _read_yaml(path: str) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of config keys.")
    return data


def own_keys(path: str) -> Dict[str, Any]:
    """The keys a yaml config sets itself (not those of its ``_BASE_``), flattened."""
    data = _read_yaml(path)
    data.pop("_BASE_", None)
    return flatten(data)


def preset_path(preset: str) -> str:
    """A preset name (``cpu``) or a yaml path -> the yaml path."""
    if preset in PRESETS:
        return PRESETS[preset]
    if os.path.isfile(preset):
        return preset
    raise ValueError(f"Unknown preset {preset!r}: use one of {sorted(PRESETS)} or a yaml file.")


def preset_values(preset: str) -> Dict[str, Any]:
    """The flat {KEY: value} of a preset yaml.

    ``_PRESET_.FROM`` (a path relative to the preset): every key that config sets itself (not
    the keys of its ``_BASE_``), minus ``_PRESET_.EXCLUDE`` (keys, or sections: "SOLVER.AMP"
    drops every key under it); then the preset's own keys, which win.  A preset cannot have a
    ``_BASE_``: it is applied on top of a row config that has its own.
    """
    path = preset_path(preset)
    data = _read_yaml(path)
    if "_BASE_" in data:
        raise ValueError(f"Preset {path} has a _BASE_; a preset is applied on top of a row "
                         f"config (which has its own), use {PRESET_KEY}.FROM instead.")
    meta = data.pop(PRESET_KEY, None) or {}
    unknown = set(meta) - {"FROM", "EXCLUDE"}
    if unknown:
        raise ValueError(f"Preset {path}: unknown {PRESET_KEY} keys {sorted(unknown)} "
                         f"(FROM, EXCLUDE).")
    values = {}
    if meta.get("FROM"):
        source = os.path.normpath(os.path.join(os.path.dirname(path), meta["FROM"]))
        exclude = list(meta.get("EXCLUDE") or [])
        values = {k: v for k, v in own_keys(source).items()
                  if not any(k == e or k.startswith(e + ".") for e in exclude)}
    values.update(flatten(data))
    return values


def preset_opts(preset: str) -> List[str]:
    """A preset as ``KEY VALUE`` command-line options."""
    return to_opts(preset_values(preset))


def check_dataset(name: str) -> str:
    """``name`` if it is a registered fast-reid dataset (after the plugin's registrations)."""
    import gltrans_plugin  # noqa: F401  (registers the plugin's datasets)
    from fastreid.data.datasets import DATASET_REGISTRY

    known = sorted(DATASET_REGISTRY._obj_map, key=str.lower)  # (no __contains__)
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Dataset {name!r} is not registered.{hint} Registered: "
                         f"{', '.join(known)}.")
    return name


def check_opts(opts: Sequence[str]) -> List[str]:
    """Trailing ``KEY VALUE`` options: pairs, and not the keys the tool sets per run."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd list: {opts}.")
    for key in opts[0::2]:
        if key in RESERVED_OPTS:
            raise ValueError(f"{key} is set per run by the tool (use --output / --seeds).")
    return opts


def shared_overrides(preset: Optional[str] = None, dataset: Optional[str] = None,
                     epochs: Optional[int] = None, device: Optional[str] = None,
                     opts: Sequence[str] = (), check_dataset_name: bool = True) -> List[str]:
    """The options every row gets, in order: the preset, the dataset, the epochs (with the
    evaluation and checkpoint periods set to them, so a run evaluates and checkpoints at its
    end; a preset's own SOLVER.MAX_EPOCH counts as given), the device, then ``opts``."""
    out = []
    if preset:
        values = preset_values(preset)
        if epochs is None and "SOLVER.MAX_EPOCH" in values:
            epochs = int(values["SOLVER.MAX_EPOCH"])
        values.pop("SOLVER.MAX_EPOCH", None)  # set with the periods below
        out += to_opts(values)
    if dataset:
        if check_dataset_name:
            check_dataset(dataset)
        out += ["DATASETS.NAMES", repr((dataset,)), "DATASETS.TESTS", repr((dataset,))]
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs {epochs}: at least 1.")
        out += ["SOLVER.MAX_EPOCH", str(epochs), "SOLVER.CHECKPOINT_PERIOD", str(epochs),
                "TEST.EVAL_PERIOD", str(epochs)]
    if device:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r}: use 'cpu' or 'cuda'.")
        out += ["MODEL.DEVICE", device]
    return out + check_opts(opts)


# ---------------------------------------------------------------------- planning
@dataclass
class Run:
    row: Row
    seed: int
    out_dir: str

    @property
    def done(self) -> bool:
        return os.path.isfile(os.path.join(self.out_dir, RESULTS_FILE))

    @property
    def title(self) -> str:
        return f"{self.row.name} seed {self.seed}"


def run_dir(output: str, row: Row, seed: int) -> str:
    return os.path.join(output, row.name, f"seed{seed}")


def plan(rows: Sequence[Row], seeds: Sequence[int], output: str) -> List[Run]:
    """Every (row, seed), seed by seed (the whole table with the first seed comes first)."""
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("No seeds given.")
    return [Run(row, s, run_dir(output, row, s)) for s in seeds for row in rows]


def train_command(run: Run, overrides: Sequence[str] = (), *, resume: bool = False,
                  num_gpus: int = 1, python: str = sys.executable,
                  train_script: str = TRAIN_NET) -> List[str]:
    """``python projects/train_net.py --config-file <row> OUTPUT_DIR <run dir> SEED <s>
    <overrides>``; ``--resume`` continues from the run folder's last checkpoint."""
    cmd = [python, train_script, "--config-file", run.row.config]
    if num_gpus != 1:
        cmd += ["--num-gpus", str(num_gpus)]
    if resume:
        cmd.append("--resume")
    return cmd + ["OUTPUT_DIR", run.out_dir, "SEED", str(run.seed)] + list(overrides)


# ---------------------------------------------------------------------- running
@dataclass
class Outcome:
    run: Run
    status: str                          # "ok", "failed" or "skipped"
    returncode: Optional[int] = None
    seconds: float = 0.0
    metrics: Optional[Dict[str, float]] = None
    tail: List[str] = field(default_factory=list)


def tail_lines(path: str, n: int = 20) -> List[str]:
    if not os.path.isfile(path):
        return []
    with open(path, errors="replace") as f:
        return [line.rstrip("\n") for line in f.readlines()[-n:]]


def _progress_line(path: str) -> str:
    """fast-reid's last ``eta: ...`` line of a run's output, shortened (empty if none yet)."""
    for line in reversed(tail_lines(path, 200)):
        if "eta:" in line:
            return line[line.index("eta:"):][:120]
    return ""


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s"


def fmt_metrics(m: Optional[Dict[str, float]]) -> str:
    if not m:
        return "no metrics"
    return "  ".join(f"{k} {m[k]:.2f}" for k in METRICS if k in m)


def _write_json(path: str, data: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def execute(runs: Sequence[Run], overrides: Sequence[str] = (), *, resume: bool = False,
            num_gpus: int = 1, heartbeat_s: float = 300.0, tail: int = 20,
            train_script: str = TRAIN_NET, env: Optional[dict] = None,
            jobs: int = 1) -> List[Outcome]:
    """Run every unfinished (row, seed), each in its own subprocess, ``jobs`` at a time (one
    after another by default); a failed run (non-zero exit, or no results.json) is logged with
    the end of its output and the others go on.  ``resume``: a run folder with a checkpoint
    continues from it.  With ``jobs`` > 1 on CPU each run gets cores / jobs torch threads
    (``OMP_NUM_THREADS``, unless the caller's environment sets it): parallel runs with one
    thread each use the cores better than one run with all of them, and results do not depend
    on it (timings do: a run's seconds then are not comparable to a lone run's)."""
    outcomes = [Outcome(r, "skipped", metrics=read_results(r.out_dir)) for r in runs if r.done]
    for o in outcomes:
        logger.info("%s: finished before (%s), skipped: %s", o.run.title, RESULTS_FILE,
                    fmt_metrics(o.metrics))
    todo = [r for r in runs if not r.done]
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    jobs = max(1, min(int(jobs), len(todo) or 1))
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    start, durations, lock = time.time(), [], threading.Lock()

    def one(i: int, run: Run) -> Outcome:
        os.makedirs(run.out_dir, exist_ok=True)
        cont = resume and os.path.isfile(os.path.join(run.out_dir, "last_checkpoint"))
        cmd = train_command(run, overrides, resume=cont, num_gpus=num_gpus,
                            train_script=train_script)
        out_file = os.path.join(run.out_dir, OUTPUT_FILE)
        info = {"command": cmd, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "returncode": None, "seconds": None}
        _write_json(os.path.join(run.out_dir, RUN_INFO_FILE), info)
        logger.info("[%d/%d] %s: starting%s (output: %s)", i, len(todo), run.title,
                    " (resuming)" if cont else "", out_file)
        t0 = time.time()
        with open(out_file, "a" if cont else "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            while True:
                try:
                    rc = proc.wait(timeout=heartbeat_s)
                    break
                except subprocess.TimeoutExpired:
                    logger.info("    %s running for %s  %s", run.title,
                                fmt_seconds(time.time() - t0), _progress_line(out_file))
                except BaseException:  # Ctrl-C: stop the child too, then stop
                    proc.terminate()
                    proc.wait()
                    raise
        seconds = time.time() - t0
        info.update(returncode=rc, seconds=round(seconds, 1))
        _write_json(os.path.join(run.out_dir, RUN_INFO_FILE), info)
        metrics = read_results(run.out_dir) if run.done else None
        with lock:
            durations.append(seconds)
            left = len(todo) - len(durations)
            eta = (f", about {fmt_seconds(left * statistics.mean(durations) / jobs)} left"
                   if left else "")
        total = f"total {fmt_seconds(time.time() - start)}{eta}"
        if rc == 0 and metrics is not None:
            logger.info("[%d/%d] %s: done in %s: %s  (%s)", i, len(todo), run.title,
                        fmt_seconds(seconds), fmt_metrics(metrics), total)
            return Outcome(run, "ok", rc, seconds, metrics)
        lines = tail_lines(out_file, tail)
        why = (f"exit code {rc}" if rc != 0 else
               f"exit code 0 but no {RESULTS_FILE} (did the training finish?)")
        logger.error("[%d/%d] %s FAILED (%s) after %s; last lines of %s:\n%s\n(%s)", i,
                     len(todo), run.title, why, fmt_seconds(seconds), out_file,
                     "\n".join("    " + ln for ln in lines), total)
        return Outcome(run, "failed", rc, seconds, None, lines)

    if jobs == 1:
        return outcomes + [one(i, run) for i, run in enumerate(todo, 1)]
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(one, i, run) for i, run in enumerate(todo, 1)]
        return outcomes + [f.result() for f in futures]


# ---------------------------------------------------------------------- collection
def read_results(out_dir: str) -> Optional[Dict[str, float]]:
    """The final metrics of a finished run (``results.json``), percent; with several test
    sets, the first one's.  None when the run has not finished."""
    path = os.path.join(out_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        final = json.load(f).get("final") or {}
    if final and all(isinstance(v, dict) for v in final.values()):
        final = next(iter(final.values()))  # {test set: metrics}
    return {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}


def _run_info(out_dir: str) -> dict:
    path = os.path.join(out_dir, RUN_INFO_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _test_sets(out_dir: str) -> tuple:
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(path):
        return ()
    try:
        return tuple(_decode(_read_yaml(path).get("DATASETS", {}).get("TESTS", ())))
    except Exception:  # an unreadable config only loses the test-set name
        return ()


def mean_std(values: Sequence[float]):
    """(mean, sample standard deviation or None with fewer than two values); (None, None) when
    empty."""
    values = list(values)
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class RowSummary:
    row: Row
    seeds: List[int]
    metrics: Dict[int, Dict[str, float]]        # seed -> metrics of the finished runs
    failed: Dict[int, Optional[int]]            # seed -> exit code
    test_sets: tuple = ()

    @property
    def missing(self) -> List[int]:
        return [s for s in self.seeds if s not in self.metrics and s not in self.failed]

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        return "missing" if self.missing else "ok"

    @property
    def note(self) -> str:
        parts = [f"seed {s}: exit {rc}" for s, rc in sorted(self.failed.items())]
        if self.missing and (self.metrics or self.failed):
            parts += [f"seed {s}: not run" for s in self.missing]
        return ", ".join(parts)

    def stat(self, metric: str):
        return mean_std([m[metric] for _, m in sorted(self.metrics.items()) if metric in m])


def seeds_on_disk(output: str, row: Row) -> List[int]:
    d = os.path.join(output, row.name)
    if not os.path.isdir(d):
        return []
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"seed(\d+)", n) for n in os.listdir(d))
                  if m)


def collect(rows: Sequence[Row], seeds: Optional[Sequence[int]], output: str) -> List[RowSummary]:
    """Each row's results over ``seeds`` (None: the seed folders found for that row, else 0).
    A run is ok (results.json), failed (the tool's last attempt exited non-zero, or exited 0
    without results) or missing (never run, or interrupted)."""
    out = []
    for row in rows:
        row_seeds = list(seeds) if seeds is not None else (seeds_on_disk(output, row) or [0])
        metrics, failed, tests = {}, {}, ()
        for s in row_seeds:
            d = run_dir(output, row, s)
            res = read_results(d)
            if res is not None:
                metrics[s] = res
                tests = tests or _test_sets(d)
                continue
            rc = _run_info(d).get("returncode")
            if rc is not None:
                failed[s] = rc
        out.append(RowSummary(row, row_seeds, metrics, failed, tests))
    return out


# ---------------------------------------------------------------------- reports
def _fmt_stat(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± " + (f"{std:.2f}" if std is not None else "-")


def _fmt_paper(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def tested_on(summaries: Sequence[RowSummary]) -> List[str]:
    return sorted({t for s in summaries for t in s.test_sets})


def markdown_table(summaries: Sequence[RowSummary]) -> str:
    head = ["row", "changes", "seeds", "Rank-1", "mAP", "mINP", "paper mAP", "paper Rank-1",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        status = s.status + (f" ({s.note})" if s.note else "")
        cells = [s.row.name, s.row.description.replace("|", "/"), str(len(s.metrics))]
        cells += [_fmt_stat(*s.stat(m)) for m in METRICS]
        cells += [_fmt_paper(s.row.paper_map), _fmt_paper(s.row.paper_rank1), status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(summaries: Sequence[RowSummary], title: str = "") -> str:
    tests = tested_on(summaries)
    lines = [f"# {title}", ""] if title else []
    lines += [
        f"Test set: {', '.join(tests) or 'unknown (no finished run)'}. Rank-1 / mAP / mINP in "
        "percent, mean ± sample standard deviation over the seeds that finished ('-' with one "
        "seed); 'paper' = the paper's MSMT17 result (one run).", "",
        markdown_table(summaries), ""]
    return "\n".join(lines)


CSV_FIELDS = ["row", "label", "changes", "config", "n_seeds", "seeds",
              "rank1_mean", "rank1_std", "map_mean", "map_std", "minp_mean", "minp_std",
              "paper_map", "paper_rank1", "status", "note", "test_sets"]


def write_csv(summaries: Sequence[RowSummary], path: str):
    def num(v):
        return "" if v is None else repr(float(v))

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for s in summaries:
            stats = [num(x) for m in METRICS for x in s.stat(m)]
            w.writerow([s.row.name, s.row.label, s.row.changes, s.row.config, len(s.metrics),
                        " ".join(str(k) for k in sorted(s.metrics)), *stats,
                        num(s.row.paper_map), num(s.row.paper_rank1), s.status, s.note,
                        " ".join(s.test_sets)])


def write_chart(summaries: Sequence[RowSummary], path: str, title: str = ""):
    """Bars of mAP and Rank-1 per row, seed spread (sample std) as error bars; the paper's
    MSMT17 numbers as markers when the runs were tested on MSMT17."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * n + 1.5), 4.2))
    width = 0.38
    with_paper = tested_on(summaries) == ["MSMT17"]
    top = 1.0
    for j, (metric, colour) in enumerate((("mAP", "tab:blue"), ("Rank-1", "tab:orange"))):
        xs = [i + (j - 0.5) * width for i in range(n)]
        stats = [s.stat(metric) for s in summaries]
        means = [m if m is not None else math.nan for m, _ in stats]
        errs = [sd if sd is not None else 0.0 for _, sd in stats]
        ax.bar(xs, means, width, yerr=errs, capsize=4, color=colour, label=metric)
        top = max([top] + [m + e for m, e in zip(means, errs) if not math.isnan(m)])
        if with_paper:
            paper = [(s.row.paper_map if metric == "mAP" else s.row.paper_rank1)
                     for s in summaries]
            px = [x for x, p in zip(xs, paper) if p is not None]
            ax.scatter(px, [p for p in paper if p is not None], marker="_", s=300,
                       color="black", zorder=3, label="paper (MSMT17)" if j == 0 else None)
            top = max([top] + [p for p in paper if p is not None])
    for i, s in enumerate(summaries):
        if s.status != "ok":
            ax.text(i, 0.02 * top, s.status, ha="center", va="bottom", color="red", fontsize=9)
    ax.set_xticks(range(n))
    ax.set_xticklabels([s.row.label for s in summaries], rotation=20 if n > 5 else 0)
    ax.set_ylabel("percent")
    ax.set_ylim(0, top * 1.25)  # room for the legend above the bars
    seeds = max((len(s.metrics) for s in summaries), default=0)
    ax.set_title((title + "\n" if title else "") +
                 f"test set {', '.join(tested_on(summaries)) or '?'}; error bars: std over "
                 f"seeds (up to {seeds})", fontsize=10)
    ax.legend(fontsize=9, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(summaries: Sequence[RowSummary], output: str, stem: str,
                  title: str = "") -> Dict[str, str]:
    """``<output>/<stem>.md``, ``.csv`` and ``.png``; returns {"md": path, ...} and the
    markdown under "markdown"."""
    os.makedirs(output, exist_ok=True)
    paths = {ext: os.path.join(output, f"{stem}.{ext}") for ext in ("md", "csv", "png")}
    text = markdown_report(summaries, title)
    with open(paths["md"], "w") as f:
        f.write(text)
    write_csv(summaries, paths["csv"])
    write_chart(summaries, paths["png"], title)
    return dict(paths, markdown=text)


def table_title(table: Optional[int]) -> str:
    return f"Table {table}: {TABLES[table].title}" if table in TABLES else "Configs"
