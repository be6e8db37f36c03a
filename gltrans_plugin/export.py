"""A fast-reid model as a tensor-in, tensor-out test forward: the inference wrapper, example
inputs, ONNX export and the onnxruntime equality check.

Graph inputs / output (B dynamic, H x W fixed to the export size):
    images  float32  B x 3 x H x W, pixel values 0..255 (unnormalised, as fast-reid batches;
                     the model's PIXEL_MEAN / PIXEL_STD are inside the graph)
    camids  int64    B, 0-based camera index (only when exported ``with_camids``)
    feature float32  B x F, the test feature (GLTrans: concat(f_g, f_l, cls^L), before BN)

Camera ids are an optional second input in the sense that two graphs can be exported: with
``camids`` (SIE added, as in training and evaluation) or without (as the torch model called
without ids: ``MODEL.BACKBONE.SIE_UNSEEN`` decides, "none" = no SIE term, "mean" = the mean
camera embedding).  The backbone's own SIE lookup is traced: it is out of place, and its strict
camera-id check (``MODEL.GLTRANS.STRICT_CAMIDS``), a Python read of tensor values that a graph
cannot hold, is skipped while tracing, so in the graph an id of -1 or outside the SIE table gets
the SIE_UNSEEN policy instead of an error.  Validate ids before calling the ONNX model if that
matters.

Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
which this stack does not install.
"""
import logging
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["InferenceWrapper", "example_inputs", "export_onnx", "run_onnx", "verify_onnx"]


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


def _uses_sie(model: nn.Module) -> bool:
    """True when the model's backbone publishes an SIE table (``BackboneSpec.sie_rows``)."""
    spec = getattr(model.backbone, "output_spec", None)  # GLTrans ViT backbones publish one
    return spec is not None and spec().sie_rows > 0


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
    with torch.no_grad():
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
