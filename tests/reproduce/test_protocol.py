"""tools/decide_recipe.py and gltrans_plugin/reproduce/protocol.py: the recipe file, the grid
(recipes x synthetic sets x seeds, one folder and one config per run, resume), the statistics
against scipy / numpy, the choice on validation only, the report files.

The grid runs a fake training script (writes results.json with given numbers), so nothing
trains, except one 1-epoch run on a tiny synthetic set (marked slow).
"""
import csv
import json
import os
import sys

import numpy as np
import pytest
import scipy.stats

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.config import setup_cfg
from gltrans_plugin.reproduce import protocol as pr
from gltrans_plugin.reproduce.plan import preset_opts, to_opts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import decide_recipe as tool  # noqa: E402

DEMO_RECIPES = os.path.join(REPO, "configs", "GLTrans", "protocol", "demo_recipes.yml")
DEMO = os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml")

# A stand-in for projects/train_net.py: the numbers of run <recipe>/set<k>/seed<s> come from
# a table (json), a run listed under "fail" exits 1; it records its command line and leaves a
# periodic checkpoint beside model_best.pth, as a training with a validation split does.
FAKE_TRAIN = '''
import json, os, sys
args = sys.argv[1:]
out, seed = args[args.index("OUTPUT_DIR") + 1], int(args[args.index("SEED") + 1])
table = json.load(open({table!r}))
key = os.path.relpath(out, table["output"]).replace(os.sep, "/")
os.makedirs(out, exist_ok=True)
json.dump(args, open(os.path.join(out, "argv.json"), "w"))
if key in table["fail"]:
    sys.exit("fake failure")
val, test_map, rank1 = table["runs"][key]
for name in ("model_0003.pth", "model_best.pth", "model_final.pth"):
    open(os.path.join(out, name), "wb").write(b"x" * 10)
json.dump({{"final": {{"SyntheticReID": {{"Rank-1": rank1, "mAP": test_map, "mINP": 1.0}}}},
           "before": None, "iteration": 10,
           "selected": {{"checkpoint": "model_best.pth", "epoch": 4 * (seed + 1),
                         "validation mAP": val}}}}, open(os.path.join(out, "results.json"), "w"))
'''

SETS, SEEDS = (1, 2, 3), (0, 1, 2)
# "hard" is best on test but worse than "demo" on validation; "broken" is best on validation
# but one of its runs fails; "weak" is worse on both
RECIPES = ("demo", "hard", "weak", "broken")


def _table():
    rng = np.random.default_rng(0)
    runs = {}
    for s in SETS:
        for seed in SEEDS:
            val = 40.0 + 3 * s + rng.normal(0, 1)
            test = 30.0 + 2 * s + rng.normal(0, 1)
            offsets = {"demo": (0, 0), "hard": (-2 + rng.normal(0, 0.5), 6 + rng.normal(0, 2)),
                       "weak": (-4 + rng.normal(0, 1), -1 + rng.normal(0, 2)),
                       "broken": (20, 0)}
            for r, (dv, dt) in offsets.items():
                runs[f"{r}/set{s}/seed{seed}"] = [val + dv, test + dt, test + dt + 10]
    return runs


def _recipe_file(path, recipes=RECIPES, **top):
    import yaml

    data = dict(config=os.path.relpath(DEMO, os.path.dirname(path)), preset="cpu",
                sets=list(SETS), seeds=list(SEEDS), val_ids=12, val_seed=5, eval_period=4)
    data.update(top)
    data["recipes"] = [{"name": r, "about": f"recipe {r}",
                        "opts": {"SOLVER.BASE_LR": 0.001 * (i + 1)}} for i, r in enumerate(recipes)]
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


@pytest.fixture(scope="module")
def fake_grid(tmp_path_factory):
    """The 4 recipes x 3 sets x 3 seeds grid run once with the fake training script."""
    tmp = tmp_path_factory.mktemp("grid")
    out = str(tmp / "out")
    table = {"output": out, "runs": _table(), "fail": ["broken/set2/seed1"]}
    with open(tmp / "table.json", "w") as f:
        json.dump(table, f)
    script = tmp / "fake_train.py"
    script.write_text(FAKE_TRAIN.format(table=str(tmp / "table.json")))
    recipes = _recipe_file(tmp / "recipes.yml")
    argv = [recipes, "--output", out, "--jobs", "4", "--train-script", str(script),
            "DATALOADER.NUM_WORKERS", "0"]
    return dict(argv=argv, out=out, table=table, result=tool.main(argv), recipes=recipes)


