"""The package's layout: one room per concern, imports only downwards, every default in
config.py, one listing of the training set per start-up."""
import ast
import os
import re

import pytest

from conftest import gltrans_small_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "gltrans_plugin")

# Rooms from the bottom up: a room may import only rooms of a lower level.
LEVELS = {
    "errors": 0,
    "checkpoint": 1, "config": 1, "distributed": 1, "evaluation": 1,
    "compat": 2,
    "data": 3, "modeling": 3,
    "checks": 4,
    "engine": 5,
    "distill": 6, "export": 6,
    "analysis": 7, "extractor": 7,
    "__init__": 8,
    "reproduce": 9, "search": 9,
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


def test_old_rooms_are_gone_and_every_module_says_what_it_is_for():
    assert not os.path.exists(os.path.join(PKG, "reliability.py"))
    assert not os.path.exists(os.path.join(PKG, "tools_lib"))
    for path in _modules():
        doc = ast.get_docstring(ast.parse(open(path).read()))
        assert doc and doc.split("\n")[0].strip(), f"{path}: no opening docstring"


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


@pytest.mark.parametrize("old,new", [("fast", "ChunkedReidEvaluator")])
def test_old_evaluator_name_still_works_with_a_warning(old, new, caplog, tmp_path):
    from gltrans_plugin.engine import Trainer

    cfg = gltrans_small_cfg(str(tmp_path / "data"), str(tmp_path / "out"), **{
        "TEST.EVALUATOR": old, "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 4,
        "DATASETS.SYNTHETIC.NUM_TEST_IDS": 4})
    with caplog.at_level("WARNING", logger="gltrans_plugin.engine"):
        _, evaluator = Trainer.build_evaluator(cfg, "SyntheticReID")
    assert type(evaluator).__name__ == new
    assert f"TEST.EVALUATOR '{old}' is deprecated" in caplog.text and "'chunked'" in caplog.text
    cfg.TEST.EVALUATOR = "nope"
    with pytest.raises(ValueError, match="TEST.EVALUATOR 'nope': use 'chunked'"):
        Trainer.build_evaluator(cfg, "SyntheticReID")
