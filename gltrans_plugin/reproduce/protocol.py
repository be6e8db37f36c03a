"""Choosing a recipe on validation and judging it on test, over several sets and seeds.

A recipe file (yaml, ``configs/GLTrans/protocol/*.yml``) names recipes (a config, an optional
preset, config overrides) and the grid they are compared on: built-in synthetic sets (the
generator's ``DATASETS.SYNTHETIC.SEED``; none of them the set the recipes' configs train on)
x training seeds.  Every (recipe, set, seed) is one ``train_net.py`` run (``run.execute``: its
own subprocess and folder, ``jobs`` at a time, a finished run skipped) with a validation split
(``DATASETS.VAL.IDS`` training identities held out, evaluated every ``eval_period`` epochs);
its test metrics are those of its checkpoint with the best validation mAP.

    rf = read_recipes("configs/GLTrans/protocol/demo_recipes.yml", presets={"cpu": ...})
    rows, runs = plan_grid(rf, rf.grid, "logs/protocol/demo_recipes")   # writes recipe.yml
    check_recipes(rf, rf.grid)                       # unknown keys, dataset, sets: fail early
    run_grid(runs, train_script="projects/train_net.py", jobs=2)
    results = collect_grid(rf, rf.grid, "logs/protocol/demo_recipes")
    write_decision(results, rf, rf.grid, "logs/protocol/demo_recipes")  # .md + 3 .csv

Folders: ``<output>/<recipe>/set<k>/recipe.yml`` (the recipe's config as ``_BASE_`` plus its
preset, its overrides and the set's keys: the config every seed of that set trains),
``<output>/<recipe>/set<k>/seed<s>/`` (one run: ``reproduce``'s files, ``results.json`` marks it
finished), ``<output>/data/set<k>/`` (the set's images, ``DATASETS.ROOT`` of its runs).

Statistics.  The sets are the independent units: a recipe's number is the mean over sets of
each set's mean over its seeds, with a 95% Student-t interval over those per-set means (sets - 1
degrees of freedom; with one set, over the runs).  Two recipes are compared on the same (set,
seed) pairs: the differences are averaged per set and given the same t-interval; a difference
whose interval excludes 0 is beyond the interval.  The pick is the finished recipe with the
highest validation mAP; test numbers are reported beside it and never used to choose.
"""
import csv
import itertools
import logging
import math
import os
import re
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import UserError
from .plan import (RESULTS_FILE, Row, check_opts, flatten, format_value, plan, preset_values,
                   read_yaml, run_dir, to_opts)
from .report import collect
from .run import RunsInterrupted, execute

logger = logging.getLogger(__name__)

__all__ = ["CONFIDENCE", "DATA_DIR", "Decision", "Grid", "METRICS", "PROTOCOL_KEYS",
           "ProtocolError", "Recipe", "RecipeFile", "RunResult", "Stat", "check_recipes",
           "collect_grid", "decide", "markdown_report", "paired", "plan_grid", "prune",
           "read_recipes", "recipe_stat", "run_grid", "set_root", "t_interval",
           "with_overrides", "write_decision"]

CONFIDENCE = 0.95
DATA_DIR = "data"              # <output>/data/set<k>: each set's DATASETS.ROOT
RECIPE_CONFIG = "recipe.yml"   # <output>/<recipe>/set<k>/recipe.yml
# metric -> its name in the reports: the validation mAP of the selected checkpoint, then the
# test metrics of that checkpoint
METRICS = {"val_map": "val mAP", "mAP": "test mAP", "Rank-1": "test Rank-1",
           "mINP": "test mINP"}
PAIR_METRICS = ("val_map", "mAP", "Rank-1")
# decision_runs.csv: its metric columns, in order, and the METRICS key each one holds
RUNS_CSV_METRICS = {"val_map": "val_map", "test_rank1": "Rank-1", "test_map": "mAP",
                    "test_minp": "mINP"}
