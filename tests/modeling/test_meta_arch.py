"""GLTrans meta-architecture and the shipped configs, at tiny sizes on CPU.

Most tests use a tiny fake backbone with the real backbone's contract (dict of K class tokens,
K patch-token maps and the grid; ``output_spec()``), registered
as ``build_fake_gltrans_backbone``; the last tests run the real ViT backbone (tiny).
"""

import glob
import math
import os

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import build_model
from torch import nn

import gltrans_plugin  # noqa: F401  (compat first)
import gltrans_plugin.modeling  # noqa: F401  (registers GLTrans, GLTransHead, the backbone)
from gltrans_plugin.config import add_gltrans_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# GLTrans configs; configs/GLTrans/combine/ (GLTrans parts in other fast-reid models) are
# loaded, built and trained in tests/tools/test_tools.py; presets/ are option sets and protocol/
# recipe lists, not configs
# (tests/reproduce/test_reproduce.py).
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "GLTrans", "**", "*.yml"),
                                      recursive=True)
                 if not any(os.sep + d + os.sep in p for d in ("combine", "presets", "protocol")))
D, C, B = 48, 4, 8  # D: 12 GMA heads divide it (Table 10 configs need 1, 4, 6, 12)


class FakeBackbone(nn.Module):
    """Tiny stand-in with the GLTrans backbone contract; records what it was called with."""

    def __init__(self, embed_dim, patch, stride, agg_layers, depth=4, num_cameras=8):
        super().__init__()
        self.embed_dim, self.depth = embed_dim, depth
        self.agg_layers = sorted(i % depth for i in agg_layers)
        self.patch, self.stride = patch, stride
        self.embed = nn.Conv2d(3, embed_dim, patch, stride)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.sie = nn.Parameter(torch.randn(num_cameras, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU())
            for _ in range(max(self.agg_layers) + 1)
        )
        self.cls_norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in self.agg_layers)
        self.calls = []

    def output_spec(self):
        from gltrans_plugin.modeling.backbone import BackboneSpec
        from gltrans_plugin.modeling.ptl import default_num_heads

        return BackboneSpec(self.embed_dim, default_num_heads(self.embed_dim),
                            tuple(i + 1 for i in self.agg_layers), self.patch,
                            tuple(self.stride), (0, 0))

    def forward(self, x, camids=None, viewids=None):
        self.calls.append({"images": x.detach().clone(), "camids": camids, "viewids": viewids})
        m = self.embed(x)  # B x D x Hg x Wg
        grid = tuple(m.shape[-2:])
        z = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), m.flatten(2).transpose(1, 2)], 1)
        if camids is not None:
            z = z + self.sie[camids].unsqueeze(1)
        cls, patches = [], []
        for i, blk in enumerate(self.blocks):
            z = z + blk(z)
            if i in self.agg_layers:
                cls.append(self.cls_norms[len(cls)](z[:, 0]))
                patches.append(z[:, 1:])
        from gltrans_plugin.modeling.backbone import BackboneOutput

        return BackboneOutput(cls, patches, grid)


if "build_fake_gltrans_backbone" not in BACKBONE_REGISTRY._obj_map:

    @BACKBONE_REGISTRY.register()
    def build_fake_gltrans_backbone(cfg):
        bb = cfg.MODEL.BACKBONE
        return FakeBackbone(
            bb.FEAT_DIM, bb.PATCH_SIZE, tuple(bb.STRIDE_SIZE), cfg.MODEL.GLTRANS.AGG_LAYERS
        )


TINY = {
    "MODEL.BACKBONE.NAME": "build_fake_gltrans_backbone",
    "MODEL.BACKBONE.FEAT_DIM": D,
    "MODEL.BACKBONE.STRIDE_SIZE": (8, 8),
    "MODEL.BACKBONE.PRETRAIN": False,
    "INPUT.SIZE_TRAIN": [64, 32],
    "INPUT.SIZE_TEST": [64, 32],  # 7 x 3 grid (P = 6 fits)
    "MODEL.HEADS.NUM_CLASSES": C,
    "MODEL.DEVICE": "cpu",
}


def make_cfg(config_file=None, **opts):
    cfg = add_gltrans_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file)
    else:
        cfg.merge_from_file(os.path.join(ROOT, "configs", "GLTrans", "Base-GLTrans.yml"))
    flat = []
    for k, v in {**TINY, **opts}.items():
        flat += [k.replace("__", "."), v]
    cfg.merge_from_list(flat)
    return cfg


