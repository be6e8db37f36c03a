"""The CUDA paths on a real GPU: AMP training steps (fp16 with GradScaler, bf16), fused SDPA vs
explicit attention, the evaluator on CUDA vs CPU at Market-1501 size, the flip test,
MODEL.COMPILE vs eager, and a one-process NCCL launch of projects/train_net.py (the last two,
the slowest, run last).

Every test here is marked ``cuda`` and skipped without a GPU: ``pytest -m cuda`` runs them
(``bench/gpu/check.py`` does, on the GPU machine, one result line per test as it finishes).
The device-independent halves (the AMP step and the flip test on CPU) run everywhere, from
tests/devices/test_device_policy.py.
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

from helpers import check_amp_steps, gltrans_cfg, make_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
U32 = 2.0 ** -24  # unit roundoff of float32


# ----------------------------------------------------------------------------- helpers
def twins(device, opts_a=None, **opts_b):
    """Two GLTrans models with the same weights on ``device``, built with opts_a / opts_b."""
    torch.manual_seed(0)
    a = build_model(gltrans_cfg(device, **(opts_a or {})))
    b = build_model(gltrans_cfg(device, **opts_b))
    b.load_state_dict(a.state_dict())
    return a, b


# ----------------------------------------------------------------------------- TF32
def set_tf32(on):
    """Switch TF32 for CUDA float32 products through torch's current API
    (``torch.backends.cuda.matmul.fp32_precision``, torch >= 2.9; the legacy ``allow_tf32``
    flag before it).  Returns a function restoring the previous state."""
    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):
        old = mm.fp32_precision
        mm.fp32_precision = "tf32" if on else "ieee"
        return lambda: setattr(mm, "fp32_precision", old)
    old = mm.allow_tf32
    mm.allow_tf32 = bool(on)
    return lambda: setattr(mm, "allow_tf32", old)


def product_error(n=1024):
    """Max relative error of a float32 CUDA product against float64: ~1e-6 in full fp32,
    ~1e-3 in TF32 (inputs rounded to 11 significant bits)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", generator=g)
    b = torch.randn(n, n, device="cuda", generator=g)
    ref = a.double() @ b.double()
    return float(((a @ b).double() - ref).abs().max() / ref.abs().max())