# keys the protocol sets per run, and where a user sets them instead
PROTOCOL_KEYS = {
    "DATASETS.ROOT": "each set has its folder under the output folder",
    "DATASETS.SYNTHETIC.SEED": "the recipe file's sets / --sets",
    "DATASETS.VAL.IDS": "the recipe file's val_ids / --val-ids",
    "DATASETS.VAL.SEED": "the recipe file's val_seed / --val-seed",
    "TEST.EVAL_PERIOD": "the recipe file's eval_period / --eval-period",
    "SOLVER.CHECKPOINT_PERIOD": "the recipe file's eval_period / --eval-period",
}
_FILE_KEYS = {"config", "preset", "opts", "sets", "seeds", "val_ids", "val_seed",
              "eval_period", "recipes"}
_RECIPE_KEYS = {"name", "about", "config", "preset", "opts"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PERIODIC_CHECKPOINT = re.compile(r"model_\d{4}\.pth")  # fast-reid's model_<epoch>.pth


class ProtocolError(UserError, ValueError):
    """A recipe file, grid or output folder the protocol cannot use."""


# ---------------------------------------------------------------------- the recipe file
@dataclass(frozen=True)
class Recipe:
    name: str                       # folder name under the output folder
    about: str                      # one line: what the recipe is
    config: str                     # yaml path
    preset: Optional[str] = None    # preset yaml path, applied after the config
    opts: Tuple[Tuple[str, Any], ...] = ()  # (KEY, value) overrides, applied after the preset


@dataclass(frozen=True)
class Grid:
    sets: Tuple[int, ...]           # the generator seeds (DATASETS.SYNTHETIC.SEED)
    seeds: Tuple[int, ...]          # training seeds (SEED)
    val_ids: int                    # DATASETS.VAL.IDS
    val_seed: int = 0               # DATASETS.VAL.SEED (the same split for every run of a set)
    eval_period: int = 4            # TEST.EVAL_PERIOD = SOLVER.CHECKPOINT_PERIOD (epochs)

    def checked(self, where: str = "") -> "Grid":
        for key, values in (("sets", self.sets), ("seeds", self.seeds)):
            if not values or len(set(values)) != len(values):
                raise ProtocolError(f"{key} {list(values)}: give one or more distinct integers",
                                    where, f"e.g. {key}: [1, 2, 3]")
        if self.val_ids < 1:
            raise ProtocolError(f"val_ids {self.val_ids}: the protocol selects on a validation "
                                f"split", where, "hold out at least one training identity "
                                             "(e.g. a quarter of them)")
        if self.eval_period < 1:
            raise ProtocolError(f"eval_period {self.eval_period}: at least 1 (epochs)", where)
        return self


@dataclass(frozen=True)
class RecipeFile:
    path: str
    recipes: Tuple[Recipe, ...]
    grid: Grid

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    def recipe(self, name: str) -> Recipe:
        return next(r for r in self.recipes if r.name == name)


def _ints(value, key: str, path: str, one: bool = False) -> Tuple[int, ...]:
    """The integers of ``key`` (a list, or one integer; ``one``: exactly one integer)."""
    values = [value] if one or not isinstance(value, (list, tuple)) else value
    if (one and isinstance(value, (list, tuple))) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ProtocolError(f"{key} {value!r}: not {'an integer' if one else 'integers'}", path,
                            f"e.g. {key}: {'4' if one else '[1, 2, 3]'}")
    return tuple(values)


def _resolve(value: str, path: str, presets: Optional[Mapping[str, str]] = None) -> str:
    """A config / preset reference of the recipe file -> a path (a preset name of ``presets``,
    else relative to the recipe file)."""
    if presets and value in presets:
        return presets[value]
    full = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), value))
    if not os.path.isfile(full):
        named = f" or a preset name ({', '.join(sorted(presets))})" if presets else ""
        raise ProtocolError(f"{value!r} is not a file", path,
                            f"give a yaml path relative to the recipe file{named}")
    return full


def check_keys(keys: Sequence[str], where: str):
    """``keys`` set none of the protocol's per-run keys (``PROTOCOL_KEYS``)."""
    for key in keys:
        if key in PROTOCOL_KEYS:
            raise ProtocolError(f"{key} is set per run by the protocol", where,
                                f"remove it ({PROTOCOL_KEYS[key]})")


