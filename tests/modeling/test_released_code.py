"""The released-code preset (configs/GLTrans/msmt17_released_code.yml) against the behaviour of
the authors' code (AWangYQ/GLTrans: model/GLTrans.py, model/refine_model.py,
model/base_model.py): PTL LayerNorm eps, test-feature order, trainable BNNeck biases and the
kaiming fan-out init of the heads' Linear layers.

The head is built from the config alone (no backbone) at D = 48 on the 21 x 10 grid of
256 x 128 images with stride 12, so every check runs in well under a second on CPU.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from fastreid.config import get_cfg
from torch import nn

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.config import add_gltrans_config
from gltrans_plugin.modeling.heads import GLTransHead

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASED = os.path.join(ROOT, "configs", "GLTrans", "msmt17_released_code.yml")
PAPER = os.path.join(ROOT, "configs", "GLTrans", "msmt17.yml")
D, B, C, P = 48, 4, 5, 3
GRID = (21, 10)  # 256 x 128, patch 16, stride 12
LAYERS = [10, 11, 12]


def cfg_of(path, **gltrans):
    cfg = add_gltrans_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.MODEL.HEADS.NUM_CLASSES = C
    for k, v in gltrans.items():
        node = cfg.MODEL.GLTRANS
        *parents, last = k.split("__")
        for p in parents:
            node = node[p]
        node[last] = v
    return cfg


def head_of(cfg, seed=0):
    torch.manual_seed(seed)
    return GLTransHead(cfg, embed_dim=D, layer_numbers=LAYERS, num_heads=4)


def backbone_out(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1]
    from gltrans_plugin.modeling.backbone import BackboneOutput

    return BackboneOutput([torch.randn(B, D, generator=g) * scale for _ in LAYERS],
                          [torch.randn(B, n, D, generator=g) * scale for _ in LAYERS], GRID)


def test_released_preset_turns_every_new_switch():
    g = cfg_of(RELEASED).MODEL.GLTRANS
    assert g.PTL.NORM_EPS == 1e-5
    assert g.LINEAR_INIT == "kaiming_fan_out"
    assert g.NECK_BIAS_FREEZE is False
    assert tuple(g.TEST_BRANCHES) == ("local", "global", "cls_last")
    # paper side: the test feature order of the paper text; the rest follow the released code
    p = cfg_of(PAPER).MODEL.GLTRANS
    assert tuple(p.TEST_BRANCHES) == ("global", "local", "cls_last")
    assert (p.PTL.NORM_EPS, p.LINEAR_INIT, p.NECK_BIAS_FREEZE) == (1e-5, "kaiming_fan_out", False)


# ----------------------------------------------------------------------------- 1. LayerNorm eps
def test_ptl_layernorms_have_released_eps():
    """refine_model.py: the part blocks are built with norm_layer=nn.LayerNorm and the norm after
    them is nn.LayerNorm(768): all eps 1e-5. The backbone (TransReID ViT, eps 1e-6) is unchanged."""
    from gltrans_plugin.modeling.backbone import _ln

    ptl = head_of(cfg_of(RELEASED)).lmf.ptl
    norms = {n: m for n, m in ptl.named_modules() if isinstance(m, nn.LayerNorm)}
    assert len(norms) == P * (2 * 2 + 1)  # per part: 2 blocks x (norm1, norm2) + final norm
    assert {n for n in norms if n.endswith(".norm1")} == {
        f"stacks.{p}.{t}.norm1" for p in range(P) for t in range(2)
    }
    assert all(m.eps == 1e-5 for m in norms.values()), {n: m.eps for n, m in norms.items()}
    assert _ln.keywords["eps"] == 1e-6
    # the eps is the one used in forward: with small tokens 1e-6 gives another local feature
    other = head_of(cfg_of(RELEASED, PTL__NORM_EPS=1e-6)).lmf.ptl
    assert all(m.eps == 1e-6 for m in other.modules() if isinstance(m, nn.LayerNorm))
    other.load_state_dict(ptl.state_dict())
    x = backbone_out(scale=1e-3)
    with torch.no_grad():
        a = ptl(x.patches[-1], GRID, x.cls)
        b = other(x.patches[-1], GRID, x.cls)
    assert (a - b).abs().max() > 1e-2


# ----------------------------------------------------------------------------- 2. feature order
def test_test_feature_is_local_global_cls_under_preset():
    """GLTrans.py eval: torch.cat((lf, gf, cls_token), 1), cls_token the last normed class token,
    all before the BNNecks."""
    for path, order in ((RELEASED, ("local", "global", "cls12")),
                        (PAPER, ("global", "local", "cls12"))):
        head = head_of(cfg_of(path)).eval()
        x = backbone_out()
        with torch.no_grad():
            f = head(x)
            feats = head.branch_features(x)
        assert f.shape == (B, (P + 2) * D) and head.test_names == list(order)
        assert torch.equal(f, torch.cat([feats[n] for n in order], 1))
        if path == RELEASED:
            assert torch.equal(f[:, : P * D], feats["local"])
            assert torch.equal(f[:, P * D : (P + 1) * D], feats["global"])
            assert torch.equal(f[:, -D:], x.cls[-1])


def test_head_concatenates_in_test_branches_order():
    head = head_of(cfg_of(PAPER, TEST_BRANCHES=("cls_last", "local", "cls10", "global"))).eval()
    x = backbone_out()
    with torch.no_grad():
        f = head(x)
        feats = head.branch_features(x)
    ref = torch.cat([feats["cls12"], feats["local"], feats["cls10"], feats["global"]], 1)
    assert torch.equal(f, ref)


# ----------------------------------------------------------------------------- 3. BNNeck bias
def test_bnneck_biases_train_under_preset():
    """GLTrans.py: bn1, bn_local and bn_token.{0,1,2} get weights_init_kaiming (weight 1, bias 0)
    and no requires_grad_(False): their biases train."""
    head = head_of(cfg_of(RELEASED)).train()
    y = torch.arange(B) % C
    out = head(backbone_out(), y)
    sum(F.cross_entropy(v, y) for v in out["logits"].values()).backward()
    assert sorted(head.necks) == ["cls10", "cls11", "cls12", "global", "local"]
    for name, neck in head.necks.items():
        bias = neck.bn.bias
        assert bias.requires_grad, name
        assert bias.grad is not None and bias.grad.abs().sum() > 0, name
    fresh = head_of(cfg_of(RELEASED))
    for neck in fresh.necks.values():
        assert torch.count_nonzero(neck.bn.bias) == 0 and torch.all(neck.bn.weight == 1)
    frozen = head_of(cfg_of(RELEASED, NECK_BIAS_FREEZE=True))
    assert not any(n.bn.bias.requires_grad for n in frozen.necks.values())


# ----------------------------------------------------------------------------- 4. init
def _head_linears(head):
    return {n: m for n, m in head.named_modules()
            if isinstance(m, nn.Linear) and not n.startswith("necks.")}


def test_head_linears_kaiming_fan_out_under_preset():
    """refine_model.py: minimodule.apply(weights_init_kaiming): every Linear (GAE FC, G2L
    GLinear / LLinear, the part blocks' qkv / proj / fc1 / fc2) kaiming_normal_(a=0,
    mode='fan_out'), bias 0; convs kaiming fan-in (bias 0); BN and LayerNorm weight 1, bias 0.
    base_model.py: the PAM convs kaiming fan-in. GLTrans.py: classifiers normal(std 0.001)."""
    head = head_of(cfg_of(RELEASED))
    lin = _head_linears(head)
    assert len(lin) == 1 + 2 + P * 2 * 4  # GAE, GMA q/k, per part 2 blocks x 4
    for name, m in lin.items():
        want = math.sqrt(2.0 / m.weight.shape[0])  # gain sqrt(2), fan-out = out_features
        assert m.weight.std().item() == pytest.approx(want, rel=0.1), name
        assert abs(m.weight.mean().item()) < 0.1 * want, name
        assert m.bias is not None and torch.count_nonzero(m.bias) == 0, name
    convs = {n: m for n, m in head.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 2 * len(LAYERS) + 2  # 2 per mask, fusion 1x1 and 3x3
    for name, m in convs.items():
        fan_in = m.weight[0].numel()
        assert m.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.15), name
        assert m.bias is None or torch.count_nonzero(m.bias) == 0, name
    for name, m in head.named_modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0, name
    for neck in head.necks.values():
        assert neck.classifier.weight.std().item() == pytest.approx(0.001, rel=0.2)


def test_linear_init_switch_paper_side_and_trunc_normal():
    # the paper-side model (PTF linear masks) follows the same default init
    head = head_of(cfg_of(PAPER))
    lin = _head_linears(head)
    assert any(".masks." in n for n in lin)
    for name, m in lin.items():
        assert m.weight.std().item() == pytest.approx(math.sqrt(2.0 / m.weight.shape[0]),
                                                      rel=0.1), name
    vit = head_of(cfg_of(PAPER, LINEAR_INIT="trunc_normal"))
    for name, m in _head_linears(vit).items():
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.15), name
        assert torch.count_nonzero(m.bias) == 0, name
    with pytest.raises(ValueError, match="LINEAR_INIT"):
        head_of(cfg_of(PAPER, LINEAR_INIT="xavier"))