def test_tf32_switch_takes():
    """The switch the evaluator test relies on: on, a product is TF32 (error > 1e-4); off, full
    fp32 (< 1e-5).  TF32 exists from compute capability 8.0 (Ampere) on."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no TF32 before compute capability 8.0")
    restore = set_tf32(True)
    try:
        on = product_error()
    finally:
        restore()
    restore = set_tf32(False)
    try:
        off = product_error()
    finally:
        restore()
    assert on > 1e-4 and off < 1e-5, (on, off)


# ----------------------------------------------------------------------------- AMP
def test_amp_fp16_training_steps_cuda():
    """fp16 with fast-reid's GradScaler: it skips the steps whose scaled gradients overflow
    (halving its scale, from 2^16) and takes the others; over 12 steps at least 3 are taken
    (9 halvings, to a scale of 128, would mean fp16 gradients out of range: a real fault)."""
    steps = 12
    _, scales = check_amp_steps("cuda", "fp16", steps=steps)
    taken = sum(b >= a for a, b in zip(scales, scales[1:]))  # a skipped step lowers the scale
    assert taken >= 3, f"GradScaler took {taken} of {steps} steps; scales {scales}"


def test_amp_bf16_training_steps_cuda():
    check_amp_steps("cuda", "bf16")


# ----------------------------------------------------------------------------- attention
def test_fused_sdpa_matches_explicit_attention():
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    attn = Attention(192, num_heads=3, qkv_bias=True).cuda().eval()
    x = torch.randn(8, 211, 192, device="cuda")
    restore = set_tf32(False)  # both paths in full fp32: 1e-5 holds (TF32 would not)
    try:
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
    finally:
        restore()
    # bf16 keeps 8 significant bits: relative 2^-8 = 4e-3 per rounding, a few roundings deep
    torch.testing.assert_close(fused16.float(), ref.float(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(fused16.float(), ref16.float(), atol=3e-2, rtol=3e-2)


def test_fused_sdpa_model_matches_explicit():
    manual, fused = twins("cuda", {"MODEL.ATTN_IMPL": "manual"}, **{"MODEL.ATTN_IMPL": "fused"})
    data = make_batch("cuda", b=8)
    fused.eval(), manual.eval()
    restore = set_tf32(False)
    try:
        with torch.no_grad():
            a = fused(data["images"].clone())
            b = manual(data["images"].clone())
            scale = float(b.abs().max())
            torch.testing.assert_close(a, b, atol=1e-4 * scale, rtol=1e-4)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                a16 = fused(data["images"].clone()).float()
                b16 = manual(data["images"].clone()).float()
    finally:
        restore()
    cos = torch.nn.functional.cosine_similarity(a16, b16, dim=1)
    assert float(cos.min()) > 0.99, cos


# ----------------------------------------------------------------------------- evaluator
MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6)


def market_features(kind, dim=768, seed=0):
    """Market-1501-sized features: "gauss" (identity centre + camera offset + noise) or "sign"
    (its signs / sqrt(dim) with dim = 4^k: every entry is +-2^-k, every product +-2^-2k and
    every sum of dim of them a multiple of 2^-2k below 1, all exact in float32, so CPU and GPU
    distances are bit-identical whatever the summation order; 768 dims would not be: 1/sqrt(768)
    is not a power of two)."""
    g = torch.Generator().manual_seed(seed)
    n = MARKET["num_query"] + MARKET["num_gallery"]
    pids = torch.arange(n) % MARKET["num_ids"]
    pids = pids[torch.randperm(n, generator=g)]
    cams = torch.randint(0, MARKET["num_cams"], (n,), generator=g)
    centres = torch.randn(MARKET["num_ids"], dim, generator=g)
    offsets = torch.randn(MARKET["num_cams"], dim, generator=g) * 0.5
    feats = centres[pids] + offsets[cams] + 2.0 * torch.randn(n, dim, generator=g)
    if kind == "sign":
        assert 4 ** round(np.log(dim) / np.log(4)) == dim, "sign features need dim = 4^k"
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


def distance_comparison(feats, pids, cams, metric, chunk=512):
    """The evaluator's distances on CPU and on CUDA (``ranking.compute_distances``), with the
    caller's TF32 on, against float64.  Returns max |cuda - cpu|, the mean errors of both
    against float64, the number of valid queries and that of the valid queries whose ranking
    the difference can change: those with a true match and a valid non-match whose CPU
    distances are within 2 x max |cuda - cpu| of each other (only such a pair can swap)."""
    from gltrans_plugin.evaluation.ranking import compute_distances, prepare_features

    nq = MARKET["num_query"]
    f = prepare_features(feats, metric)  # on CPU, as the evaluator: the same bits for both
    q, g = f[:nq], f[nq:]
    qp, gp, qc, gc = pids[:nq], pids[nq:], cams[:nq], cams[nq:]
    qd, gd = q.cuda(), g.cuda()
    delta = err_cpu = err_gpu = 0.0
    cpu_chunks = []
    for s in range(0, nq, chunk):
        d_cpu = compute_distances(q[s:s + chunk], g, metric)
        restore = set_tf32(True)  # the evaluator must not rank in TF32 whatever the caller set
        try:
            d_gpu = compute_distances(qd[s:s + chunk], gd, metric)
        finally:
            restore()
        q64, g64 = qd[s:s + chunk].double(), gd.double()
        if metric == "cosine":
            d64 = 1 - q64 @ g64.t()
        else:
            d64 = (q64 ** 2).sum(1, keepdim=True) + (g64 ** 2).sum(1) - 2 * q64 @ g64.t()
        dc = d_cpu.cuda()
        delta = max(delta, float((d_gpu - dc).abs().max()))
        err_cpu += float((dc.double() - d64).abs().sum())
        err_gpu += float((d_gpu.double() - d64).abs().sum())
        cpu_chunks.append(dc)
    n = nq * len(g)
    fragile = num_valid = 0
    gp_d, gc_d = gp.cuda(), gc.cuda()
    for i, s in enumerate(range(0, nq, chunk)):
        dc = cpu_chunks[i]
        same = qp[s:s + chunk].cuda()[:, None] == gp_d[None, :]
        junk = same & (qc[s:s + chunk].cuda()[:, None] == gc_d[None, :])
        d = dc.masked_fill(junk, float("inf"))  # junk is not ranked: sorted to the end
        d, order = d.sort(dim=1, stable=True)
        match = same.gather(1, order) & torch.isfinite(d)
        valid = torch.isfinite(d)
        pair = valid[:, 1:] & valid[:, :-1] & (match[:, 1:] != match[:, :-1])
        close = pair & ((d[:, 1:] - d[:, :-1]) <= 2 * delta)
        has_match = match.any(dim=1)  # a valid query: counted in the metrics
        num_valid += int(has_match.sum())
        fragile += int((close.any(dim=1) & has_match).sum())
    return {"delta": delta, "mean_err_cpu": err_cpu / n, "mean_err_gpu": err_gpu / n,
            "fragile_queries": fragile, "num_valid": num_valid}


def fp32_distance_bound(feats, metric, dim):
    """Worst-case |cuda - cpu| of one distance when both are float32 products of the same
    features in any summation order: each is within gamma_n * sum |q_i g_i| of the exact value
    (gamma_n = n u / (1 - n u), u = 2^-24, n = dim + 2 for the norms and the subtraction), and
    sum |q_i g_i| <= |q| |g| (Cauchy-Schwarz): 2 gamma for unit features (cosine), 2 gamma
    (|q| + |g|)^2 for squared euclidean."""
    n = dim + 2
    gamma = n * U32 / (1 - n * U32)
    if metric == "cosine":
        return 2 * gamma * 1.001  # unit rows up to the rounding of their normalisation
    r = float(torch.linalg.vector_norm(feats.float(), dim=1).max())
    return 2 * gamma * (2 * r) ** 2


@pytest.mark.parametrize("kind,metric,dim", [("sign", "cosine", 256), ("gauss", "cosine", 768),
                                             ("gauss", "euclidean", 768)])
def test_evaluator_cuda_equals_cpu_market_size(kind, metric, dim):
    """TEST.EVAL_DEVICE cuda vs cpu at Market-1501 size, with TF32 switched on by the caller.

    Tolerances, from the arithmetic: "sign" features have exact products, so the distances and
    every metric are bit-identical.  "gauss" features (768-d) do not: CPU and GPU sum in other
    orders, so each distance differs by at most the float32 bound (fp32_distance_bound), and
    the CUDA distances' mean error against float64 stays within 10x the CPU's (TF32, which
    rounds inputs to 11 bits, is ~400x: measured on CPU with inputs rounded to TF32).  A metric
    can then differ only through the queries whose ranking the difference can change (a true
    match and a valid non-match within 2 x that difference); each query weighs 100 / (valid
    queries) percent in every metric, so each metric is within (those queries) x that weight.
    """
    feats, pids, cams = market_features(kind, dim)
    cpu = run_evaluator("cpu", feats, pids, cams, metric)
    restore = set_tf32(True)
    try:
        gpu = run_evaluator("cuda", feats, pids, cams, metric)
    finally:
        restore()
    assert set(cpu) == set(gpu)
    if kind == "sign":
        assert cpu == gpu
        return
    cmp = distance_comparison(feats, pids, cams, metric)
    bound = fp32_distance_bound(feats, metric, dim)
    assert cmp["delta"] <= bound, (cmp, bound)
    assert cmp["mean_err_gpu"] <= 10 * cmp["mean_err_cpu"], cmp  # not TF32
    weight = 100.0 / cmp["num_valid"]
    tol = cmp["fragile_queries"] * weight + 1e-9
    print(f"{kind}/{metric}: {cmp}; tolerance {tol:.4f} percent")
    for k in cpu:
        assert abs(cpu[k] - gpu[k]) <= tol, (k, cpu[k], gpu[k], cmp)


# ----------------------------------------------------------------------------- flip test
def test_flip_test_on_cuda_matches_cpu():
    from gltrans_plugin.evaluation.inference import flip_features

    torch.manual_seed(0)
    model = build_model(gltrans_cfg("cuda")).eval()
    inputs = make_batch("cuda", b=4)
    raw = inputs["images"].clone()
    restore = set_tf32(False)
    try:
        with torch.no_grad():
            got = flip_features(model, inputs, flip_test=True)
            a = model({**inputs, "images": raw.clone()})
            b = model({**inputs, "images": raw.flip(dims=[3])})
    finally:
        restore()
    assert torch.equal(inputs["images"], raw), "the flip test changed its inputs"
    torch.testing.assert_close(got, (a + b) / 2, atol=1e-5, rtol=1e-5)
    cpu_model = build_model(gltrans_cfg("cpu")).eval()
    cpu_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = flip_features(cpu_model, {k: v.cpu() for k, v in inputs.items()}, True)
    torch.testing.assert_close(got.cpu(), ref, atol=1e-3, rtol=1e-3)


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
    restore = set_tf32(False)
    try:
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
    finally:
        restore()


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