def _opts(value, where: str) -> Dict[str, Any]:
    """An ``opts:`` mapping of a recipe file -> {KEY: value}, its keys checked."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("opts is not a mapping", where, "write opts: {KEY: value, ...}")
    opts = flatten(value)
    check_keys(list(opts), where)
    return opts


def read_recipes(path: str, presets: Optional[Mapping[str, str]] = None) -> RecipeFile:
    """Read a recipe file: top-level ``config`` / ``preset`` (defaults of every recipe),
    ``opts`` (overrides of every recipe, before its own: e.g. a grid kept on the recipe it ran
    with after the config it starts from changed), ``sets``, ``seeds``, ``val_ids``,
    ``val_seed``, ``eval_period`` (the grid) and ``recipes``, a list of {name, about, config,
    preset, opts}; a recipe's ``preset: null`` drops the default preset.  Paths are relative
    to the file; a preset may be a name of ``presets``."""
    if not os.path.isfile(path):
        raise ProtocolError("recipe file not found", path, "give a yaml file of recipes "
                            "(configs/GLTrans/protocol/ has examples)")
    try:
        data = read_yaml(path)
    except Exception as e:  # noqa: BLE001  (bad yaml, not a mapping)
        raise ProtocolError(f"not a recipe file ({str(e).splitlines()[0]})", path,
                            "fix the yaml") from None
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ProtocolError(f"unknown keys {unknown}", path, f"use {sorted(_FILE_KEYS)}")
    entries = data.get("recipes")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("no recipes", path, "list them under 'recipes:' (name, about, "
                            "config, preset, opts)")
    common = _opts(data.get("opts"), path)
    recipes, names = [], set()
    for i, entry in enumerate(entries, 1):
        where = f"{path}, recipe {i}"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ProtocolError("a recipe is a mapping with a name", where,
                                "e.g. {name: demo, about: ..., opts: {KEY: value}}")
        unknown = sorted(set(entry) - _RECIPE_KEYS)
        if unknown:
            raise ProtocolError(f"unknown keys {unknown}", where, f"use {sorted(_RECIPE_KEYS)}")
        name = str(entry["name"])
        if not _NAME.fullmatch(name) or name == DATA_DIR or name in names:
            raise ProtocolError(f"recipe name {name!r} is not a new folder name", where,
                                f"use letters, digits, '_', '.', '-', unique, not {DATA_DIR!r}")
        names.add(name)
        config = entry.get("config", data.get("config"))
        if not config:
            raise ProtocolError(f"recipe {name!r} has no config", where,
                                "set 'config:' in the recipe or at the top of the file")
        preset = entry["preset"] if "preset" in entry else data.get("preset")
        opts = dict(common)
        opts.update(_opts(entry.get("opts"), f"{path}, recipe {name!r}"))
        recipes.append(Recipe(name, str(entry.get("about") or ""), _resolve(config, path),
                              _resolve(preset, path, presets) if preset else None,
                              tuple(opts.items())))
    grid = Grid(_ints(data.get("sets", [1, 2, 3]), "sets", path),
                _ints(data.get("seeds", [0, 1, 2]), "seeds", path),
                *(_ints(data.get(k, d), k, path, one=True)[0] for k, d in (
                    ("val_ids", 0), ("val_seed", 0), ("eval_period", 4)))).checked(path)
    return RecipeFile(path, tuple(recipes), grid)


# ---------------------------------------------------------------------- plan
def set_root(output: str, set_seed: int) -> str:
    """``DATASETS.ROOT`` of set ``set_seed``'s runs: its own folder, so sets never share (and
    regenerate) files."""
    return os.path.join(os.path.abspath(output), DATA_DIR, f"set{set_seed}")


def _set_folder(recipe: Recipe, set_seed: int) -> str:
    return f"{recipe.name}/set{set_seed}"


def _row_set(row: Row) -> int:
    """The set of a ``grid_rows`` row (named ``<recipe>/set<k>``)."""
    return int(row.name.rsplit("/set", 1)[1])


def recipe_values(recipe: Recipe, grid: Grid, set_seed: int, output: str) -> Dict[str, Any]:
    """The keys ``recipe.yml`` sets on top of the recipe's config: its preset, its overrides,
    then the protocol's keys for the set."""
    values = dict(preset_values(recipe.preset)) if recipe.preset else {}
    values.update(recipe.opts)
    values.update({"DATASETS.ROOT": set_root(output, set_seed),
                   "DATASETS.SYNTHETIC.SEED": int(set_seed),
                   "DATASETS.VAL.IDS": int(grid.val_ids), "DATASETS.VAL.SEED": int(grid.val_seed),
                   "TEST.EVAL_PERIOD": int(grid.eval_period),
                   "SOLVER.CHECKPOINT_PERIOD": int(grid.eval_period)})
    return values


