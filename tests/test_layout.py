"""The package's layout: one room per concern, imports only downwards, every default in
config.py, one listing of the training set per start-up."""
import ast
import os
import re

import pytest

from helpers import gltrans_small_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "gltrans_plugin")

# Rooms from the bottom up: a room may import only rooms of a lower level (docs/layout.md).
LEVELS = {
    "errors": 0, "devices": 0, "cli": 0, "compat": 0,
    "checkpoint": 1, "config": 1, "solver": 1,
    "distributed": 2, "evaluation": 2,
    "data": 3, "modeling": 3,
    "checks": 4, "card": 4,
    "loading": 5, "engine": 5,
    "distill": 6, "export": 6, "patches": 6,
    "analysis": 7, "extractor": 7,
    "tracking": 8,
    "__init__": 9,
    "reproduce": 10, "search": 10,
}


def _modules():
    for d, _, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(d, f)


def _room(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path):
    """(module name, [gltrans_plugin modules it imports, anywhere in the file])."""
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    is_pkg = rel.endswith(".__init__")
    mod = rel[:-len(".__init__")] if is_pkg else rel
    pkg = mod if is_pkg else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return mod, [t for t in out if t.split(".")[0] == "gltrans_plugin"]


def test_every_room_is_known_and_imports_only_downwards():
    bad = []
    for path in _modules():
        mod, targets = _imports(path)
        room = _room(mod)
        assert room in LEVELS, f"{mod}: room {room!r} has no level in this test"
        for t in targets:
            other = _room(t)
            if other != room and LEVELS[other] >= LEVELS[room]:
                bad.append(f"{mod} imports {t}")
    assert bad == []


def test_every_module_says_what_it_is_for():
    for path in _modules():
        doc = ast.get_docstring(ast.parse(open(path).read()))
        assert doc and doc.split("\n")[0].strip(), f"{path}: no opening docstring"


def _decorated_with(path, name):
    tree = ast.parse(open(path).read())
    return [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
            and any(getattr(d, "id", getattr(d, "attr", None)) == name for d in n.decorator_list)]


def test_every_runtime_patch_lives_in_patches_and_compat_patches_nothing():
    import gltrans_plugin
    from gltrans_plugin import compat

    outside = {}
    for path in _modules():
        rel = os.path.relpath(path, PKG)
        found = _decorated_with(path, "fix")
        if found and not rel.startswith("patches" + os.sep):
            outside[rel] = found
    assert outside == {}
    in_patches = sum(len(_decorated_with(p, "fix")) for p in _modules()
                     if os.path.relpath(p, PKG).startswith("patches" + os.sep))
    assert in_patches == len(compat.APPLIED) == len(set(compat.APPLIED))
    assert gltrans_plugin.compat is compat
    _, targets = _imports(os.path.join(PKG, "compat.py"))
    assert targets == []  # compat: import shims and the registry only


def test_loading_and_the_tools_never_import_the_trainer():
    """Using a trained model (loading, the extractor, the distiller, export, the tools) never
    imports the training room; only projects/train_net.py and the tests do."""
    trainers = {"gltrans_plugin.engine", "gltrans_plugin.engine.trainer"}
    bad = []
    for path in _modules():
        mod, targets = _imports(path)
        if _room(mod) != "engine" and trainers & {t.rsplit(".", 1)[0] if t.endswith(
                (".Trainer",)) else t for t in targets}:
            bad.append(mod)
    for d, _, files in os.walk(os.path.join(REPO, "tools")):
        for f in files:
            if f.endswith(".py") and "gltrans_plugin.engine" in open(os.path.join(d, f)).read():
                bad.append(f)
    assert bad == []


def test_no_config_fallbacks_and_no_pointers_outside_the_repository():
    declared_fallback = re.compile(r"\bcfg(\.[A-Z_]+)*\.get\(")
    outside = re.compile(r"SPEC\.md|SPEC section|\bissue \d+|\(issue|#\d{1,3}\b(?! ?\d)")
    hits = []
    for folder in ("gltrans_plugin", "tools", "projects", "bench", "tests"):
        for d, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                if not f.endswith(".py") or f == "test_layout.py":
                    continue
                path = os.path.join(d, f)
                for n, line in enumerate(open(path), 1):
                    if folder == "gltrans_plugin" and declared_fallback.search(line):
                        hits.append(f"{path}:{n}: {line.strip()}")
                    if outside.search(line) and "noqa" not in line:
                        hits.append(f"{path}:{n}: {line.strip()}")
    assert hits == []


def test_start_up_lists_the_training_set_once(tmp_path, monkeypatch):
    """Train loader, the camera count (NUM_CAMERAS 0) and the set-up checks share one listing;
    the test set is listed once too, not again at the evaluation."""
    from fastreid.data.datasets.market1501 import Market1501

    from gltrans_plugin.engine import Trainer

    listed = []
    original = Market1501.process_dir

    def counting(self, dir_path, *args, **kwargs):
        listed.append(os.path.basename(dir_path))
        return original(self, dir_path, *args, **kwargs)

    monkeypatch.setattr(Market1501, "process_dir", counting)
    cfg = gltrans_small_cfg(str(tmp_path / "data"), str(tmp_path / "out"), **{
        "MODEL.BACKBONE.NUM_CAMERAS": 0, "SOLVER.MAX_EPOCH": 1,
        "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 4, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 4})
    trainer = Trainer(cfg)
    try:
        assert trainer.cfg.MODEL.BACKBONE.NUM_CAMERAS == 3  # filled from the training data
        Trainer.build_test_loader(trainer.cfg, "SyntheticReID")
    finally:
        trainer.stop_train_stream()
    assert sorted(listed) == ["bounding_box_test", "bounding_box_train", "query"]


def test_evaluator_names(tmp_path):
    from fastreid.evaluation import ReidEvaluator

    from gltrans_plugin.engine import Trainer
    from gltrans_plugin.evaluation import ChunkedReidEvaluator

    cfg = gltrans_small_cfg(str(tmp_path / "data"), str(tmp_path / "out"), **{
        "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 4, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 4})
    for name, cls in (("chunked", ChunkedReidEvaluator), ("fastreid", ReidEvaluator)):
        cfg.TEST.EVALUATOR = name
        assert type(Trainer.build_evaluator(cfg, "SyntheticReID")[1]) is cls
    for name in ("nope", "fast"):  # "fast" was an old name of "chunked"
        cfg.TEST.EVALUATOR = name
        with pytest.raises(ValueError, match=f"TEST.EVALUATOR '{name}': use 'chunked'"):
            Trainer.build_evaluator(cfg, "SyntheticReID")