# ---------------------------------------------------------------------- the plan
def test_shipped_recipes_plan_every_set_seed_and_recipe_with_its_own_folder_and_keys(tmp_path):
    rf = pr.read_recipes(DEMO_RECIPES, tool.PRESETS)
    assert [r.name for r in rf.recipes] == ["demo", "paper_triplet", "vit_baseline"]
    g = rf.grid
    assert (g.sets, g.seeds, g.val_ids, g.eval_period) == ((1, 2, 3), (0, 1, 2), 12, 4)
    pr.check_recipes(rf, g)  # every recipe builds; the demo's own set (seed 0) is not a set
    out = str(tmp_path / "out")
    rows, runs = pr.plan_grid(rf, g, out)
    assert len(runs) == 27 and len({r.out_dir for r in runs}) == 27
    # seed by seed, then set by set, then recipe by recipe
    assert [(r.seed, r.row.name) for r in runs[:4]] == [
        (0, "demo/set1"), (0, "paper_triplet/set1"), (0, "vit_baseline/set1"), (0, "demo/set2")]
    assert runs[-1].out_dir == os.path.join(out, "vit_baseline", "set3", "seed2")
    roots = {}
    for row in rows:
        recipe = rf.recipe(row.label)
        s = int(row.name[-1])
        cfg = setup_cfg(row.config)
        # the written config is the recipe's config + preset + opts + the protocol's keys
        expected = setup_cfg(recipe.config, preset_opts(recipe.preset) + to_opts(dict(
            recipe.opts)) + ["DATASETS.ROOT", os.path.join(out, "data", f"set{s}"),
                             "DATASETS.SYNTHETIC.SEED", str(s), "DATASETS.VAL.IDS", "12",
                             "DATASETS.VAL.SEED", "0", "TEST.EVAL_PERIOD", "4",
                             "SOLVER.CHECKPOINT_PERIOD", "4"])
        assert cfg == expected, row.name
        roots.setdefault(s, set()).add(cfg.DATASETS.ROOT)
        if row.label == "paper_triplet":
            assert cfg.MODEL.LOSSES.TRI.HARD_MINING and cfg.MODEL.HEADS.NECK_FEAT == "before"
        if row.label == "vit_baseline":
            assert tuple(cfg.MODEL.GLTRANS.BRANCHES) == ("cls",)
            assert cfg.MODEL.BACKBONE.DEPTH == "tiny" and cfg.SOLVER.OPT == "Adam"
    # one data folder per set, shared by the recipes
    assert all(len(v) == 1 for v in roots.values()) and len(set.union(*roots.values())) == 3


def _leaves(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.dirname(DEMO_RECIPES))
                                        if n.endswith(".yml")))
def test_every_shipped_recipe_file_builds_and_each_recipe_changes_what_it_names(name):
    """Every recipe of every file in configs/GLTrans/protocol builds; a recipe that starts from
    the file's own config differs from the first recipe in exactly the keys of its opts."""
    rf = pr.read_recipes(os.path.join(os.path.dirname(DEMO_RECIPES), name), tool.PRESETS)
    assert len(rf.grid.sets) >= 3 and len(rf.grid.seeds) >= 3 and 0 not in rf.grid.sets
    pr.check_recipes(rf, rf.grid)
    first = rf.recipes[0]
    base = _leaves(setup_cfg(first.config, preset_opts(first.preset) + to_opts(dict(first.opts))))
    for r in rf.recipes[1:]:
        if r.config != first.config:
            continue
        cfg = _leaves(setup_cfg(r.config, preset_opts(r.preset) + to_opts(dict(r.opts))))
        changed = {k for k in base if cfg[k] != base[k]}
        own, firsts = dict(r.opts), dict(first.opts)  # both hold the file's common opts
        assert changed == {k for k in own if own[k] != firsts.get(k)}, (r.name, changed)