def _yaml_value(value):
    """A decoded config value as yaml that fast-reid's config decodes back to it: strings as
    on the command line (``format_value``), tuples as lists (the config turns them back)."""
    if isinstance(value, str):
        return format_value(value)
    if isinstance(value, (list, tuple)):
        return [list(v) if isinstance(v, tuple) else v for v in value]
    return value


def _nest(values: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = _yaml_value(value)
    return out


def _same_recipe(path: str, base: str, values: Mapping[str, Any]) -> bool:
    """Whether the ``recipe.yml`` at ``path`` sets the same keys on the same config (by file
    name; the data folder's location may differ)."""
    old = read_yaml(path)
    old_base = os.path.basename(str(old.pop("_BASE_", "")))
    old_values = flatten(old)
    new_values = flatten(_nest(values))
    for v in (old_values, new_values):
        v.pop("DATASETS.ROOT", None)
    return old_base == os.path.basename(base) and old_values == new_values


def _has_runs(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder)
                  if n.startswith("seed") and os.path.isdir(os.path.join(folder, n))
                  and os.listdir(os.path.join(folder, n)))


def _write_recipe_config(path: str, recipe: Recipe, values: Mapping[str, Any]):
    """Write ``recipe.yml``; one that differs, beside runs made with it, is an error (their
    results would be mixed with the new recipe's)."""
    import yaml

    if os.path.isfile(path) and not _same_recipe(path, recipe.config, values):
        runs = _has_runs(os.path.dirname(path))
        if runs:
            raise ProtocolError(
                f"recipe {recipe.name!r} changed since its runs {', '.join(runs)} in "
                f"{os.path.dirname(path)} were made", path,
                "use another --output, or delete that recipe's folder to run it again")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    head = (f"# Written by the recipe protocol: recipe {recipe.name!r}"
            + (f" ({recipe.about})" if recipe.about else "") + ", one set; every seed of the "
            "set trains this config.\n")
    body = dict(_BASE_=os.path.abspath(recipe.config), **_nest(values))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(head)
        yaml.safe_dump(body, f, sort_keys=False, default_flow_style=False)
    os.replace(tmp, path)


def grid_rows(rf: RecipeFile, grid: Grid, output: str) -> List[Row]:
    """One ``reproduce`` row per (set, recipe), set by set: row ``<recipe>/set<k>``, its config
    the ``recipe.yml`` of that folder."""
    return [Row(_set_folder(r, s), os.path.join(output, _set_folder(r, s), RECIPE_CONFIG),
                r.name, r.about)
            for s in grid.sets for r in rf.recipes]


def plan_grid(rf: RecipeFile, grid: Grid, output: str):
    """Write every (recipe, set)'s ``recipe.yml`` and plan the runs: (rows, runs), the runs seed
    by seed, then set by set, then recipe by recipe, so that the first seed's comparison on
    every set is complete first."""
    grid.checked(rf.path)
    rows = grid_rows(rf, grid, output)
    for row in rows:
        recipe = rf.recipe(row.label)
        _write_recipe_config(row.config, recipe,
                             recipe_values(recipe, grid, _row_set(row), output))
    return rows, plan(rows, grid.seeds, output)