def make_model(config_file=None, seed=0, **opts):
    torch.manual_seed(seed)
    return build_model(make_cfg(config_file, **opts))


def batch(seed=0, size=(64, 32)):
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(B, 3, *size, generator=g) * 255,
        "targets": torch.arange(C).repeat_interleave(B // C),
        "camids": torch.arange(B) % 3,
    }


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def check_train_step(model):
    model.train()
    losses = model(batch())
    names = model.heads.branch_names
    assert set(losses) == {f"loss_{t}_{n}" for t in ("ce", "triplet") for n in names}
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    return losses


# ----------------------------------------------------------------------------- shipped configs
def test_configs_are_shipped():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs", "GLTrans")) for p in CONFIGS}
    assert {
        "Base-GLTrans.yml",
        "market1501.yml",
        "msmt17.yml",
        "dukemtmc.yml",
        "veri.yml",
        "msmt17_released_code.yml",
        "vit_baseline.yml",
        "synthetic_demo.yml",
    } <= names
    for table, rows in {4: 4, 5: 5, 6: 4, 7: 4, 8: 4, 9: 5, 10: 4}.items():
        assert len([n for n in names if n.startswith(f"ablations/table{table}_")]) == rows, table


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_loads_builds_and_trains(path):
    cfg = add_gltrans_config(get_cfg())
    cfg.merge_from_file(path)  # as shipped: keys and types valid
    assert cfg.MODEL.META_ARCHITECTURE == "GLTrans" and cfg.MODEL.HEADS.NAME == "GLTransHead"
    model = make_model(path)
    check_train_step(model)
    model.eval()
    with torch.no_grad():
        feat = model(batch())
    assert feat.shape == (B, model.feat_dim) and torch.isfinite(feat).all()


def test_base_recipe_values():
    cfg = add_gltrans_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "GLTrans", "Base-GLTrans.yml"))
    assert tuple(cfg.MODEL.BACKBONE.STRIDE_SIZE) == (12, 12) and cfg.MODEL.BACKBONE.SIE_COE == 3.0
    assert cfg.MODEL.BACKBONE.DEPTH == "base" and cfg.MODEL.BACKBONE.PRETRAIN
    assert list(cfg.INPUT.SIZE_TRAIN) == [256, 128] and cfg.INPUT.PADDING.SIZE == 10
    assert cfg.INPUT.FLIP.ENABLED and cfg.INPUT.REA.ENABLED and cfg.INPUT.REA.PROB == 0.5
    assert list(cfg.MODEL.PIXEL_MEAN) == [127.5] * 3 and list(cfg.MODEL.PIXEL_STD) == [127.5] * 3
    assert (
        cfg.DATALOADER.SAMPLER_TRAIN == "NaiveIdentitySampler" and cfg.DATALOADER.NUM_INSTANCE == 4
    )
    s = cfg.SOLVER
    assert (s.OPT, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.BIAS_LR_FACTOR) == (
        "SGD",
        0.008,
        0.9,
        1e-4,
        2.0,
    )
    assert (s.IMS_PER_BATCH, s.MAX_EPOCH, s.SCHED) == (64, 200, "CosineAnnealingLR")
    assert cfg.TEST.METRIC == "cosine" and cfg.MODEL.LOSSES.TRI.HARD_MINING
    veri = add_gltrans_config(get_cfg())
    veri.merge_from_file(os.path.join(ROOT, "configs", "GLTrans", "veri.yml"))
    assert list(veri.INPUT.SIZE_TRAIN) == [256, 256] and veri.DATASETS.NAMES == ("VeRiViews",)
    msmt = add_gltrans_config(get_cfg())
    msmt.merge_from_file(os.path.join(ROOT, "configs", "GLTrans", "msmt17.yml"))
    assert msmt.DATASETS.NAMES == ("MSMT17TrainVal",)
    rel = add_gltrans_config(get_cfg())
    rel.merge_from_file(os.path.join(ROOT, "configs", "GLTrans", "msmt17_released_code.yml"))
    g = rel.MODEL.GLTRANS
    assert (
        g.GAE.ACTIVATION,
        g.PTF.MASK,
        g.PTF.FUSION_ORDER,
        g.PTL.SHARED,
        g.CLS_TRIPLET_ON_LAST,
    ) == ("none", "conv_bn", "released", False, True)


