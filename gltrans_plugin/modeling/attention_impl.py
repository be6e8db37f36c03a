"""Speed switches shared by the backbone and the PTL: attention implementation, torch.compile.

Shape letters: B batch, h heads, L sequence length, d head dim.

Attention (``MODEL.ATTN_IMPL``, read with a default of "auto"): every attention in the model is
a timm ``Attention`` (backbone blocks and PTL layers), which computes softmax(q k^T / sqrt(d)) v
either with ``F.scaled_dot_product_attention`` (fused) or with explicit matmuls and a softmax
(manual); its ``fused_attn`` attribute picks one per call.
    "fused"   always SDPA (flash / memory-efficient kernels on CUDA: never stores the
              B x h x L x L attention matrix)
    "manual"  always the explicit softmax(q k^T) v (the reference; stores B x h x L x L)
    "auto"    SDPA, except for CPU training (gradients on) where, measured with torch 2.14 on
              a Xeon with AMX (docs/speed.md), the CPU flash-attention *backward* is slower than
              the explicit path: 1.7x at L = 211 and 5x at L = 74 under bf16 autocast, 1.4x at
              L = 74 in fp32. So on CPU with gradients: manual under bf16/fp16 autocast, and in
              fp32 for short sequences (L < ``CPU_FP32_FUSED_MIN_LEN``).
Both paths give the same values (tests/modeling/test_speed_features.py).

torch.compile (``MODEL.COMPILE``, default False): ``compile_modules`` compiles the transformer
blocks in place (``nn.Module.compile``: parameter names, state dicts and forward hooks stay as
they are). When it is not available (no dynamo on this Python, no C++ compiler for the CPU
backend) a log line says why and the model stays eager; ``run_with_fallback`` turns a compile
failure at the first call into one warning and an eager rerun.
"""
import logging
import os
import shutil
from typing import Iterable, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

ATTN_IMPLS = ("auto", "fused", "manual")
CPU_FP32_FUSED_MIN_LEN = 128  # CPU fp32 training: SDPA from this sequence length on

__all__ = [
    "ATTN_IMPLS",
    "check_attn_impl",
    "compile_available",
    "compile_modules",
    "is_compile_error",
    "set_fused_attention",
    "uncompile_modules",
    "use_fused_attention",
]


def check_attn_impl(impl: str) -> str:
    impl = str(impl).lower()
    if impl not in ATTN_IMPLS:
        raise ValueError(f"MODEL.ATTN_IMPL={impl!r} is not one of {ATTN_IMPLS}; use 'auto' "
                         f"(fused SDPA except where it is measured slower) unless debugging.")
    return impl


def use_fused_attention(impl: str, x: torch.Tensor, seq_len: int) -> bool:
    """Whether attention over ``seq_len`` tokens of ``x`` should use SDPA (see module doc)."""
    if impl != "auto":
        return impl == "fused"
    if torch.jit.is_tracing() or x.device.type != "cpu" or not torch.is_grad_enabled():
        return True
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in (
        torch.bfloat16, torch.float16
    ):
        return False
    return int(seq_len) >= CPU_FP32_FUSED_MIN_LEN


def set_fused_attention(blocks: Iterable[nn.Module], fused: bool) -> None:
    """Set timm's per-module ``fused_attn`` switch of every block's attention."""
    for blk in blocks:
        attn = getattr(blk, "attn", None)
        if attn is not None and hasattr(attn, "fused_attn") and attn.fused_attn != fused:
            attn.fused_attn = fused


# ----------------------------------------------------------------------------- torch.compile
def compile_available(device_type: str = "cpu") -> Tuple[bool, str]:
    """(available, reason) for torch.compile's default (inductor) backend on ``device_type``."""
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile"
    try:
        from torch import _dynamo

        if not _dynamo.is_dynamo_supported():
            return False, "TorchDynamo does not support this Python version"
    except Exception as e:  # noqa: BLE001  (any import problem means: not available)
        return False, f"TorchDynamo cannot be imported ({e})"
    if device_type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if not (shutil.which(cxx) or shutil.which("c++") or shutil.which("clang++")):
            return False, "inductor's CPU backend needs a C++ compiler (g++ / clang++), none found"
    return True, ""


def compile_modules(modules: Iterable[nn.Module], what: str, device_type: str = "cpu",
                    **compile_kwargs) -> bool:
    """Compile each module in place; returns False (and logs why) when compile is unavailable."""
    ok, why = compile_available(device_type)
    if not ok:
        logger.warning("MODEL.COMPILE is on but torch.compile is not available: %s. %s runs "
                       "eagerly.", why, what)
        return False
    n = 0
    for m in modules:
        m.compile(**compile_kwargs)
        n += 1
    logger.info("torch.compile: %d %s compiled in place (compiled on the first call).", n, what)
    return True


def uncompile_modules(modules: Iterable[nn.Module]) -> None:
    """Undo ``nn.Module.compile``: the modules run eagerly again."""
    for m in modules:
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None


def is_compile_error(e: BaseException) -> bool:
    """Whether ``e`` comes from TorchDynamo / Inductor (not from the model's own code)."""
    mod = type(e).__module__ or ""
    return (mod.startswith(("torch._dynamo", "torch._inductor"))
            or "InductorError" in type(e).__name__)


def compile_fallback(modules: Iterable[nn.Module], what: str, e: BaseException,
                     log: Optional[logging.Logger] = None) -> None:
    """Log a compile failure once and make ``modules`` eager."""
    (log or logger).warning("torch.compile failed for %s (%s: %s); falling back to eager mode.",
                            what, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    uncompile_modules(modules)