def test_file_opts_apply_to_every_recipe_before_its_own(tmp_path):
    """Top-level ``opts`` pin keys for every recipe (a grid kept on the recipe it ran with);
    a recipe's own opts win."""
    path = tmp_path / "r.yml"
    path.write_text(f"config: {DEMO}\nval_ids: 2\nopts: {{SOLVER.WARMUP_EPOCHS: 1, SOLVER: "
                    f"{{BASE_LR: 0.01}}}}\nrecipes:\n  - {{name: a}}\n"
                    f"  - {{name: b, opts: {{SOLVER.WARMUP_EPOCHS: 5}}}}\n")
    a, b = pr.read_recipes(str(path)).recipes
    assert dict(a.opts) == {"SOLVER.WARMUP_EPOCHS": 1, "SOLVER.BASE_LR": 0.01}
    assert dict(b.opts) == {"SOLVER.WARMUP_EPOCHS": 5, "SOLVER.BASE_LR": 0.01}


def test_recipe_file_and_grid_errors_name_the_problem(tmp_path):
    path = _recipe_file(tmp_path / "r.yml", sets=[0, 1])
    rf = pr.read_recipes(path, tool.PRESETS)
    with pytest.raises(pr.ProtocolError, match=r"set 0 is the one recipe 'demo'.*remove 0"):
        pr.check_recipes(rf, rf.grid)
    with pytest.raises(pr.ProtocolError, match=r"DATASETS.VAL.IDS is set per run by the protocol"
                                               r".*--val-ids"):
        pr.check_recipes(rf, rf.grid, ["DATASETS.VAL.IDS", "3"])
    with pytest.raises(pr.ProtocolError, match="val_ids 0"):
        pr.with_overrides(rf.grid, val_ids=0)
    bad = tmp_path / "bad.yml"
    bad.write_text("config: ../nowhere.yml\nrecipes:\n  - {name: a, opts: {TEST.EVAL_PERIOD: 2}}\n")
    with pytest.raises(pr.ProtocolError, match=r"TEST.EVAL_PERIOD is set per run .*recipe 'a'"):
        pr.read_recipes(str(bad))
    bad.write_text(f"config: {DEMO}\nval_ids: 2\nopts: {{DATASETS.VAL.IDS: 3}}\n"
                   f"recipes:\n  - {{name: a}}\n")  # the file's common opts: checked the same
    with pytest.raises(pr.ProtocolError, match=r"DATASETS.VAL.IDS is set per run"):
        pr.read_recipes(str(bad))
    bad.write_text(f"config: {DEMO}\nval_ids: 2\nopts: [1]\nrecipes:\n  - {{name: a}}\n")
    with pytest.raises(pr.ProtocolError, match=r"opts is not a mapping .*bad.yml.*KEY: value"):
        pr.read_recipes(str(bad))
    bad.write_text(f"config: {DEMO}\nrecipes:\n  - {{name: a, opts: {{MODEL.NO_SUCH: 1}}}}\n")
    with pytest.raises(pr.ProtocolError, match="val_ids 0: the protocol selects on a validation"):
        pr.read_recipes(str(bad))  # no val_ids
    bad.write_text(f"config: {DEMO}\nval_ids: [2]\nrecipes:\n  - {{name: a}}\n")
    with pytest.raises(pr.ProtocolError, match=r"val_ids \[2\]: not an integer .*val_ids: 4"):
        pr.read_recipes(str(bad))
    bad.write_text(f"config: {DEMO}\nval_ids: 2\n"
                   f"recipes:\n  - {{name: a, opts: {{MODEL.NO_SUCH: 1}}}}\n")
    with pytest.raises(pr.ProtocolError, match=r"recipe 'a' does not build a config.*NO_SUCH"):
        pr.check_recipes(pr.read_recipes(str(bad)), pr.Grid((1,), (0,), 2))
    bad.write_text(f"config: {DEMO}\nrecipes:\n  - {{name: data}}\n")
    with pytest.raises(pr.ProtocolError, match="not a new folder name"):
        pr.read_recipes(str(bad))


def test_command_line_sets_seeds_and_trailing_options():
    a = tool.parse_args(["r.yml", "--sets", "4", "5", "MODEL.DEVICE", "cuda", "--jobs", "2",
                         "SOLVER.MAX_EPOCH", "1", "--seeds", "0", "1"])
    assert (a.recipes, a.sets, a.seeds, a.jobs) == ("r.yml", [4, 5], [0, 1], 2)
    assert a.opts == ["MODEL.DEVICE", "cuda", "SOLVER.MAX_EPOCH", "1"]
    assert a.output == os.path.join("logs", "protocol", "r")
    # (its --help as a program: tests/tools/test_tools.py::test_every_tool_has_help)


