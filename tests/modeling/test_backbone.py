"""GLTrans ViT backbone: grid sizes, outputs, gradients, SIE, config errors."""
import pytest
import torch
from fastreid.modeling.backbones import build_backbone

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.modeling.backbone import GLTransViT, GLTransViTFeatureMap, patch_grid
from helpers import gltrans_cfg


def tiny(**kw):
    args = dict(img_size=(64, 32), patch_size=16, stride_size=12, embed_dim=32, depth=3,
                num_heads=2, drop_path_rate=0.0)
    args.update(kw)
    args.setdefault("agg_layers", tuple(range(-min(args["depth"], 3), 0)))
    return GLTransViT(**args)


@pytest.mark.parametrize("size,stride,grid", [((256, 128), 12, (21, 10)),
                                               ((256, 128), 16, (16, 8)),
                                               ((256, 256), 12, (21, 21))])
def test_grid_sizes(size, stride, grid):
    assert patch_grid(size, 16, stride) == grid
    m = GLTransViT(img_size=size, stride_size=stride, embed_dim=8, depth=1, num_heads=1,
                   agg_layers=(-1,)).eval()
    assert m.grid_size == grid and m.pos_embed.shape == (1, 1 + grid[0] * grid[1], 8)
    with torch.no_grad():
        out = m(torch.randn(1, 3, *size))
    assert out.grid == grid
    assert out.patches[0].shape == (1, grid[0] * grid[1], 8)


def test_output_structure_and_forward_features():
    m = tiny(depth=4, agg_layers=(-3, -2, -1)).eval()
    assert m.agg_layers == (1, 2, 3) and m.num_agg == 3 and m.layer_numbers == (2, 3, 4)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = m(x)
        feat = m.forward_features(x)
    assert set(out._fields) == {"cls", "patches", "grid"}
    assert out.grid == (5, 2)
    assert [tuple(t.shape) for t in out.cls] == [(2, 32)] * 3
    assert [tuple(t.shape) for t in out.patches] == [(2, 10, 32)] * 3
    torch.testing.assert_close(feat, out.cls[-1])
    # the cls tokens are normed by their own LayerNorm; the patches are not normed
    assert torch.allclose(out.cls[0].mean(-1), torch.zeros(2), atol=1e-5)
    assert out.patches[0].mean(-1).abs().max() > 1e-3
    # no unused final norm
    assert not any(n.startswith("norm.") for n, _ in m.named_parameters())
    assert len(m.cls_norms) == 3


def test_blocks_after_last_aggregated_layer_are_not_built():
    m = tiny(depth=4, agg_layers=(0, -2))
    assert m.agg_layers == (0, 2) and len(m.blocks) == 3


@pytest.mark.parametrize("sie", [dict(sie_camera=True, num_cameras=3),
                                 dict(sie_camera=True, sie_view=True, num_cameras=3, num_views=2)])
def test_every_parameter_gets_a_gradient(sie):
    torch.manual_seed(0)
    m = tiny(depth=3, drop_path_rate=0.1, **sie).train()
    x = torch.randn(4, 3, 64, 32)
    out = m(x, camids=torch.tensor([0, 1, 2, 1]), viewids=torch.tensor([0, 1, 1, 0]))
    loss = sum((t * torch.randn_like(t)).sum() for t in out.cls + out.patches)
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def _shifted_pos_model(m, shift):
    """Same model, with ``shift`` (D) added to the position embedding and SIE off."""
    ref = tiny(depth=2)
    sd = {k: v for k, v in m.state_dict().items() if k != "sie_embed"}
    sd["pos_embed"] = sd["pos_embed"] + shift
    ref.load_state_dict(sd)
    return ref.eval()


def test_sie_camera_matches_independent_computation():
    torch.manual_seed(0)
    m = tiny(depth=2, sie_camera=True, num_cameras=4, sie_coe=3.0, sie_unseen="none").eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        plain = m.forward_features(x)
        with_cam = m.forward_features(x, camids=torch.tensor([2]))
        expected = _shifted_pos_model(m, 3.0 * m.sie_embed[2]).forward_features(x)
        no_sie = _shifted_pos_model(m, 0.0).forward_features(x)
    assert not torch.allclose(plain, with_cam, atol=1e-4)  # SIE changes the output...
    torch.testing.assert_close(with_cam, expected)          # ...by sie_coe * table[cam]
    torch.testing.assert_close(plain, no_sie)               # camids None: no SIE term


def test_sie_camera_x_view_joint_index():
    torch.manual_seed(0)
    m = tiny(depth=2, sie_camera=True, sie_view=True, num_cameras=3, num_views=2,
             sie_coe=1.5).eval()
    assert m.sie_embed.shape == (6, 32)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        got = m.forward_features(x, camids=torch.tensor([2]), viewids=torch.tensor([1]))
        expected = _shifted_pos_model(m, 1.5 * m.sie_embed[2 * 2 + 1]).forward_features(x)
    torch.testing.assert_close(got, expected)


def test_sie_view_only_table():
    m = tiny(depth=2, sie_view=True, num_views=5)
    assert m.sie_embed.shape == (5, 32)
    with pytest.raises(ValueError, match=r"view id\(s\) \[5\].*size 5.*NUM_VIEWS"):
        m(torch.randn(1, 3, 64, 32), viewids=torch.tensor([5]))


