"""The validation split (DATASETS.VAL.*): identities held out of training, a query / gallery by
camera, evaluated every period instead of the test sets, model_best chosen on it, the test sets
evaluated once at the end with that checkpoint."""
import json

import pytest

import gltrans_plugin  # noqa: F401
from gltrans_plugin.data.validation import ValidationError, split_validation

from helpers import resnet_cfg


def _items(ids=10, cams=3, per_cam=2):
    return [(f"/d/{p:03d}_c{c}_{k}.jpg", f"set_{p}", f"set_{c}")
            for p in range(ids) for c in range(cams) for k in range(per_cam)]


def test_split_is_deterministic_disjoint_and_by_camera():
    items = _items() + [("/d/solo_0.jpg", "set_solo", "set_0"), ("/d/solo_1.jpg", "set_solo",
                                                                  "set_0")]
    a = split_validation(items, 4, seed=3)
    assert a == split_validation(items, 4, seed=3)  # same seed, same split
    assert a.held_out != split_validation(items, 4, seed=4).held_out
    assert len(a.held_out) == 4 and not {it[1] for it in a.train} & set(a.held_out)
    assert len(a.train) + len(a.query) + len(a.gallery) == len(items)
    for index, pid in enumerate(a.held_out):
        q = [it for it in a.query if it[1] == index]
        g = [it for it in a.gallery if it[1] == index]
        cams = {it[2] for it in items if it[1] == pid}
        if len(cams) > 1:  # one query per camera, every other image in the gallery
            assert sorted(it[2] for it in q) == sorted(cams)
            assert len(g) == sum(it[1] == pid for it in items) - len(cams)
        else:  # one camera: a gallery distractor only
            assert q == [] and len(g) == 2


def test_split_errors_name_the_key():
    with pytest.raises(ValidationError, match=r"holds out every training identity .*"
                                              r"\(DATASETS.VAL.IDS\): hold out fewer"):
        split_validation(_items(ids=3), 3, seed=0)
    with pytest.raises(ValidationError, match="has no query"):
        split_validation(_items(ids=3, cams=1), 2, seed=0)


def test_training_chooses_on_validation_and_tests_once(tiny_market, tmp_path):
    from gltrans_plugin.data.loaders import build_val_loader
    from gltrans_plugin.engine import Trainer

    out = tmp_path / "run"
    cfg = resnet_cfg(tiny_market, str(out), **{"DATASETS.VAL.IDS": 2, "DATASETS.VAL.SEED": 1,
                                                "SOLVER.MAX_EPOCH": 2, "TEST.EVAL_PERIOD": 1,
                                                "TEST.EVALUATOR": "chunked"})
    trainer = Trainer(cfg)
    train_ids = set(trainer.data_loader.dataset.pid_dict)
    loader, num_query = build_val_loader(trainer.cfg)
    held = split_validation([it for it in _market_train(tiny_market, cfg)], 2, 1).held_out
    assert len(train_ids) == 6 and not train_ids & set(held)  # 8 training identities, 2 held out
    assert num_query == 2 * 2  # 2 identities x their 2 training cameras (2 and 3)
    results = trainer.train()
    assert "mAP" in results and "Rank-1" in results  # the test set's metrics, at the end
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    evaluated = [r for r in rows if any(k.endswith("/mAP") for k in r)]
    assert len(evaluated) == 2  # one evaluation per epoch ...
    assert all("Validation/mAP" in r and "Market1501/mAP" not in r for r in evaluated)  # val only
    saved = json.loads((out / "results.json").read_text())
    assert saved["selected"]["checkpoint"] == "model_best.pth"
    assert saved["selected"]["epoch"] in (1, 2)
    best = max(evaluated, key=lambda r: r["Validation/mAP"])
    assert saved["selected"]["validation mAP"] == pytest.approx(best["Validation/mAP"])
    assert saved["final"]["mAP"] == pytest.approx(results["mAP"])


def _market_train(root, cfg):
    from gltrans_plugin.data import build_dataset

    return build_dataset(cfg, "Market1501").train