def check_recipes(rf: RecipeFile, grid: Grid, opts: Sequence[str] = ()):
    """Build every recipe's config (its config, preset, overrides and ``opts``) before any run:
    an unknown key or a bad value fails here, naming the recipe; every recipe must train and
    test on the built-in synthetic set, and no set of the grid may be the one the recipe's
    config trains on (the set the recipe was made on is not the set it is judged on)."""
    from ..config import setup_cfg

    check_keys(list(opts)[0::2], "the command-line options")
    check_opts(opts)
    for recipe in rf.recipes:
        values = dict(preset_values(recipe.preset)) if recipe.preset else {}
        values.update(recipe.opts)
        where = f"{rf.path}, recipe {recipe.name!r}"
        try:
            cfg = setup_cfg(recipe.config, to_opts(values) + list(opts))
        except (UserError, KeyError, ValueError, AssertionError) as e:
            raise ProtocolError(f"recipe {recipe.name!r} does not build a config: "
                                f"{str(e).rstrip('.')}", where,
                                "fix its config, preset or opts") from None
        datasets = (tuple(cfg.DATASETS.NAMES), tuple(cfg.DATASETS.TESTS))
        if datasets != (("SyntheticReID",), ("SyntheticReID",)):
            raise ProtocolError(
                f"recipe {recipe.name!r} trains on {datasets[0]} and tests on {datasets[1]}; "
                f"the protocol's sets are the built-in generator's", where,
                "set DATASETS.NAMES and DATASETS.TESTS to ('SyntheticReID',) (e.g. preset: cpu)")
        own = int(cfg.DATASETS.SYNTHETIC.SEED)
        if own in grid.sets:
            raise ProtocolError(
                f"set {own} is the one recipe {recipe.name!r}'s config trains on (its "
                f"DATASETS.SYNTHETIC.SEED)", where,
                f"decide on other sets: remove {own} from sets")
    if len(grid.sets) < 3 or len(grid.seeds) < 3:
        logger.warning("%d set(s) x %d seed(s): with fewer than 3 sets or seeds the intervals "
                       "are wide or missing.", len(grid.sets), len(grid.seeds))


# ---------------------------------------------------------------------- run
def prune(out_dir: str) -> int:
    """Delete a finished run's periodic checkpoints (``model_<epoch>.pth``: they serve resuming
    only); ``model_best.pth`` (the tested one) and ``model_final.pth`` stay.  Returns the bytes
    freed."""
    if not os.path.isfile(os.path.join(out_dir, RESULTS_FILE)):
        return 0
    freed = 0
    for name in os.listdir(out_dir):
        if _PERIODIC_CHECKPOINT.fullmatch(name):
            path = os.path.join(out_dir, name)
            freed += os.path.getsize(path)
            os.remove(path)
    return freed


def run_grid(runs, opts: Sequence[str] = (), *, train_script: str, keep_checkpoints=False,
             **execute_kwargs):
    """``run.execute`` the runs (finished ones skipped; ``execute_kwargs``: resume, jobs,
    num_gpus, stop_timeout, ...), then ``prune`` the finished ones unless
    ``keep_checkpoints``.  Returns the outcomes; ``RunsInterrupted`` as ``execute``."""
    def tidy():
        if not keep_checkpoints:
            freed = sum(prune(r.out_dir) for r in runs)
            if freed:
                logger.info("Deleted the finished runs' periodic checkpoints (%.1f MB; "
                            "model_best.pth and model_final.pth kept).", freed / 2 ** 20)

    try:
        outcomes = execute(runs, opts, train_script=train_script, **execute_kwargs)
    except RunsInterrupted:
        tidy()
        raise
    tidy()
    return outcomes


# ---------------------------------------------------------------------- results
@dataclass
class RunResult:
    recipe: str
    set: int
    seed: int
    status: str                     # "ok", "failed", "interrupted", "missing"
    values: Dict[str, float] = field(default_factory=dict)  # METRICS keys that the run has
    epoch: Optional[int] = None     # the epoch of the selected checkpoint
    checkpoint: str = ""            # the selected checkpoint ("model_best.pth", ...)
    note: str = ""


def _selected(out_dir: str) -> dict:
    import json

    path = os.path.join(out_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f).get("selected") or {}


def collect_grid(rf: RecipeFile, grid: Grid, output: str) -> List[RunResult]:
    """Every planned run's state and numbers: the test metrics (``results.json`` "final") and
    the selection (``results.json`` "selected": checkpoint, epoch, validation mAP)."""
    rows = grid_rows(rf, grid, output)
    out = []
    for row, summary in zip(rows, collect(rows, list(grid.seeds), output)):
        for seed in grid.seeds:
            res = RunResult(row.label, _row_set(row), seed, "missing")
            if seed in summary.metrics:
                res.status = "ok"
                res.values = {k: v for k, v in summary.metrics[seed].items() if k in METRICS}
                sel = _selected(run_dir(output, row, seed))
                res.checkpoint = str(sel.get("checkpoint", ""))
                if sel.get("epoch") is not None:
                    res.epoch = int(sel["epoch"])
                val = sel.get("validation mAP")
                if val is not None and math.isfinite(float(val)):
                    res.values["val_map"] = float(val)
                else:
                    res.note = "no validation mAP in results.json"
            elif seed in summary.failed:
                res.status, res.note = "failed", f"exit {summary.failed[seed]}"
            elif seed in summary.interrupted:
                res.status = "interrupted"
            out.append(res)
    return out