# ---------------------------------------------------------------------- the fake grid
def test_grid_runs_each_set_seed_recipe_in_its_folder_with_its_config(fake_grid):
    res, out = fake_grid["result"], fake_grid["out"]
    assert res["returncode"] == 1  # the one failed run
    assert sorted(o.status for o in res["outcomes"]) == ["failed"] + ["ok"] * 35
    for r in RECIPES:
        for s in SETS:
            for seed in SEEDS:
                d = os.path.join(out, r, f"set{s}", f"seed{seed}")
                argv = json.load(open(os.path.join(d, "argv.json")))
                assert argv[:2] == ["--config-file", os.path.join(out, r, f"set{s}",
                                                                  "recipe.yml")]
                assert argv[2:] == ["OUTPUT_DIR", d, "SEED", str(seed),
                                    "DATALOADER.NUM_WORKERS", "0"]
                if f"{r}/set{s}/seed{seed}" not in fake_grid["table"]["fail"]:
                    # the periodic checkpoint is deleted, the tested and the final ones stay
                    assert sorted(n for n in os.listdir(d) if n.endswith(".pth")) == [
                        "model_best.pth", "model_final.pth"]
    cfg = setup_cfg(os.path.join(out, "hard", "set2", "recipe.yml"))
    assert (cfg.DATASETS.SYNTHETIC.SEED, cfg.DATASETS.VAL.IDS, cfg.DATASETS.VAL.SEED) == (2, 12, 5)
    assert cfg.DATASETS.ROOT == os.path.join(out, "data", "set2") and cfg.SOLVER.BASE_LR == 0.002


def test_rerun_skips_finished_runs_and_a_changed_recipe_is_refused(fake_grid, tmp_path):
    out = fake_grid["out"]
    again = tool.main(fake_grid["argv"])
    assert sorted(o.status for o in again["outcomes"]) == ["failed"] + ["skipped"] * 35
    os.remove(os.path.join(out, "weak", "set3", "seed0", "results.json"))
    again = tool.main(fake_grid["argv"])
    ran = [o.run.title for o in again["outcomes"] if o.status != "skipped"]
    assert sorted(ran) == ["broken/set2 seed 1", "weak/set3 seed 0"]
    changed = _recipe_file(tmp_path / "recipes.yml", RECIPES[:1])  # demo's BASE_LR unchanged
    tool.main([changed] + fake_grid["argv"][1:] + ["--dry-run"])
    rf = pr.read_recipes(changed, tool.PRESETS)
    rf = pr.RecipeFile(rf.path, (pr.Recipe("demo", "", DEMO, None, (("SOLVER.BASE_LR", 0.1),)),),
                       rf.grid)
    with pytest.raises(pr.ProtocolError, match=r"recipe 'demo' changed since its runs seed0, "
                                               r"seed1, seed2 .*another --output"):
        pr.plan_grid(rf, rf.grid, out)


def _per_set(runs, recipe, metric_index):
    return np.array([[runs[f"{recipe}/set{s}/seed{seed}"][metric_index] for seed in SEEDS]
                     for s in SETS])


def _t95(units):
    units = np.asarray(units, float)
    low, high = scipy.stats.t.interval(0.95, len(units) - 1, loc=units.mean(),
                                       scale=scipy.stats.sem(units))
    return units.mean(), low, high


