"""Parameters and FLOPs per module (fvcore), with fused attention counted, cross-checked.

Shape letters: B batch, h heads, Nq / Nk query / key tokens, d head dim (dv of the values).

fvcore counts by tracing (``torch.jit.trace``) and skips any op it has no handle for, with a
warning.  timm's blocks (the backbone and PTL) use ``F.scaled_dot_product_attention``, so without
a handle every attention product would be missing.  ``sdpa_flop_jit`` counts it as the two
matrix products it is, in fvcore's unit (one multiply-add = one "flop"):
    MACs = B * h * Nq * Nk * d  (Q K^T)  +  B * h * Nq * Nk * dv  (A V)
softmax / scaling are element-wise and not counted, as fvcore leaves all element-wise ops out.

Cross-check: ``torch.utils.flop_counter.FlopCounterMode`` (``counter_flops``) counts 2 flops per
multiply-add and only matrix products / convolutions / attention.  It runs attention in the math
backend, so the counter sees the two products as plain ``bmm`` and needs no attention formula
(on CPU the fused kernel, ``aten._scaled_dot_product_flash_attention_for_cpu``, has none and
would count 0); it counts any callable, a training step's backward included.  The two totals
agree when fvcore is restricted to the same ops (``fvcore_matmul_macs``):
``torch_flops == 2 * fvcore_matmul_macs``.  The table reports fvcore's full count (norms
included, as fvcore does by default).

This is the one FLOP counter of the project: ``tools/model_report.py`` and
``bench/model_bench.py`` use it.
"""
import logging
from collections import OrderedDict
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from ..export import InferenceWrapper

logger = logging.getLogger(__name__)

__all__ = ["count_flops", "counter_flops", "fvcore_matmul_macs", "model_report",
           "sdpa_flop_jit", "torch_flops"]

# fvcore's default handles for the ops FlopCounterMode counts too (products, convolutions)
_MATMUL_OPS = ("aten::addmm", "aten::bmm", "aten::_convolution", "aten::einsum", "aten::matmul",
               "aten::mm", "aten::linear")


def sdpa_flop_jit(inputs, outputs) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention`` (multiply-adds, see module doc)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])  # ... x Nq x d, ... x Nk x d, ... x Nk x dv
    batch = 1
    for s in q[:-2]:
        batch *= s
    nq, d = q[-2], q[-1]
    nk, dv = k[-2], v[-1]
    return int(batch * nq * nk * (d + dv))


def _inputs(model, images, camids):
    return (images,) if camids is None else (images, camids)


def count_flops(model: nn.Module, images: torch.Tensor, camids=None, matmul_only=False):
    """fvcore ``FlopCountAnalysis`` of the test forward with the attention handle installed."""
    from fvcore.nn import FlopCountAnalysis

    wrapped = model if isinstance(model, InferenceWrapper) else InferenceWrapper(model)
    fca = FlopCountAnalysis(wrapped, _inputs(wrapped, images, camids))
    if matmul_only:  # drop norms / pooling / upsampling (fvcore counts them, torch does not)
        from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

        handles = {op: _DEFAULT_SUPPORTED_OPS[op] for op in _MATMUL_OPS}
        fca.clear_op_handles()
        fca.set_op_handle(**handles)
    fca.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


def fvcore_matmul_macs(model: nn.Module, images: torch.Tensor, camids=None) -> int:
    """fvcore's total restricted to the ops FlopCounterMode counts (products, convs, attention)."""
    return int(count_flops(model, images, camids, matmul_only=True).total())


def counter_flops(fn: Callable[[], object]) -> Tuple[int, Dict[str, int]]:
    """``FlopCounterMode`` count of everything ``fn()`` runs (2 per multiply-add; a backward
    inside ``fn`` included), attention in the math backend (module doc): (total, {module name:
    flops}), module names rooted at the outermost module's class name (``GLTrans.heads.gae``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=None)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    per_module = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


@torch.no_grad()
def torch_flops(model: nn.Module, images: torch.Tensor, camids=None) -> int:
    """``counter_flops`` total of the test forward (2 per multiply-add)."""
    wrapped = model if isinstance(model, InferenceWrapper) else InferenceWrapper(model)
    return counter_flops(lambda: wrapped(*_inputs(wrapped, images, camids)))[0]


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3f}{unit}"
    return str(int(n))


def model_report(model: nn.Module, images: torch.Tensor, camids=None, max_depth: int = 3,
                 cross_check: bool = True) -> Dict:
    """Parameters and FLOPs per module up to ``max_depth`` (a markdown table) and the totals.

    Returns {"table": str, "rows": [(module, params, flops)], "params": int, "flops": int,
    "flops_matmul": int, "torch_flops": int, "cross_check_ok": bool}.
    """
    from fvcore.nn import parameter_count

    wrapped = InferenceWrapper(model)
    images = images.to(next(model.parameters()).device)
    fca = count_flops(wrapped, images, camids)
    by_module = fca.by_module()
    params = parameter_count(wrapped)
    rows = []
    for name in params:
        depth = 0 if name == "" else name.count(".") + 1
        if depth > max_depth + 1 or (name and not name.startswith("model")):
            continue
        if depth and name.split(".")[-1].isdigit() and depth > 2:
            continue  # list items (blocks.0, blocks.1, ...): shown through their parent
        shown = name[len("model."):] if name.startswith("model.") else (name or "model")
        if shown == "model" and name:
            continue
        rows.append((shown or "model", int(params[name]), int(by_module.get(name, 0))))
    out = OrderedDict(rows=rows, params=int(params[""]), flops=int(fca.total()))
    lines = ["| module | parameters | FLOPs (fvcore, MACs) |", "|:--|--:|--:|"]
    for name, p, f in rows:
        indent = "&nbsp;&nbsp;" * (0 if name == "model" else name.count("."))
        lines.append(f"| {indent}{name} | {_fmt(p)} | {_fmt(f)} |")
    if cross_check:
        out["flops_matmul"] = fvcore_matmul_macs(wrapped, images, camids)
        out["torch_flops"] = torch_flops(wrapped, images, camids)
        ok = abs(out["torch_flops"] - 2 * out["flops_matmul"]) <= 1e-6 * max(1, out["torch_flops"])
        out["cross_check_ok"] = bool(ok)
        lines += ["", f"Input {tuple(images.shape)}{'' if camids is None else ' + camera ids'}: "
                      f"{_fmt(out['params'])} parameters, {_fmt(out['flops'])} fvcore FLOPs "
                      f"(multiply-adds; attention counted).",
                  f"Cross-check: fvcore products/convs/attention {_fmt(out['flops_matmul'])} "
                  f"MACs x 2 = {_fmt(2 * out['flops_matmul'])}; torch FlopCounterMode "
                  f"{_fmt(out['torch_flops'])} -> {'agree' if ok else 'DISAGREE'}."]
        if not ok:
            logger.warning("fvcore (x2) and FlopCounterMode totals differ: %d vs %d",
                           2 * out["flops_matmul"], out["torch_flops"])
    out["table"] = "\n".join(lines)
    return out
