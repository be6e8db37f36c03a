"""Speed switches: fused vs explicit attention, bf16 autocast, activation
checkpointing and torch.compile give the same model; tiny sizes on CPU."""
import functools
import logging

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.meta_arch import build_model

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.modeling import attention_impl as speed
from gltrans_plugin.modeling.backbone import GLTransViT
from gltrans_plugin.modeling.ptl import PTL
from helpers import gltrans_cfg


def tiny_vit(**kw):
    args = dict(img_size=(64, 32), patch_size=16, stride_size=12, embed_dim=32, depth=2,
                num_heads=2, drop_path_rate=0.0, agg_layers=(-2, -1))
    args.update(kw)
    return GLTransViT(**args)


# the shipped GLTrans recipe at a tiny size: ViT-tiny, 76x32 input (6 x 2 grid), 4 identities
tiny_cfg = functools.partial(gltrans_cfg, "cpu", (76, 32), 4)


def batch(b=8, size=(76, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(b, 3, *size, generator=g) * 255,
            "targets": torch.arange(b) // 2, "camids": torch.arange(b) % 3}


def twin_models(**opts_b):
    """Two GLTrans models with the same weights; the second built with ``opts_b``."""
    torch.manual_seed(0)
    a = build_model(tiny_cfg()).train()
    b = build_model(tiny_cfg(**opts_b)).train()
    b.load_state_dict(a.state_dict())
    return a, b


def loss_and_grads(model, data, autocast_dtype=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        losses = model({k: v.clone() for k, v in data.items()})
        total = sum(losses.values())
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, total.detach(), grads


@pytest.fixture
def count_sdpa(monkeypatch):
    """Counts calls of F.scaled_dot_product_attention (timm's fused path calls it)."""
    calls = []
    real = F.scaled_dot_product_attention

    def wrapped(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", wrapped)
    return calls


# ----------------------------------------------------------------------------- attention
def test_backbone_fused_and_manual_attention_agree(count_sdpa):
    torch.manual_seed(0)
    fused = tiny_vit(attn_impl="fused").train()
    manual = tiny_vit(attn_impl="manual").train()
    manual.load_state_dict(fused.state_dict())
    x = torch.randn(3, 3, 64, 32)
    of, om = fused(x), manual(x)
    assert len(count_sdpa) == 2 and count_sdpa[0] == (3, 2, 11, 16)  # B x h x (1+N) x d
    n_fused = len(count_sdpa)
    for a, b in zip(of.cls + of.patches, om.cls + om.patches):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(count_sdpa) == n_fused  # the manual model never called SDPA
    sum(t.square().sum() for t in of.cls + of.patches).backward()
    sum(t.square().sum() for t in om.cls + om.patches).backward()
    for (n, pa), (_, pb) in zip(fused.named_parameters(), manual.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4, msg=n)


@pytest.mark.parametrize("shared,rows", [(True, 6), (True, 7), (False, 6)])
def test_ptl_fused_and_manual_attention_agree(count_sdpa, shared, rows):
    torch.manual_seed(0)
    d, b, wg = 32, 3, 2
    kw = dict(embed_dim=d, num_parts=3, depth=2, shared=shared, num_cls=3, num_heads=2,
              part_token_init="trunc_normal")
    fused, manual = PTL(attn_impl="fused", **kw), PTL(attn_impl="manual", **kw)
    manual.load_state_dict(fused.state_dict())
    tokens = torch.randn(b, rows * wg, d, requires_grad=True)
    cls = [torch.randn(b, d) for _ in range(3)]
    of = fused(tokens, (rows, wg), cls)
    assert len(count_sdpa) == (2 if shared and rows == 6 else 6)  # one batched call per layer
    om = manual(tokens, (rows, wg), cls)
    assert len(count_sdpa) == (2 if shared and rows == 6 else 6)
    torch.testing.assert_close(of, om, atol=1e-5, rtol=1e-5)
    gf, = torch.autograd.grad(of.square().sum(), tokens)
    gm, = torch.autograd.grad(om.square().sum(), tokens)
    torch.testing.assert_close(gf, gm, atol=1e-4, rtol=1e-4)


def test_auto_attention_policy():
    x = torch.zeros(1)
    with torch.no_grad():
        assert speed.use_fused_attention("auto", x, 10)  # inference: always SDPA
    assert speed.use_fused_attention("auto", x, 211)  # CPU fp32 training, long sequence
    assert not speed.use_fused_attention("auto", x, 74)  # CPU fp32 training, short sequence
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not speed.use_fused_attention("auto", x, 211)  # CPU bf16 training
    assert speed.use_fused_attention("fused", x, 3) and not speed.use_fused_attention(
        "manual", x, 500)
    with pytest.raises(ValueError, match="MODEL.ATTN_IMPL"):
        tiny_vit(attn_impl="flash")


def test_attn_impl_from_config(count_sdpa):
    cfg = tiny_cfg()
    cfg.MODEL.ATTN_IMPL = "manual"  # read with a default while the key is not declared
    model = build_model(cfg).eval()
    with torch.no_grad():
        model(batch(2)["images"])
    assert count_sdpa == []
    assert model.backbone.attn_impl == "manual" and model.heads.lmf.ptl.attn_impl == "manual"
    assert build_model(tiny_cfg()).backbone.attn_impl == "auto"  # default without the key


# ----------------------------------------------------------------------------- AMP
def test_bf16_autocast_keeps_losses_and_gradients_close():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    data = batch(8)
    l32, t32, g32 = loss_and_grads(model, data)
    l16, t16, g16 = loss_and_grads(model, data, torch.bfloat16)
    assert set(l16) == set(l32) and len(l32) == 10  # 5 branches x (CE, triplet)
    for k in l32:
        assert l16[k].dtype == torch.float32  # losses are computed in fp32 under autocast
        torch.testing.assert_close(l16[k], l32[k], rtol=3e-2, atol=3e-3, msg=k)
    torch.testing.assert_close(t16, t32, rtol=1e-2, atol=1e-3)
    # gradients: same direction (bf16 has an 8-bit mantissa); parameters whose fp32 gradient
    # is ~0 (e.g. the PTL's last LayerNorm bias, 1e-8) only see bf16 rounding noise: skipped
    flat32 = torch.cat([g32[n].flatten() for n in g32])
    flat16 = torch.cat([g16[n].flatten() for n in g32])
    assert F.cosine_similarity(flat16, flat32, dim=0) > 0.99
    big = max(g.norm() for g in g32.values())
    cos = {n: F.cosine_similarity(g16[n].flatten(), g32[n].flatten(), dim=0).item()
           for n in g32 if g32[n].norm() > 1e-3 * big}
    assert len(cos) > 0.8 * len(g32) and min(cos.values()) > 0.95, cos


# ----------------------------------------------------------------------------- checkpointing
def _saved_bytes(model, data):
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sum(model({k: v.clone() for k, v in data.items()}).values())
    return sum(seen.values())


def test_grad_checkpoint_same_losses_and_grads_less_memory():
    plain, ckpt = twin_models(**{"MODEL.BACKBONE.GRAD_CHECKPOINT": True})
    assert ckpt.backbone.grad_checkpoint and not plain.backbone.grad_checkpoint
    data = batch(8)
    lp, tp, gp = loss_and_grads(plain, data)
    lc, tc, gc = loss_and_grads(ckpt, data)
    for k in lp:
        torch.testing.assert_close(lc[k], lp[k], msg=k)
    assert set(gc) == set(gp)
    for n in gp:
        torch.testing.assert_close(gc[n], gp[n], atol=1e-6, rtol=1e-4, msg=n)
    saved_plain, saved_ckpt = _saved_bytes(plain, data), _saved_bytes(ckpt, data)
    assert saved_ckpt < 0.5 * saved_plain, (saved_ckpt, saved_plain)


# ----------------------------------------------------------------------------- torch.compile
def test_compile_unavailable_logs_and_stays_eager(monkeypatch, caplog):
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    ok, why = speed.compile_available("cpu")
    assert not ok and "C++ compiler" in why
    with caplog.at_level(logging.WARNING, logger="gltrans_plugin.modeling.attention_impl"):
        m = tiny_vit(compile_blocks=True)
    assert not m._compiled and "not available" in caplog.text
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in m.blocks)


def test_compile_failure_at_first_call_falls_back_to_eager(caplog):
    import torch._dynamo.exc

    torch.manual_seed(0)
    ref = tiny_vit().eval()
    m = tiny_vit().eval()
    m.load_state_dict(ref.state_dict())

    def broken(*a, **k):
        raise torch._dynamo.exc.InternalTorchDynamoError("simulated compile failure")

    for blk in m.blocks:  # what a failing nn.Module.compile() looks like at the first call
        blk._compiled_call_impl = broken
    m._compiled = True
    x = torch.randn(2, 3, 64, 32)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = m(x)
    assert "falling back to eager" in caplog.text and not m._compiled
    assert all(b._compiled_call_impl is None for b in m.blocks)
    with torch.no_grad():
        torch.testing.assert_close(out.cls[-1], ref(x).cls[-1])
    # an error of the model itself is not swallowed
    with pytest.raises(ValueError, match="smaller than one patch"):
        m(torch.randn(1, 3, 12, 32))


@pytest.mark.slow
def test_compiled_model_matches_eager():
    ok, why = speed.compile_available("cpu")
    if not ok:
        pytest.skip(f"torch.compile unavailable: {why}")
    eager, compiled = twin_models(**{"MODEL.COMPILE": True})
    assert compiled.backbone._compiled and compiled.heads.lmf.ptl._compiled
    assert all(b._compiled_call_impl is not None for b in compiled.backbone.blocks)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names unchanged
    data = batch(4)
    le, te, ge = loss_and_grads(eager, data)
    lc, tc, gc = loss_and_grads(compiled, data)
    assert compiled.backbone._compiled, "compile fell back to eager"
    torch.testing.assert_close(tc, te, atol=1e-4, rtol=1e-4)
    for n in ge:
        torch.testing.assert_close(gc[n], ge[n], atol=1e-4, rtol=1e-3, msg=n)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(data["images"]), eager(data["images"]),
                                   atol=1e-4, rtol=1e-4)
