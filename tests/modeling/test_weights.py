"""Pretrained-weight loading: timm equivalence, formats, pos_embed resizing, clear errors."""
import argparse
import logging

import pytest
import torch
import torch.nn.functional as F
from fastreid.config import get_cfg
from fastreid.modeling.backbones import build_backbone
from timm.models.vision_transformer import VisionTransformer

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.config import add_gltrans_config
from gltrans_plugin.modeling.backbone import GLTransViT
from gltrans_plugin.modeling.weights import checkpoint_filter_fn, load_pretrained

D = 64


def timm_vit(img_size=(64, 32), depth=2, seed=0, **kw):
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=img_size, patch_size=16, embed_dim=D, depth=depth,
                          num_heads=2, class_token=True, global_pool="token", num_classes=10,
                          **kw)
    with torch.no_grad():  # move every parameter off its init (LayerNorms are 1 / 0 there)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def ours(img_size=(64, 32), stride=16, depth=2, **kw):
    kw.setdefault("agg_layers", (-2, -1))
    return GLTransViT(img_size=img_size, patch_size=16, stride_size=stride, embed_dim=D,
                      depth=depth, num_heads=2, drop_path_rate=0.0, **kw).eval()


def save(obj, tmp_path, name="w.pth"):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def test_timm_state_dict_gives_the_same_class_token(tmp_path):
    ref = timm_vit()
    model = ours()
    result = load_pretrained(model, save(ref.state_dict(), tmp_path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        expected_last = ref.forward_features(x)[:, 0]
        z = ref.patch_embed(x)
        z = ref._pos_embed(z)
        expected_first = ref.norm(ref.blocks[0](z)[:, 0])
        out = model(x)
        got_last = model.forward_features(x)
    torch.testing.assert_close(got_last, expected_last, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cls[-1], expected_last, atol=1e-5, rtol=0)
    # each per-layer cls norm is a copy of the final norm
    torch.testing.assert_close(out.cls[0], expected_first, atol=1e-5, rtol=0)
    for norm in model.cls_norms:
        torch.testing.assert_close(norm.weight, ref.norm.weight)


def test_filter_is_pure_and_drops_head(tmp_path):
    sd = timm_vit().state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    out = checkpoint_filter_fn(sd, ours())
    assert sd.keys() == before.keys()
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    assert not any(k.startswith(("head.", "norm.")) for k in out)
    assert {"cls_norms.0.weight", "cls_norms.1.bias"} <= set(out)


def test_pos_embed_resized_from_square_grid():
    ref = timm_vit(img_size=(64, 64))  # 4 x 4 grid
    model = ours(img_size=(64, 32), stride=12)  # 5 x 2 grid
    out = checkpoint_filter_fn(ref.state_dict(), model)
    pos = ref.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, 4, 4, D).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(5, 2), mode="bicubic", align_corners=False,
                             antialias=True).permute(0, 2, 3, 1).reshape(1, 10, D)
    assert out["pos_embed"].shape == (1, 11, D)
    torch.testing.assert_close(out["pos_embed"][:, :1], pos[:, :1])  # cls position kept
    torch.testing.assert_close(out["pos_embed"][:, 1:], expected)
    model.load_state_dict(out, strict=False)
    torch.testing.assert_close(model.pos_embed.detach(), out["pos_embed"])


def test_non_square_grid_needs_old_grid():
    src = ours(img_size=(64, 48), stride=16)  # 4 x 3 grid, saved as a TransReID model
    sd = {"base." + k: v for k, v in src.state_dict().items()}
    model = ours(img_size=(64, 32), stride=12)  # 5 x 2
    with pytest.raises(ValueError, match="old_grid"):
        checkpoint_filter_fn(sd, model)
    out = checkpoint_filter_fn(sd, model, old_grid=(4, 3), interpolation="bilinear")
    assert out["pos_embed"].shape == (1, 11, D)


def test_deit_model_key_and_distillation_token(tmp_path):
    ref = timm_vit()
    sd = dict(ref.state_dict())
    pos = sd["pos_embed"]
    dist_pos = torch.randn(1, 1, D)
    sd["pos_embed"] = torch.cat([pos[:, :1], dist_pos, pos[:, 1:]], 1)  # 1 x (2+N) x D
    sd["dist_token"] = torch.randn(1, 1, D)
    sd["head_dist.weight"], sd["head_dist.bias"] = torch.randn(10, D), torch.randn(10)
    model = ours()
    result = load_pretrained(model, save({"model": sd, "epoch": 3}, tmp_path), fmt="deit")
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(model.pos_embed.detach(), pos)


