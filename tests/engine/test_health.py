"""Training health: per-branch distance statistics, the collapse warning, TRI_FEATURE."""
import logging
import math

import pytest
import torch
from fastreid.utils.events import EventStorage

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.config import add_gltrans_config
from gltrans_plugin.modeling.losses import MultiBranchLoss, log_branch_health, metric_stats


def _reference_stats(f, t):
    """Pairwise loops: an independent computation of metric_stats."""
    n = len(t)
    pos, neg, cpos, cneg = [], [], [], []
    hard_ap, hard_an = [-math.inf] * n, [math.inf] * n
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            d = float(torch.sqrt(((f[i] - f[j]) ** 2).sum()))
            c = float(f[i] @ f[j] / (f[i].norm() * f[j].norm()))
            if t[i] == t[j]:
                pos.append(d), cpos.append(c)
                hard_ap[i] = max(hard_ap[i], d)
            else:
                neg.append(d), cneg.append(c)
                hard_an[i] = min(hard_an[i], d)
    mp, mn = sum(pos) / len(pos), sum(neg) / len(neg)
    return {"norm": float(f.norm(dim=1).mean()), "pos": mp, "neg": mn, "rel_gap": (mn - mp) / mn,
            "cos_pos": sum(cpos) / len(cpos), "cos_neg": sum(cneg) / len(cneg),
            "violation": sum(a >= b for a, b in zip(hard_ap, hard_an)) / n}


def test_metric_stats_match_pairwise_loops():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(12, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    got, ref = metric_stats(f, t), _reference_stats(f, t)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k


def test_metric_stats_tell_separated_from_collapsed():
    t = torch.arange(4).repeat_interleave(3)
    centres = torch.eye(4, 8) * 10
    separated = centres[t] + 0.1 * torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    s = metric_stats(separated, t)
    assert s["violation"] == 0 and s["rel_gap"] > 0.9 and s["cos_neg"] < 0.1
    # one big common vector plus tiny noise: what the from-scratch demo used to produce
    collapsed = torch.full((12, 8), 5.0) + 0.01 * torch.randn(
        12, 8, generator=torch.Generator().manual_seed(2))
    c = metric_stats(collapsed, t)
    assert c["cos_neg"] > 0.999 and c["violation"] > 0.3 and abs(c["rel_gap"]) < 0.3
    assert metric_stats(separated, torch.arange(12)) == {}  # no positive pair: nothing to say


def test_health_scalars_reach_the_event_storage():
    t = torch.arange(4).repeat_interleave(2)
    feats = {"global": torch.randn(8, 6), "cls12": torch.randn(8, 6)}
    log_branch_health(feats, t)  # no storage: a no-op, no error
    with EventStorage(0) as storage:
        log_branch_health(feats, t)
        names = set(storage.histories())
    assert {"health/global/cos_neg", "health/cls12/violation", "health/global/rel_gap"} <= names


class _FakeTrainer:
    def __init__(self, storage, max_iter):
        self.storage, self.max_iter, self.iter = storage, max_iter, 0


def test_collapse_warning_once_after_patience(caplog):
    from gltrans_plugin.engine import TrainingHealth

    from fastreid.config import get_cfg

    cfg = add_gltrans_config(get_cfg())
    hook = TrainingHealth(period=2, health_cfg=cfg.SOLVER.HEALTH)  # patience 3 periods
    t = torch.arange(4).repeat_interleave(2)
    good = torch.eye(4, 6)[t] * 5 + 0.01 * torch.randn(8, 6)
    bad = torch.ones(8, 6) * 5 + 0.001 * torch.randn(8, 6)
    with EventStorage(0) as storage, caplog.at_level(logging.INFO, logger="gltrans_plugin"):
        hook.trainer = _FakeTrainer(storage, max_iter=100)
        for it in range(20):
            storage.iter = it
            hook.trainer.iter = it
            log_branch_health({"global": good, "local": bad}, t)
            hook.after_step()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("health   global" in m for m in lines) == 10  # one line per period
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'local'" in warnings[0] and "iteration 6" in warnings[0]


def test_tri_feature_after_uses_bnneck_outputs():
    from fastreid.config import get_cfg

    cfg = add_gltrans_config(get_cfg())
    cfg.MODEL.LOSSES.TRI.HARD_MINING = True
    g = torch.Generator().manual_seed(0)
    t = torch.arange(4).repeat_interleave(2)
    pre = {"global": torch.randn(8, 6, generator=g)}
    post = {"global": torch.randn(8, 6, generator=g)}
    outputs = {"features": pre, "neck_features": post, "logits": {"global": torch.zeros(8, 4)}}
    from fastreid.modeling.losses import triplet_loss

    cfg.MODEL.GLTRANS.TRI_FEATURE = "after"
    after = MultiBranchLoss(cfg, branches=["global"], entries=["global"], last_cls="cls12")
    assert float(after(outputs, t)["loss_triplet_global"]) == pytest.approx(
        float(triplet_loss(post["global"], t, 0.0, False, True)))
    cfg.MODEL.GLTRANS.TRI_FEATURE = "before"
    before = MultiBranchLoss(cfg, branches=["global"], entries=["global"], last_cls="cls12")
    assert float(before(outputs, t)["loss_triplet_global"]) == pytest.approx(
        float(triplet_loss(pre["global"], t, 0.0, False, True)))
    cfg.MODEL.GLTRANS.TRI_FEATURE = "middle"
    with pytest.raises(ValueError, match="TRI_FEATURE"):
        MultiBranchLoss(cfg, branches=["global"], entries=["global"], last_cls="cls12")


def test_test_feature_spread_against_loops():
    from gltrans_plugin.evaluation.evaluator import feature_spread

    g = torch.Generator().manual_seed(3)
    q, gal = torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    qp, gp = [1, 2, 3, 1, 2], [1, 1, 2, 3, 3, 4, 4, 5, 2]
    pos, neg = [], []
    for i in range(5):
        for j in range(9):
            c = float(q[i] @ gal[j] / (q[i].norm() * gal[j].norm()))
            (pos if qp[i] == gp[j] else neg).append(c)
    st = feature_spread(q, gal, qp, gp)
    assert st["cos_pos"] == pytest.approx(sum(pos) / len(pos), abs=1e-6)
    assert st["cos_neg"] == pytest.approx(sum(neg) / len(neg), abs=1e-6)
    assert st["cos_gap"] == pytest.approx(st["cos_pos"] - st["cos_neg"])
    collapsed = torch.ones(5, 4) + 1e-4 * q
    assert feature_spread(collapsed, torch.ones(9, 4), qp, gp)["cos_neg"] > 0.9999
    assert feature_spread(q, gal, [7] * 5, gp) == {}  # no same-identity pair