def test_out_of_range_camid_strict_and_lenient():
    torch.manual_seed(0)
    m = tiny(depth=2, sie_camera=True, num_cameras=4).eval()
    x = torch.randn(2, 3, 64, 32)
    msg = r"camera id\(s\) \[7\].*size 4.*MODEL.BACKBONE.NUM_CAMERAS"
    with pytest.raises(ValueError, match=msg):
        m(x, camids=torch.tensor([1, 7]))
    m.strict_ids = False
    with torch.no_grad():
        mixed = m.forward_features(x, camids=torch.tensor([1, 7]))
        cam1 = m.forward_features(x, camids=torch.tensor([1, 1]))
        none = m.forward_features(x)
    torch.testing.assert_close(mixed[0], cam1[0])  # valid id: its SIE
    torch.testing.assert_close(mixed[1], none[1])  # invalid id: no SIE


@pytest.mark.parametrize("policy", ["none", "mean", "error"])
def test_unknown_camera_follows_sie_unseen(policy, caplog):
    """-1 or no ids: "none" = no SIE term, "mean" = sie_coe * mean of the table, "error"."""
    torch.manual_seed(0)
    m = tiny(depth=2, sie_camera=True, num_cameras=4, sie_coe=2.0, sie_unseen=policy).eval()
    with torch.no_grad():
        m.sie_embed.normal_()
    x = torch.randn(2, 3, 64, 32)
    if policy == "error":
        for ids in (None, torch.tensor([-1, 0])):
            with pytest.raises(ValueError, match=r"without a camera id .*SIE_UNSEEN 'error'"):
                m(x, camids=ids)
        return
    shift = 2.0 * m.sie_embed.mean(0) if policy == "mean" else 0.0
    with torch.no_grad(), caplog.at_level("WARNING", logger="gltrans_plugin.modeling.backbone"):
        mixed = m.forward_features(x, camids=torch.tensor([1, -1]))
        missing = m.forward_features(x)
        cam1 = m.forward_features(x, camids=torch.tensor([1, 1]))
        expected = _shifted_pos_model(m, shift).forward_features(x)
    torch.testing.assert_close(mixed[0], cam1[0])      # a known camera: its own row
    torch.testing.assert_close(mixed[1], expected[1])  # unknown: the policy
    torch.testing.assert_close(missing, expected)      # no ids at all: the policy
    assert caplog.text.count("without a camera id") == 1  # warned once


@pytest.mark.parametrize("kw,msg", [
    (dict(stride_size=20), "STRIDE_SIZE <= MODEL.BACKBONE.PATCH_SIZE"),
    (dict(img_size=(64, 8)), "smaller than one patch"),
    (dict(agg_layers=(3,)), "out of range"),
    (dict(agg_layers=(-4,)), "out of range"),
    (dict(agg_layers=(0, 1, 2, -1)), "lists 4 layers"),
    (dict(agg_layers=(2, -1)), "twice"),
    (dict(agg_layers=()), "empty"),
    (dict(num_heads=5), "does not divide"),
    (dict(sie_camera=True, num_cameras=0), "MODEL.BACKBONE.NUM_CAMERAS"),
    (dict(sie_view=True), "MODEL.BACKBONE.NUM_VIEWS"),
])
def test_impossible_settings_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(**kw)


def test_unknown_depth_name_raises():
    with pytest.raises(ValueError, match=r"unknown MODEL.BACKBONE.DEPTH '50x'.*tiny"):
        build_backbone(gltrans_cfg(**{"MODEL.BACKBONE.DEPTH": "50x"}))


def test_build_from_config():
    cfg = gltrans_cfg(size=(64, 32), **{
        "MODEL.BACKBONE.SIE_COE": 2.0, "MODEL.GLTRANS.AGG_LAYERS": (-2, -1),
        "MODEL.GLTRANS.STRICT_CAMIDS": False, "MODEL.BACKBONE.NUM_CAMERAS": 4,
        "MODEL.BACKBONE.DROP_PATH_RATIO": 0.1})
    m = build_backbone(cfg)
    assert isinstance(m, GLTransViT)
    assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == (192, 12, 3)
    assert m.grid_size == (5, 2) and m.agg_layers == (10, 11)
    assert m.sie_embed.shape == (4, 192) and m.sie_coe == 2.0 and not m.strict_ids
    assert m.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    small = GLTransViT(cfg, depth=2, embed_dim=64, num_heads=2)  # keyword overrides
    assert (small.embed_dim, len(small.blocks)) == (64, 2)


def test_vit_baseline_builder_for_fastreid_embedding_head():
    cfg = gltrans_cfg(size=(64, 32), **{"MODEL.BACKBONE.NAME": "build_gltrans_vit_backbone"})
    with pytest.raises(ValueError, match="SIE_CAMERA False"):
        build_backbone(cfg)
    cfg.MODEL.BACKBONE.SIE_CAMERA = False
    m = build_backbone(cfg).eval()
    assert isinstance(m, GLTransViTFeatureMap) and len(m.cls_norms) == 1
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 192, 1, 1)
    torch.testing.assert_close(y[:, :, 0, 0], GLTransViT.forward_features(m, x))


def test_grad_checkpoint_gives_same_output_and_gradients():
    torch.manual_seed(0)
    a = tiny(depth=2).train()
    b = tiny(depth=2, grad_checkpoint=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 32)
    fa, fb = a.forward_features(x), b.forward_features(x)
    torch.testing.assert_close(fa, fb)
    fa.square().sum().backward()
    fb.square().sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_other_input_size_resamples_pos_embed():
    m = tiny(depth=1, agg_layers=(-1,)).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 88, 40))
    assert out.grid == (7, 3) and out.patches[0].shape == (1, 21, 32)
    with pytest.raises(ValueError, match="smaller than one patch"):
        m(torch.randn(1, 3, 12, 32))