# ----------------------------------------------------------------------------- meta-arch
def test_default_model_train_and_eval_feature():
    model = make_model()
    assert model.heads.branch_names == ["global", "local", "cls2", "cls3", "cls4"]
    check_train_step(model)
    model.eval()
    feat = model(batch())
    assert feat.shape == (B, (3 + 2) * D)  # concat(f_g, f_l, cls^L), P = 3


def test_input_not_modified_and_ids_reach_backbone():
    model = make_model()
    x = batch()
    images = x["images"].clone()
    model(x)
    assert torch.equal(x["images"], images)  # not normalised in place
    call = model.backbone.calls[-1]
    assert torch.allclose(call["images"], (images - 127.5) / 127.5)
    assert torch.equal(call["camids"], x["camids"]) and call["viewids"] is None
    model.eval()
    model({**x, "viewids": torch.zeros(B, dtype=torch.long)})
    assert torch.equal(model.backbone.calls[-1]["viewids"], torch.zeros(B, dtype=torch.long))
    assert torch.equal(x["images"], images)


def test_neck_feat_after_gives_post_bn_feature():
    before = make_model().eval()
    after = make_model(MODEL__HEADS__NECK_FEAT="after").eval()
    after.load_state_dict(before.state_dict())
    for neck in before.heads.necks.values():  # non-trivial running statistics
        neck.bn.running_mean.uniform_(-1, 1)
    after.load_state_dict(before.state_dict())
    x = batch()
    fb, fa = before(x), after(x)
    assert fb.shape == fa.shape
    assert torch.allclose(fa[:, -D:], before.heads.necks["cls4"].bn(fb[:, -D:]), atol=1e-5)
    assert not torch.allclose(fa, fb)


def _count(**opts):
    return n_params(make_model(**opts))


def test_switches_change_parameter_count():
    base = _count()
    p = 3
    # PTL shared vs unshared: (P - 1) more layer stacks
    m = make_model()
    stack = n_params(m.heads.lmf.ptl.stacks[0])
    assert _count(MODEL__GLTRANS__PTL__SHARED=False) == base + (p - 1) * stack
    # P = 6: 3 more part tokens, local BNNeck (weight + bias) and classifier 3D wider
    assert _count(MODEL__GLTRANS__PTL__NUM_PARTS=6) == base + 3 * D + 2 * 3 * D + 3 * D * C
    # T = 1 / T = 0
    assert (
        _count(MODEL__GLTRANS__PTL__DEPTH=1)
        == base
        - stack // 2
        + sum(q.numel() for q in m.heads.lmf.ptl.stacks[0][-1].parameters()) // 2
    )
    assert _count(MODEL__GLTRANS__PTL__DEPTH=0) == base - stack - p * D
    # GAE variants
    fc = 3 * D * D + D
    assert _count(MODEL__GLTRANS__GAE__AGGREGATION="two_fc") == base + D * D + D
    assert _count(MODEL__GLTRANS__GAE__AGGREGATION="add") == base - fc
    # concat: no FC, global BNNeck/classifier and GMA's W_q 3D wide
    assert (
        _count(MODEL__GLTRANS__GAE__AGGREGATION="concat")
        == base - fc + 2 * 2 * D + 2 * D * C + 2 * D * D
    )
    # PTF / GMA off
    assert _count(MODEL__GLTRANS__PTF__ENABLED=False) == base - n_params(m.heads.lmf.ptf)
    assert (
        _count(MODEL__GLTRANS__GMA__ENABLED=False)
        == base - n_params(m.heads.lmf.gma)
        == base - 2 * (D * D + D)
    )
    # local branch off: its modules do not exist
    nolocal = make_model(
        MODEL__GLTRANS__LOCAL__ENABLED=False,
        MODEL__GLTRANS__BRANCHES=("global", "cls"),
        MODEL__GLTRANS__TEST_BRANCHES=("global", "cls_last"),
    )
    assert nolocal.heads.lmf is None and "local" not in nolocal.heads.necks
    assert not any(".lmf." in n or n.startswith("heads.lmf") for n, _ in nolocal.named_parameters())
    check_train_step(nolocal)