def test_statistics_match_scipy_over_the_per_set_means(fake_grid):
    runs, out = fake_grid["table"]["runs"], fake_grid["out"]
    rows = list(csv.DictReader(open(os.path.join(out, "decision_recipes.csv"))))
    got = {(r["recipe"], r["metric"]): r for r in rows}
    for recipe in ("demo", "hard", "weak"):
        for name, i in (("val mAP", 0), ("test mAP", 1), ("test Rank-1", 2)):
            mean, low, high = _t95(_per_set(runs, recipe, i).mean(axis=1))
            row = got[(recipe, name)]
            assert float(row["mean"]) == pytest.approx(mean, abs=1e-9)
            assert (float(row["low"]), float(row["high"])) == pytest.approx((low, high), abs=1e-9)
            assert (row["units"], row["unit"], row["runs"]) == ("3", "set", "9")
    # the failed run: 8 runs, set 2's mean over its 2 seeds
    broken = _per_set(runs, "broken", 0)
    units = [broken[0].mean(), broken[1][[0, 2]].mean(), broken[2].mean()]
    assert float(got[("broken", "val mAP")]["mean"]) == pytest.approx(np.mean(units), abs=1e-9)
    assert got[("broken", "val mAP")]["runs"] == "8"
    # paired differences: per (set, seed), averaged per set, t over the sets
    pairs = {(r["a"], r["b"], r["metric"]): r for r in
             csv.DictReader(open(os.path.join(out, "decision_pairs.csv")))}
    for a, b in (("demo", "hard"), ("demo", "weak"), ("hard", "weak")):
        for name, i in (("val mAP", 0), ("test mAP", 1)):
            diff = (_per_set(runs, a, i) - _per_set(runs, b, i)).mean(axis=1)
            if (a, b, name) not in pairs:  # each pair: the better one on validation first
                a, b, diff = b, a, -diff
            mean, low, high = _t95(diff)
            row = pairs[(a, b, name)]
            assert float(row["mean_difference"]) == pytest.approx(mean, abs=1e-9)
            assert (float(row["low"]), float(row["high"])) == pytest.approx((low, high), abs=1e-9)
            assert row["excludes_zero"] == str(bool(low > 0 or high < 0))
    # hard is 6 mAP better on test, beyond the interval; worse on validation
    assert pairs[("demo", "hard", "test mAP")]["excludes_zero"] == "True"
    assert float(pairs[("demo", "hard", "test mAP")]["mean_difference"]) < -4
    assert pairs[("broken", "demo", "val mAP")]["pairs"] == "8"