# ---------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stat:
    mean: Optional[float]
    low: Optional[float] = None     # the 95% interval (None with fewer than 2 units)
    high: Optional[float] = None
    units: int = 0                  # how many values the interval is over
    unit: str = "set"               # "set" (per-set means) or "run" (one set: the runs)
    runs: int = 0                   # runs (or pairs of runs) behind the mean

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE):
    """(mean, low, high): the Student-t interval for the mean of ``values`` (n - 1 degrees of
    freedom, sample standard deviation); low = high = None with fewer than two values."""
    values = [float(v) for v in values]
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) \
        / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _stat(by_run: Mapping[Tuple[int, int], float]) -> Stat:
    """``Stat`` of values keyed by (set, seed): over the per-set means with two sets or more,
    else over the runs."""
    if not by_run:
        return Stat(None)
    per_set: Dict[int, List[float]] = {}
    for (s, _), v in sorted(by_run.items()):
        per_set.setdefault(s, []).append(v)
    if len(per_set) > 1:
        units, unit = [statistics.fmean(v) for v in per_set.values()], "set"
    else:
        units, unit = list(next(iter(per_set.values()))), "run"
    mean, low, high = t_interval(units)
    return Stat(mean, low, high, len(units), unit, len(by_run))


def _values(results: Sequence[RunResult], recipe: str, metric: str) -> Dict[Tuple[int, int],
                                                                              float]:
    return {(r.set, r.seed): r.values[metric] for r in results
            if r.recipe == recipe and r.status == "ok" and metric in r.values}


def recipe_stat(results: Sequence[RunResult], recipe: str, metric: str) -> Stat:
    """A recipe's ``metric`` (a key of ``METRICS``) over its finished runs."""
    return _stat(_values(results, recipe, metric))


def paired(results: Sequence[RunResult], a: str, b: str, metric: str) -> Stat:
    """Recipe ``a`` minus recipe ``b`` on the (set, seed) runs both finished."""
    va, vb = _values(results, a, metric), _values(results, b, metric)
    return _stat({k: va[k] - vb[k] for k in va.keys() & vb.keys()})


# ---------------------------------------------------------------------- the decision
@dataclass
class Decision:
    picked: Optional[str]               # the complete recipe with the best validation mAP
    runner_up: Optional[str] = None
    lead: Optional[Stat] = None         # picked - runner-up on validation mAP, paired
    ranking: List[str] = field(default_factory=list)  # complete recipes, best validation first
    incomplete: List[str] = field(default_factory=list)  # recipes with runs not finished


def decide(results: Sequence[RunResult], recipes: Sequence[str]) -> Decision:
    """Pick on validation mAP alone, among the recipes whose every run finished with one."""
    complete, incomplete = [], []
    for name in recipes:
        runs = [r for r in results if r.recipe == name]
        ok = runs and all(r.status == "ok" and "val_map" in r.values for r in runs)
        (complete if ok else incomplete).append(name)
    means = {n: recipe_stat(results, n, "val_map").mean for n in complete}
    ranking = sorted(complete, key=lambda n: -means[n])  # stable: file order breaks ties
    if not ranking:
        return Decision(None, incomplete=incomplete)
    if len(ranking) == 1:
        return Decision(ranking[0], ranking=ranking, incomplete=incomplete)
    lead = paired(results, ranking[0], ranking[1], "val_map")
    return Decision(ranking[0], ranking[1], lead, ranking, incomplete)


def _pairs(recipes: Sequence[str], results: Sequence[RunResult]) -> List[Tuple[str, str]]:
    """Every pair of recipes, the one with the higher mean validation mAP first."""
    val = {n: recipe_stat(results, n, "val_map").mean for n in recipes}
    key = {n: (-val[n] if val[n] is not None else math.inf, i) for i, n in enumerate(recipes)}
    return [tuple(sorted(p, key=key.get)) for p in itertools.combinations(recipes, 2)]