def test_state_dict_and_module_wrapping(tmp_path):
    ref = timm_vit()
    wrapped = {"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}
    a, b = ours(), ours()
    load_pretrained(a, save(wrapped, tmp_path, "a.pth"))
    load_pretrained(b, save(ref.state_dict(), tmp_path, "b.pth"))
    for (n, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, msg=n)


def test_transreid_format_with_sie_and_flat_patch_weight(tmp_path, caplog):
    src = ours(sie_camera=True, num_cameras=3)
    sd = {"base." + k: v for k, v in src.state_dict().items() if not k.startswith("cls_norms")}
    sd["base.norm.weight"], sd["base.norm.bias"] = torch.rand(D), torch.rand(D)
    sd["base.sie_embed"] = src.sie_embed.detach()[:, None]  # T x 1 x D as TransReID
    sd["base.patch_embed.proj.weight"] = sd["base.patch_embed.proj.weight"].flatten(1)
    sd["classifier.weight"] = torch.randn(5, D)
    model = ours(sie_camera=True, num_cameras=3)
    with caplog.at_level(logging.INFO, logger="gltrans_plugin.modeling.weights"):
        result = load_pretrained(model, save(sd, tmp_path), fmt="transreid")
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert "classifier.weight" in caplog.text  # dropped keys are named
    torch.testing.assert_close(model.sie_embed, src.sie_embed)
    torch.testing.assert_close(model.patch_embed.proj.weight, src.patch_embed.proj.weight)
    torch.testing.assert_close(model.cls_norms[1].weight.detach(), sd["base.norm.weight"])
    # a model with another camera count cannot take this SIE table
    with pytest.raises(ValueError, match=r"'base.sie_embed'.*\(3, 64\).*\(5, 64\).*NUM_CAMERAS"):
        checkpoint_filter_fn(sd, ours(sie_camera=True, num_cameras=5))


def test_missing_and_unexpected_keys_are_logged(tmp_path, caplog):
    sd = dict(timm_vit().state_dict())
    sd["extra.weight"] = torch.zeros(3)
    model = ours(sie_camera=True, num_cameras=2)
    with caplog.at_level(logging.INFO, logger="gltrans_plugin.modeling.weights"):
        result = load_pretrained(model, save(sd, tmp_path))
    assert result.missing_keys == ["sie_embed"] and result.unexpected_keys == ["extra.weight"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("extra.weight" in w for w in warnings)
    assert "sie_embed" in caplog.text and "head.weight" in caplog.text


def test_deeper_checkpoint_blocks_beyond_model_are_dropped(tmp_path):
    sd = timm_vit(depth=3).state_dict()
    result = load_pretrained(ours(depth=3, agg_layers=(-2,)), save(sd, tmp_path))
    assert result.unexpected_keys == [] and result.missing_keys == []


def test_shape_that_cannot_be_adapted(tmp_path):
    sd = timm_vit().state_dict()
    model = GLTransViT(img_size=(64, 32), stride_size=16, embed_dim=32, depth=2, num_heads=2,
                       agg_layers=(-1,))
    with pytest.raises(ValueError, match=r"pos_embed.*\(1, 9, 64\).*\(1, 9, 32\)"):
        load_pretrained(model, save(sd, tmp_path))
    sd = dict(sd)
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(100, D)
    with pytest.raises(ValueError, match=r"'blocks.0.mlp.fc1.weight'.*\(100, 64\).*\(256, 64\)"):
        checkpoint_filter_fn(sd, ours())


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*MODEL.BACKBONE.PRETRAIN_PATH"):
        load_pretrained(ours(), path)


def test_garbage_and_non_checkpoint_files(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"definitely not a checkpoint" * 20)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_pretrained(ours(), str(path))
    with pytest.raises(ValueError, match="no state dict"):
        load_pretrained(ours(), save([1, 2, 3], tmp_path, "list.pth"))
    with pytest.raises(ValueError, match="not a ViT checkpoint"):
        load_pretrained(ours(), save({"conv1.weight": torch.zeros(3)}, tmp_path, "r.pth"))


def test_pickled_objects_need_allow_pickle(tmp_path):
    sd = dict(timm_vit().state_dict())
    path = save({"model": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path)
    with pytest.raises(ValueError, match="set GLTRANS_ALLOW_PICKLE=1"):
        load_pretrained(ours(), path)
    result = load_pretrained(ours(), path, allow_pickle=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_backbone_builder_loads_pretrained_file(tmp_path):
    cfg = add_gltrans_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_gltrans_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "tiny"
    cfg.MODEL.BACKBONE.STRIDE_SIZE = (12, 12)
    cfg.MODEL.BACKBONE.SIE_CAMERA = False
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.MODEL.GLTRANS.AGG_LAYERS = (0, 1)  # builds 2 of the 12 blocks: fast
    src = build_backbone(cfg)
    assert len(src.blocks) == 2
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("cls_norms")}
    sd["norm.weight"], sd["norm.bias"] = torch.rand(192), torch.rand(192)
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = save({"model": sd}, tmp_path)
    model = build_backbone(cfg)
    for k, v in sd.items():
        if not k.startswith("norm."):
            torch.testing.assert_close(model.state_dict()[k], v, msg=k)
    for norm in model.cls_norms:
        torch.testing.assert_close(norm.bias.detach(), sd["norm.bias"])
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.BACKBONE.PRETRAIN_PATH"):
        build_backbone(cfg)