def test_t_interval_against_a_textbook_value_and_one_set():
    mean, low, high = pr.t_interval([1.0, 2.0, 3.0])
    # t(0.975, 2 df) = 4.302653; sd 1; half width 4.302653 / sqrt(3)
    assert (mean, low, high) == pytest.approx((2.0, 2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert pr.t_interval([5.0]) == (5.0, None, None)
    # one set: the interval is over its runs
    results = [pr.RunResult("a", 1, s, "ok", {"mAP": v}) for s, v in enumerate([1.0, 2.0, 3.0])]
    st = pr.recipe_stat(results, "a", "mAP")
    assert (st.unit, st.units, st.runs) == ("run", 3, 3) and st.low == pytest.approx(low)


def test_the_pick_is_decided_on_validation_only(fake_grid):
    d = fake_grid["result"]["decision"]
    # "hard" leads on test by ~6 mAP but trails on validation; "broken" leads on validation
    # but a run failed: not considered
    assert d.picked == "demo" and d.runner_up == "hard" and d.incomplete == ["broken"]
    assert d.ranking == ["demo", "hard", "weak"]
    assert d.lead.mean > 0
    # the same validation numbers with any test numbers give the same pick
    results = fake_grid["result"]["results"]
    flipped = [pr.RunResult(r.recipe, r.set, r.seed, r.status,
                            dict(r.values, **{"mAP": -r.values.get("mAP", 0)}))
               for r in results]
    assert pr.decide(flipped, RECIPES).picked == "demo"
    worse = [pr.RunResult(r.recipe, r.set, r.seed, r.status,
                          dict(r.values, val_map=r.values.get("val_map", 0) - 5 * (
                              r.recipe == "demo")))
             for r in results]
    assert pr.decide(worse, RECIPES).picked != "demo"


def test_report_files(fake_grid):
    paths, out = fake_grid["result"]["paths"], fake_grid["out"]
    md = open(paths["md"]).read()
    assert md == paths["markdown"]
    assert "**Picked on validation mAP: `demo`**" in md and "ahead of `hard` by +" in md
    assert "Not considered (runs missing or failed): `broken`." in md
    assert "set 2 seed 1: failed (exit 1)" in md
    assert "4 recipe(s) x 3 synthetic set(s) (generator seeds 1, 2, 3) x 3 training seed(s)" in md
    assert "DATASETS.VAL.IDS 12, DATASETS.VAL.SEED 5" in md
    assert "| `demo` - `hard` | 9 |" in md
    assert "Student-t interval over the per-set means" in md
    runs = list(csv.DictReader(open(os.path.join(out, "decision_runs.csv"))))
    assert len(runs) == 36 and sum(r["status"] == "failed" for r in runs) == 1
    one = next(r for r in runs if (r["recipe"], r["set"], r["seed"]) == ("hard", "2", "1"))
    val, test, rank1 = fake_grid["table"]["runs"]["hard/set2/seed1"]
    assert (float(one["val_map"]), float(one["test_map"]), float(one["test_rank1"])) == (
        val, test, rank1)
    assert (one["checkpoint"], one["epoch"]) == ("model_best.pth", "8")
    again = tool.main(fake_grid["argv"][:3] + ["--collect-only"])
    assert again["paths"]["markdown"] == md


# ---------------------------------------------------------------------- one real run
@pytest.mark.slow
def test_one_real_epoch_on_a_tiny_set_is_selected_and_reported(tmp_path):
    import yaml

    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(dict(
        config=DEMO, preset="cpu", sets=[7], seeds=[0], val_ids=2, eval_period=1,
        recipes=[dict(name="demo", about="the demo recipe")])))
    out = str(tmp_path / "out")
    res = tool.main([str(path), "--output", out, "SOLVER.MAX_EPOCH", "1",
                     "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "8",
                     "DATASETS.SYNTHETIC.NUM_TEST_IDS", "4", "DATASETS.SYNTHETIC.NUM_CAMERAS",
                     "3", "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM", "2",
                     "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16",
                     "TEST.IMS_PER_BATCH", "32"])
    assert res["returncode"] == 0, [o.tail for o in res["outcomes"]]
    (r,) = res["results"]
    assert r.status == "ok" and r.checkpoint == "model_best.pth" and r.epoch == 1
    assert set(pr.METRICS) <= set(r.values)
    assert os.path.isfile(os.path.join(out, "data", "set7", "synthetic_reid", "manifest.json"))
    assert res["decision"].picked == "demo"


# every published grid: its runs (docs/protocol_<grid>_runs.csv, the tool's decision_runs.csv),
# the page with its tables, and the paired differences (a - b) that page quotes
_PUBLISHED = {
    "demo_recipes": ("training.md", [("demo", "paper_triplet"), ("demo", "vit_baseline"),
                                     ("paper_triplet", "vit_baseline")]),
    "demo_schedule": ("training.md", [("warmup_5", "demo"), ("demo", "lr_2e-3"),
                                      ("demo", "lr_5e-4")]),
    "demo_model": ("training.md", [("no_erasing", "demo"), ("demo", "drop_path_0.1"),
                                   ("demo", "stride_12")]),
    "demo_ties": ("training.md", [("warmup_5", "demo"), ("no_erasing", "demo"),
                                  ("warmup_5_no_erasing", "demo"),
                                  ("warmup_5_no_erasing", "warmup_5"),
                                  ("warmup_5_no_erasing", "no_erasing")]),
    "baseline_recipes": ("training.md", [("paper_triplet", "demo")]),
    "demo_vs_baseline": ("training.md", [("demo", "demo_before"), ("demo", "vit_baseline"),
                                         ("demo_before", "vit_baseline")]),
    "table5": ("reproducing.md", [("model2", "model1"), ("model3", "model2"),
                                  ("model4", "model3"), ("model5", "model4"),
                                  ("model5", "model1")]),
}


@pytest.mark.parametrize("grid", sorted(_PUBLISHED))
def test_published_tables_are_their_runs(grid):
    """The docs' tables are what the tool computes from the committed runs: each recipe's mean
    and interval per metric, and each quoted paired difference, formatted as the report does."""
    page, pairs = _PUBLISHED[grid]
    text = open(os.path.join(REPO, "docs", page)).read().replace("**", "")
    results = []
    for row in csv.DictReader(open(os.path.join(REPO, "docs", f"protocol_{grid}_runs.csv"))):
        assert row["status"] == "ok", row
        results.append(pr.RunResult(row["recipe"], int(row["set"]), int(row["seed"]), "ok", {
            key: float(row[col]) for col, key in pr.RUNS_CSV_METRICS.items()}))
    recipes = sorted({r.recipe for r in results})
    assert len(results) == 9 * len(recipes)  # 3 sets x 3 seeds each
    for recipe in recipes:
        for metric in pr.METRICS:
            s = pr._fmt(pr.recipe_stat(results, recipe, metric))
            assert s in text, (grid, recipe, metric, s)
    for a, b in pairs:
        for metric in ("val_map", "mAP"):
            s = pr._fmt(pr.paired(results, a, b, metric), signed=True)
            assert s in text, (grid, a, b, metric, s)