# ---------------------------------------------------------------------- reports
def _fmt(s: Stat, signed: bool = False) -> str:
    if s.mean is None:
        return "-"
    f = "{:+.2f}" if signed else "{:.2f}"
    out = f.format(s.mean)
    if s.low is not None:
        out += f" [{f.format(s.low)}, {f.format(s.high)}]"
    return out


def _interval_note(results: Sequence[RunResult]) -> str:
    sets = sorted({r.set for r in results if r.status == "ok"})
    if len(sets) > 1:
        return (f"[low, high]: 95% Student-t interval over the per-set means (each set's mean "
                f"over its seeds; {len(sets)} sets, {len(sets) - 1} degrees of freedom)")
    return ("[low, high]: 95% Student-t interval over the runs of the one set (seeds only: "
            "it says nothing about other sets)")


def _epochs(results: Sequence[RunResult], recipe: str) -> str:
    epochs = sorted(r.epoch for r in results
                    if r.recipe == recipe and r.status == "ok" and r.epoch is not None)
    if not epochs:
        return "-"
    med = statistics.median(epochs)
    med = int(med) if float(med).is_integer() else med
    return f"{med} ({epochs[0]}-{epochs[-1]})" if epochs[0] != epochs[-1] else str(med)


def _status(results: Sequence[RunResult], recipe: str) -> str:
    runs = [r for r in results if r.recipe == recipe]
    ok = sum(r.status == "ok" for r in runs)
    bad = [f"set {r.set} seed {r.seed}: {r.status}" + (f" ({r.note})" if r.note else "")
           for r in runs if r.status != "ok" or r.note]
    return f"{ok}/{len(runs)}" + (f" ({'; '.join(bad)})" if bad else "")


