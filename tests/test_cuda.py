"""The CUDA paths on a real GPU: AMP training steps (fp16 with GradScaler, bf16), fused SDPA vs
explicit attention, the evaluator on CUDA vs CPU at Market-1501 size, MODEL.COMPILE vs eager,
the flip test, and a one-process NCCL launch of projects/train_net.py.

Every test here is marked ``cuda`` and skipped without a GPU: ``pytest -m cuda`` runs them
(``bench/gpu/check.py`` does, on the GPU machine).  The device-independent halves (the AMP step
and the flip test on CPU) run everywhere, from tests/test_device_policy.py.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import gltrans_plugin  # noqa: F401  (compat first)
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model
from gltrans_plugin.config import add_gltrans_config

from conftest import set_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]


# ----------------------------------------------------------------------------- helpers
def gltrans_cfg(device, size=(128, 64), **opts):
    """The shipped GLTrans recipe with a ViT-tiny backbone (random init) on ``device``."""
    cfg = add_gltrans_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "GLTrans", "Base-GLTrans.yml"))
    cfg.MODEL.BACKBONE.DEPTH = "tiny"
    cfg.MODEL.BACKBONE.FEAT_DIM = 192
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.NUM_CAMERAS = 3
    cfg.MODEL.BACKBONE.DROP_PATH_RATIO = 0.0
    cfg.MODEL.HEADS.NUM_CLASSES = 8
    cfg.MODEL.DEVICE = device
    cfg.INPUT.SIZE_TRAIN = list(size)
    cfg.INPUT.SIZE_TEST = list(size)
    return set_keys(cfg, opts)


def make_batch(device, b=16, size=(128, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"images": torch.rand(b, 3, *size, generator=g) * 255,
           "targets": torch.arange(b) // 4 % 8, "camids": torch.arange(b) % 3}
    return {k: v.to(device) for k, v in out.items()}


def twins(device, opts_a=None, **opts_b):
    """Two GLTrans models with the same weights on ``device``, built with opts_a / opts_b."""
    torch.manual_seed(0)
    a = build_model(gltrans_cfg(device, **(opts_a or {})))
    b = build_model(gltrans_cfg(device, **opts_b))
    b.load_state_dict(a.state_dict())
    return a, b


def amp_steps(device, dtype, steps=3, size=(128, 64), b=16):
    """``steps`` training steps of fast-reid's AMPTrainer (the plugin's run_step) with
    SOLVER.AMP.DTYPE ``dtype``; returns (total losses, max weight change, trainer)."""
    from fastreid.engine.train_loop import AMPTrainer
    from fastreid.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(gltrans_cfg(device, size)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [make_batch(device, b, size, seed=i) for i in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = AMPTrainer(model, batches, opt, None)
    trainer.amp_dtype = dtype
    losses = []
    with EventStorage(0) as storage:
        for i in range(steps):
            trainer.iter = storage.iter = i
            trainer.run_step()
            losses.append(storage.history("total_loss").latest())
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    return losses, moved, trainer


def check_amp_steps(device, dtype, **kw):
    losses, moved, trainer = amp_steps(device, dtype, **kw)
    assert all(np.isfinite(losses)), losses
    assert moved > 0, "no weight moved"
    scaler = trainer.grad_scaler
    assert scaler.is_enabled()
    if dtype == "fp16":  # the scaler ran: its scale exists and is finite
        assert np.isfinite(scaler.get_scale()) and scaler.get_scale() > 0
    return losses


def check_flip(device, size=(128, 64)):
    """flip_features on ``device``: mean of the raw and the flipped pass, inputs untouched."""
    from gltrans_plugin.evaluation.inference import flip_features

    torch.manual_seed(0)
    model = build_model(gltrans_cfg(device, size)).eval()
    inputs = make_batch(device, b=4, size=size)
    raw = inputs["images"].clone()
    with torch.no_grad():
        got = flip_features(model, inputs, flip_test=True)
        a = model({**inputs, "images": raw.clone()})
        b = model({**inputs, "images": raw.flip(dims=[3])})
    assert torch.equal(inputs["images"], raw), "the flip test changed its inputs"
    torch.testing.assert_close(got, (a + b) / 2, atol=1e-5, rtol=1e-5)
    return model, inputs, got


# ----------------------------------------------------------------------------- AMP
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_amp_training_step_cuda(dtype):
    check_amp_steps("cuda", dtype)


# ----------------------------------------------------------------------------- attention
def test_fused_sdpa_matches_explicit_attention():
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    attn = Attention(192, num_heads=3, qkv_bias=True).cuda().eval()
    x = torch.randn(8, 211, 192, device="cuda")
    with torch.no_grad():
        attn.fused_attn = False
        ref = attn(x)
        attn.fused_attn = True
        fused = attn(x)
        torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)  # fp32
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused16 = attn(x)
            attn.fused_attn = False
            ref16 = attn(x)
    torch.testing.assert_close(fused16.float(), ref.float(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(fused16.float(), ref16.float(), atol=3e-2, rtol=3e-2)


def test_fused_sdpa_model_matches_explicit():
    manual, fused = twins("cuda", {"MODEL.ATTN_IMPL": "manual"}, **{"MODEL.ATTN_IMPL": "fused"})
    data = make_batch("cuda", b=8)
    fused.eval(), manual.eval()
    with torch.no_grad():
        a = fused(data["images"].clone())
        b = manual(data["images"].clone())
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, atol=1e-4 * scale, rtol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a16 = fused(data["images"].clone()).float()
            b16 = manual(data["images"].clone()).float()
    cos = torch.nn.functional.cosine_similarity(a16, b16, dim=1)
    assert float(cos.min()) > 0.99, cos


# ----------------------------------------------------------------------------- evaluator
MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6)


def market_features(kind, dim=768, seed=0):
    """Market-1501-sized features: "gauss" (identity centre + camera offset + noise) or "sign"
    (its signs / 16: unit rows whose products are exact in float32, so CPU and GPU distances
    are bit-identical and every tie is broken by index alike)."""
    g = torch.Generator().manual_seed(seed)
    n = MARKET["num_query"] + MARKET["num_gallery"]
    pids = torch.arange(n) % MARKET["num_ids"]
    pids = pids[torch.randperm(n, generator=g)]
    cams = torch.randint(0, MARKET["num_cams"], (n,), generator=g)
    centres = torch.randn(MARKET["num_ids"], dim, generator=g)
    offsets = torch.randn(MARKET["num_cams"], dim, generator=g) * 0.5
    feats = centres[pids] + offsets[cams] + 2.0 * torch.randn(n, dim, generator=g)
    if kind == "sign":
        feats = torch.where(feats >= 0, 1.0, -1.0) / dim ** 0.5
    return feats, pids, cams


def run_evaluator(device, feats, pids, cams, metric="cosine", batch=512):
    from gltrans_plugin.evaluation import ChunkedReidEvaluator

    cfg = add_gltrans_config(get_cfg())
    cfg.TEST.EVAL_DEVICE = device
    cfg.TEST.METRIC = metric
    ev = ChunkedReidEvaluator(cfg, MARKET["num_query"])
    ev.reset()
    for s in range(0, len(feats), batch):
        ev.process({"targets": pids[s:s + batch], "camids": cams[s:s + batch]},
                   feats[s:s + batch].clone())
    return ev.evaluate()


@pytest.mark.parametrize("kind,metric", [("sign", "cosine"), ("gauss", "cosine"),
                                         ("gauss", "euclidean")])
def test_evaluator_cuda_equals_cpu_market_size(kind, metric):
    feats, pids, cams = market_features(kind)
    cpu = run_evaluator("cpu", feats, pids, cams, metric)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # the evaluator must not rank in TF32
    try:
        gpu = run_evaluator("cuda", feats, pids, cams, metric)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert set(cpu) == set(gpu)
    for k in cpu:
        tol = 0.0 if kind == "sign" else 1e-6 * 100  # results are in percent
        assert abs(cpu[k] - gpu[k]) <= tol, (k, cpu[k], gpu[k])


# ----------------------------------------------------------------------------- compile
def test_compile_on_cuda_matches_eager():
    from gltrans_plugin.modeling import attention_impl as speed

    ok, why = speed.compile_available("cuda")
    if not ok:
        pytest.skip(f"torch.compile unavailable: {why}")
    eager, compiled = twins("cuda", **{"MODEL.COMPILE": True})
    assert compiled.backbone._compiled and compiled.heads.lmf.ptl._compiled
    data = make_batch("cuda", b=8)
    grads = []
    for m in (eager, compiled):
        m.train().zero_grad(set_to_none=True)
        total = sum(m({k: v.clone() for k, v in data.items()}).values())
        total.backward()
        grads.append((total.detach(), {n: p.grad for n, p in m.named_parameters()
                                       if p.grad is not None}))
    assert compiled.backbone._compiled, "compile fell back to eager"
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-4, rtol=1e-4)
    for n, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][n], g, atol=1e-4, rtol=1e-3, msg=n)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(data["images"].clone()),
                                   eager(data["images"].clone()), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- flip test
def test_flip_test_on_cuda_matches_cpu():
    model, inputs, got = check_flip("cuda")
    cpu_model = build_model(gltrans_cfg("cpu")).eval()
    cpu_model.load_state_dict(model.state_dict())
    from gltrans_plugin.evaluation.inference import flip_features

    with torch.no_grad():
        ref = flip_features(cpu_model, {k: v.cpu() for k, v in inputs.items()}, True)
    torch.testing.assert_close(got.cpu(), ref, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------- NCCL launch
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nccl_launch_of_train_net(tmp_path):
    """projects/train_net.py's main in a spawned NCCL worker (world size 1: one GPU here)."""
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "bench", "gpu", "nccl_launch.py"),
           "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
           "--config-file", os.path.join(ROOT, "configs", "GLTrans", "synthetic_demo.yml"),
           "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(out), "DATASETS.ROOT", str(tmp_path / "data"),
           "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "16", "DATASETS.SYNTHETIC.NUM_TEST_IDS", "8",
           "SOLVER.MAX_EPOCH", "2", "SOLVER.IMS_PER_BATCH", "32", "SOLVER.WARMUP_EPOCHS", "0",
           "SOLVER.AMP.ENABLED", "True", "TEST.EVAL_PERIOD", "2", "TEST.EVAL_BEFORE_TRAIN",
           "False", "SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", "2",
           "TEST.EVAL_DEVICE", "cuda"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    assert "BACKEND nccl" in text, text[-2000:]
    assert (out / "model_final.pth").is_file()
    assert "Rank-1" in text or (out / "results.json").is_file()
