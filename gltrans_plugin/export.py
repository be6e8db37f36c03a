"""A fast-reid model as a tensor-in, tensor-out test forward: the inference wrapper, example
inputs, ONNX export and the onnxruntime equality check.

Graph inputs / output (B dynamic, H x W fixed to the export size):
    images  float32  B x 3 x H x W, pixel values 0..255 (unnormalised, as fast-reid batches;
                     the model's PIXEL_MEAN / PIXEL_STD are inside the graph)
    camids  int64    B, 0-based camera index (only when exported ``with_camids``)
    feature float32  B x F, the test feature (GLTrans: concat(f_g, f_l, cls^L), before BN)

Camera ids are an optional second input in the sense that two graphs can be exported: with
``camids`` (SIE added, as in training and evaluation) or without (no SIE term, as the torch
model called without ids).  A strict camera-id check (``MODEL.GLTRANS.STRICT_CAMIDS``) reads tensor
values in Python (``bool(valid.all())``), which tracing cannot record, and the backbone's SIE
lookup combines masks in place (``valid &= ...`` -> ``aten::__iand_``, which has no ONNX
symbolic).  During export ``lenient_camids`` therefore gives each backbone instance an
export-friendly SIE lookup (``_sie_for_export``: the same formula, out of place, no check) -- an
id outside the SIE table then gets no SIE term instead of an error.  Validate ids before
calling the ONNX model if that matters.  ``verify_onnx`` compares against the unpatched model.

Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
which this stack does not install.
"""
import contextlib
import logging
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["InferenceWrapper", "example_inputs", "export_onnx", "lenient_camids", "run_onnx",
           "verify_onnx"]


class InferenceWrapper(nn.Module):
    """Tensor-in, tensor-out test forward of a fast-reid model, for tracing (fvcore, ONNX).

    ``forward(images, camids=None)``: images B x 3 x H x W in 0..255 (unnormalised, as fast-reid
    batches), camids B (int64) or None -> the model's test feature B x F.  The caller's tensor is
    not modified (fast-reid's ``Baseline`` normalises in place).  Runs without gradients, as
    inference does (this also makes MODEL.ATTN_IMPL "auto" pick fused attention, and keeps the
    training-only attention switch, which reads shapes, out of traces).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor, camids: Optional[torch.Tensor] = None):
        batch = {"images": images.clone()}
        if camids is not None:
            batch["camids"] = camids
        with torch.no_grad():
            return self.model(batch)


def example_inputs(cfg, batch: int = 1, with_camids: Optional[bool] = None,
                   size: Optional[Sequence[int]] = None):
    """(images B x 3 x H x W in 0..255, camids or None) at the config's test size."""
    h, w = size or cfg.INPUT.SIZE_TEST
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, int(h), int(w), generator=g) * 255
    if with_camids is None:
        with_camids = bool(cfg.MODEL.BACKBONE.SIE_CAMERA) and \
            cfg.MODEL.META_ARCHITECTURE == "GLTrans"
    camids = None
    if with_camids:
        n = max(1, int(cfg.MODEL.BACKBONE.NUM_CAMERAS))
        camids = torch.arange(batch, dtype=torch.long) % n
    return images, camids


def _sie_for_export(self, camids, viewids, batch: int, device):
    """``GLTransViT._sie`` without the strict check and without in-place ops: B x 1 x D or None.

    index = cam * num_views + view (camera x view), cam, or view; ids outside the table -> row 0
    multiplied by 0 (no SIE term), as the lenient path of the backbone."""
    if self.sie_embed is None:
        return None
    if (self.sie_camera and camids is None) or (self.sie_view and viewids is None):
        return None
    index, valid = None, None
    for use, ids, size in ((self.sie_camera, camids, self.num_cameras),
                           (self.sie_view, viewids, self.num_views)):
        if not use:
            continue
        ids = ids.to(device).long().reshape(-1)  # B
        ok = (ids >= 0) & (ids < size)
        valid = ok if valid is None else valid & ok
        index = ids if index is None else index * self.num_views + ids
    index = torch.where(valid, index, torch.zeros_like(index))
    sie = self.sie_embed[index] * valid.unsqueeze(1).to(self.sie_embed.dtype)  # B x D
    return self.sie_coe * sie.unsqueeze(1)  # B x 1 x D


@contextlib.contextmanager
def lenient_camids(model: nn.Module):
    """Temporarily give every SIE backbone the traceable lookup ``_sie_for_export``."""
    changed = []
    for m in model.modules():
        if hasattr(m, "sie_embed") and hasattr(m, "_sie") and hasattr(m, "strict_ids"):
            m._sie = _sie_for_export.__get__(m)
            changed.append(m)
    try:
        yield model
    finally:
        for m in changed:
            del m._sie


def _uses_sie(model: nn.Module) -> bool:
    return any(getattr(m, "sie_embed", None) is not None for m in model.modules())


def export_onnx(model: nn.Module, path: str, images: torch.Tensor,
                camids: Optional[torch.Tensor] = None, opset: int = 17) -> Dict:
    """Export ``model``'s test forward to ``path``; returns {"path", "inputs", "output_dim"}.

    ``images`` (B x 3 x H x W) fixes H and W; B is dynamic.  ``camids`` given -> a second
    input ``camids`` (B, int64).
    """
    if camids is not None and not _uses_sie(model):
        raise ValueError("camera ids were given but the model has no SIE table "
                         "(MODEL.BACKBONE.SIE_CAMERA False): export without --camids.")
    wrapper = InferenceWrapper(model).eval()
    args = (images,) if camids is None else (images, camids.long())
    names = ["images"] + ([] if camids is None else ["camids"])
    axes = {"images": {0: "batch"}, "feature": {0: "batch"}}
    if camids is not None:
        axes["camids"] = {0: "batch"}
    with lenient_camids(model), torch.no_grad():
        out = wrapper(*args)
        torch.onnx.export(wrapper, args, path, input_names=names, output_names=["feature"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    logger.info("Exported %s (inputs %s, feature dim %d)", path, names, out.shape[1])
    return {"path": path, "inputs": names, "output_dim": int(out.shape[1])}


def run_onnx(path: str, images, camids=None) -> np.ndarray:
    """The ONNX model's feature under onnxruntime (CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {"images": np.ascontiguousarray(np.asarray(images, dtype=np.float32))}
    if "camids" in [i.name for i in sess.get_inputs()]:
        if camids is None:
            raise ValueError(f"{path} was exported with a camids input: give camera ids.")
        feeds["camids"] = np.asarray(camids, dtype=np.int64)
    return sess.run(["feature"], feeds)[0]


@torch.no_grad()
def verify_onnx(path: str, model: nn.Module, images: torch.Tensor,
                camids: Optional[torch.Tensor] = None, atol: float = 1e-4) -> float:
    """Max |onnxruntime - torch| of the feature on these inputs; raises if above ``atol``."""
    ref = InferenceWrapper(model).eval()(images, camids).cpu().numpy()
    got = run_onnx(path, images.cpu().numpy(), None if camids is None else camids.cpu().numpy())
    if got.shape != ref.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != torch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    if not diff <= atol:
        raise AssertionError(f"ONNX output differs from torch by {diff:.3g} > {atol:g}")
    logger.info("onnxruntime vs torch: max abs difference %.3g (batch %d)", diff, len(images))
    return diff