def markdown_report(results: Sequence[RunResult], rf: RecipeFile, grid: Grid,
                    decision: Optional[Decision] = None) -> str:
    decision = decision or decide(results, [r.name for r in rf.recipes])
    names = [r.name for r in rf.recipes]
    lines = [f"# Recipe decision: {rf.stem}", "",
             f"{len(names)} recipe(s) x {len(grid.sets)} synthetic set(s) (generator seeds "
             f"{', '.join(map(str, grid.sets))}) x {len(grid.seeds)} training seed(s) "
             f"({', '.join(map(str, grid.seeds))}). Validation split: {grid.val_ids} training "
             f"identities held out of each set (DATASETS.VAL.IDS {grid.val_ids}, "
             f"DATASETS.VAL.SEED {grid.val_seed}), evaluated every {grid.eval_period} epoch(s); "
             f"each run's test numbers are those of its checkpoint with the best validation mAP.",
             ""]
    if decision.picked is None:
        lines.append("**No pick**: no recipe has every run finished.")
    else:
        val = recipe_stat(results, decision.picked, "val_map")
        text = f"**Picked on validation mAP: `{decision.picked}`** (validation mAP {_fmt(val)})"
        if decision.runner_up:
            beyond = ("no interval (one run each)" if decision.lead.low is None else
                      "beyond the 95% interval" if decision.lead.excludes_zero else
                      "within the 95% interval: on this evidence a tie")
            test = paired(results, decision.picked, decision.runner_up, "mAP")
            text += (f"; ahead of `{decision.runner_up}` by {_fmt(decision.lead, True)} on the "
                     f"same sets and seeds, {beyond} (on test mAP: {_fmt(test, True)})")
        lines.append(text + ".")
    if decision.incomplete:
        lines.append(f"Not considered (runs missing or failed): "
                     f"{', '.join(f'`{n}`' for n in decision.incomplete)}.")
    lines += ["Test numbers are reported, never used to choose.", "",
              "## Per recipe", "",
              "| recipe | about | runs | val mAP | chosen epoch | test mAP | test Rank-1 | "
              "test mINP |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        about = rf.recipe(name).about.replace("|", "/")
        stats = [_fmt(recipe_stat(results, name, m)) for m in METRICS]
        lines.append(f"| `{name}` | {about} | {_status(results, name)} | {stats[0]} | "
                     f"{_epochs(results, name)} | {' | '.join(stats[1:])} |")
    lines += ["", "Percent; mean " + _interval_note(results) + ". Chosen epoch: median "
              "(range) of the epochs whose checkpoint validation picked.", ""]
    if len(names) > 1:
        lines += ["## Paired differences (same set and seed)", "",
                  "| pair | pairs of runs | val mAP | test mAP | test Rank-1 | interval excludes "
                  "0 |", "|---|---|---|---|---|---|"]
        for a, b in _pairs(names, results):
            stats = {m: paired(results, a, b, m) for m in PAIR_METRICS}
            beyond = [METRICS[m] for m, s in stats.items() if s.excludes_zero]
            lines.append(f"| `{a}` - `{b}` | {stats['val_map'].runs} | "
                         + " | ".join(_fmt(stats[m], True) for m in PAIR_METRICS)
                         + f" | {', '.join(beyond) or 'none'} |")
        lines += ["", "Mean difference " + _interval_note(results).replace(
            "per-set means (each set's mean", "per-set mean differences (each set's mean") + ".",
            ""]
    lines += ["## Per set (mean over seeds): val mAP / test mAP", "",
              "| recipe | " + " | ".join(f"set {s}" for s in grid.sets) + " |",
              "|---|" + "---|" * len(grid.sets)]
    for name in names:
        cells = []
        for s in grid.sets:
            runs = [r for r in results if r.recipe == name and r.set == s and r.status == "ok"]
            val = [r.values["val_map"] for r in runs if "val_map" in r.values]
            test = [r.values["mAP"] for r in runs if "mAP" in r.values]
            cells.append(" / ".join(f"{statistics.fmean(v):.2f}" if v else "-"
                                    for v in (val, test)))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "" if v is None else repr(float(v))


def write_decision(results: Sequence[RunResult], rf: RecipeFile, grid: Grid, output: str,
                   stem: str = "decision") -> Dict[str, str]:
    """``<output>/<stem>.md`` (the report), ``<stem>_recipes.csv`` (per recipe and metric: mean,
    interval), ``<stem>_pairs.csv`` (per pair and metric: mean difference, interval, whether it
    excludes 0) and ``<stem>_runs.csv`` (every run); returns their paths and the markdown under
    "markdown" and the ``Decision`` under "decision"."""
    os.makedirs(output, exist_ok=True)
    names = [r.name for r in rf.recipes]
    decision = decide(results, names)
    paths = {k: os.path.join(output, f"{stem}{suffix}") for k, suffix in (
        ("md", ".md"), ("recipes", "_recipes.csv"), ("pairs", "_pairs.csv"),
        ("runs", "_runs.csv"))}
    text = markdown_report(results, rf, grid, decision)
    with open(paths["md"], "w") as f:
        f.write(text)
    with open(paths["recipes"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "about", "picked", "metric", "mean", "low", "high", "units",
                    "unit", "runs", "planned_runs"])
        for name in names:
            planned = sum(r.recipe == name for r in results)
            for m in METRICS:
                s = recipe_stat(results, name, m)
                w.writerow([name, rf.recipe(name).about, name == decision.picked, METRICS[m],
                            _num(s.mean), _num(s.low), _num(s.high), s.units, s.unit, s.runs,
                            planned])
    with open(paths["pairs"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "metric", "mean_difference", "low", "high", "excludes_zero",
                    "units", "unit", "pairs"])
        for a, b in _pairs(names, results) if len(names) > 1 else []:
            for m in PAIR_METRICS:
                s = paired(results, a, b, m)
                w.writerow([a, b, METRICS[m], _num(s.mean), _num(s.low), _num(s.high),
                            s.excludes_zero, s.units, s.unit, s.runs])
    with open(paths["runs"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "set", "seed", "status", "checkpoint", "epoch",
                    *RUNS_CSV_METRICS, "note"])
        for r in results:
            w.writerow([r.recipe, r.set, r.seed, r.status, r.checkpoint,
                        "" if r.epoch is None else r.epoch,
                        *(_num(r.values.get(k)) for k in RUNS_CSV_METRICS.values()),
                        r.note])
    return dict(paths, markdown=text, decision=decision)


def with_overrides(grid: Grid, **changes) -> Grid:
    """``grid`` with the given fields replaced (those that are not None), checked."""
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items()
               if v is not None}
    return replace(grid, **changes).checked("the command line")