def test_gma_heads_and_agg_layers_change_output():
    x = batch()
    feats = []
    for h in (1, 12):
        model = make_model(MODEL__GLTRANS__GMA__NUM_HEADS=h).eval()
        feats.append(model(x))
    assert n_params(make_model(MODEL__GLTRANS__GMA__NUM_HEADS=1)) == _count()
    assert not torch.allclose(feats[0], feats[1])
    four = make_model(MODEL__GLTRANS__AGG_LAYERS=(-4, -3, -2, -1))
    assert four.heads.branch_names == ["global", "local", "cls1", "cls2", "cls3", "cls4"]
    check_train_step(four)


def test_released_triplet_switch_changes_loss():
    paper = make_model()
    released = make_model(MODEL__GLTRANS__CLS_TRIPLET_ON_LAST=True)
    released.load_state_dict(paper.state_dict())
    lp, lr = paper(batch()), released(batch())
    assert lr["loss_triplet_cls2"].item() == pytest.approx(lp["loss_triplet_cls4"].item(), rel=1e-5)
    assert lr["loss_triplet_cls2"].item() != pytest.approx(lp["loss_triplet_cls2"].item(), rel=1e-3)
    assert lr["loss_ce_cls2"].item() == pytest.approx(lp["loss_ce_cls2"].item(), rel=1e-5)


def test_margin_option_and_soft_margin_default():
    soft = make_model()
    hard = make_model(MODEL__GLTRANS__TRI_SOFT_MARGIN=False, MODEL__LOSSES__TRI__MARGIN=0.3)
    hard.load_state_dict(soft.state_dict())
    assert hard.criterion.tri_margin == 0.3 and soft.criterion.tri_margin == 0.0
    assert hard(batch())["loss_triplet_global"].item() != pytest.approx(
        soft(batch())["loss_triplet_global"].item()
    )
    with pytest.raises(ValueError, match="MARGIN"):
        make_model(MODEL__GLTRANS__TRI_SOFT_MARGIN=False, MODEL__LOSSES__TRI__MARGIN=0.0)


def test_build_errors():
    with pytest.raises(ValueError, match=r"NUM_PARTS=8 is larger than the patch grid's 7 rows"):
        make_model(MODEL__GLTRANS__PTL__NUM_PARTS=8)
    with pytest.raises(ValueError, match="GMA needs the global feature"):
        make_model(
            MODEL__GLTRANS__GAE__ENABLED=False,
            MODEL__GLTRANS__BRANCHES=("local", "cls"),
            MODEL__GLTRANS__TEST_BRANCHES=("local", "cls_last"),
        )
    with pytest.raises(ValueError, match="NUM_HEADS=5 must divide"):
        make_model(MODEL__GLTRANS__GMA__NUM_HEADS=5)
    with pytest.raises(ValueError, match="GLTransHead"):
        make_model(MODEL__HEADS__NAME="EmbeddingHead")


# ----------------------------------------------------------------------------- real backbone
REAL = {
    "MODEL.BACKBONE.NAME": "build_gltrans_backbone",
    "MODEL.BACKBONE.DEPTH": "tiny",
    "MODEL.BACKBONE.FEAT_DIM": 192,
    "MODEL.BACKBONE.STRIDE_SIZE": (16, 16),
    "MODEL.BACKBONE.NUM_CAMERAS": 3,
    "MODEL.BACKBONE.DROP_PATH_RATIO": 0.0,
}


@pytest.mark.parametrize(
    "name", ["Base-GLTrans.yml", "msmt17_released_code.yml", "vit_baseline.yml"]
)
def test_real_backbone_tiny(name):
    assert "build_gltrans_backbone" in BACKBONE_REGISTRY._obj_map, (
        "importing gltrans_plugin.modeling did not register the GLTrans backbone")
    model = make_model(
        os.path.join(ROOT, "configs", "GLTrans", name),
        **{k.replace(".", "__"): v for k, v in REAL.items()},
    )
    assert model.heads.cls_names[-1] == "cls12"
    x = batch()
    images = x["images"].clone()
    check_train_step(model)
    assert torch.equal(x["images"], images)
    model.eval()
    with torch.no_grad():
        feat = model(x)
    p = model.heads.lmf.ptl.num_parts if model.heads.lmf is not None else -1
    expected = (p + 2) * 192 if name != "vit_baseline.yml" else 192
    assert feat.shape == (B, expected) and model.feat_dim == expected
    assert math.isfinite(feat.abs().sum().item())
