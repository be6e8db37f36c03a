"""A fast-reid model as a deployable graph: the inference wrapper, the export contract (input
convention, camera policy, metadata), ONNX and TorchScript export, and the self-check.

Shape letters: B batch (dynamic in every graph), H x W the export size (INPUT.SIZE_TEST), F the
feature dim.

``InferenceWrapper`` is the model's test forward as tensors: images B x 3 x H x W, RGB, pixel
values 0..255 (unnormalised, as fast-reid batches; the model's PIXEL_MEAN / PIXEL_STD are
applied inside), optional camids B (int64) -> the test feature B x F.

``export_model`` writes a graph for a consumer (``ExportContract``):

* **one image input** ``images`` float32 B x 3 x H x W in the consumer's **input convention**
  (``INPUT_CONVENTIONS``): ``raw`` RGB 0..255, ``unit`` RGB 0..1, ``imagenet`` RGB / 255 then
  ImageNet mean / std (BoxMOT's and most trackers' crops), and ``-bgr`` variants of each for
  clients that feed OpenCV's channel order.  The graph maps the input back to RGB 0..255 before
  the model's own normalisation, so every convention gives the same feature.
* **the camera policy baked in** (``CAMERA_POLICIES``): ``mean`` adds the mean of the learned
  camera embeddings (SIE) to every image, ``none`` adds no SIE term, ``<N>`` the embedding of
  camera N (every image taken by that camera), ``input`` keeps a second input ``camids`` int64 B
  for clients that feed camera ids.  A model without an SIE table has policy ``none``.  In a
  graph with a ``camids`` input the strict camera-id check is not recorded (it reads tensor
  values): an id of -1 or outside the table gets the model's MODEL.BACKBONE.SIE_UNSEEN policy.
* output ``feature`` float32 B x F: the model's test feature (MODEL.HEADS.NECK_FEAT), or its
  L2-normalised form when the contract says ``normalize``.
* **metadata**: inside the ONNX file (``metadata_props``, one entry per key, JSON-encoded where
  not a string) and as a sidecar ``<file>.metadata.json`` beside the ``.onnx`` /
  ``.torchscript`` file, in the form BoxMOT reads (``model_name``, ``img_size``,
  ``preprocess``, ``model_kwargs``) plus the full contract (``contract_metadata``).

After writing, ``export_model`` runs the graph (onnxruntime, or ``torch.jit.load``) on a batch of
another size than the traced one, fed in the graph's own input convention, and compares it with
the torch model; a difference above ``rtol`` times the features' largest magnitude removes the
files it wrote and raises ``ExportCheckError``.

Uses the TorchScript-based ONNX exporter (``dynamo=False``): the dynamo exporter needs
``onnxscript``, which this stack does not install.
"""
import contextlib
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["CAMERA_POLICIES", "ExportCheckError", "ExportContract", "ExportModule",
           "INPUT_CONVENTIONS", "InferenceWrapper", "InputConvention", "PRESETS",
           "contract_metadata", "example_inputs", "export_model", "export_onnx",
           "read_onnx_metadata", "run_onnx", "run_torchscript", "sidecar_path", "verify_onnx"]

CONTRACT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of 0..1 pixels
IMAGENET_STD = (0.229, 0.224, 0.225)
CAMERA_POLICIES = ("mean", "none", "input", "<camera id>")
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}


class InputConvention(NamedTuple):
    """What a client feeds: ``x = (pixel * scale - mean) / std`` per channel, channels in
    ``channels`` order ("RGB" / "BGR"), ``pixel`` the 0..255 value; ``mean`` / ``std`` are
    listed in that channel order."""

    name: str
    channels: str
    scale: float
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def to_client(self, rgb255):
        """B x 3 x H x W RGB 0..255 (tensor or array) -> what this client feeds the graph."""
        x = rgb255[:, ::-1] if isinstance(rgb255, np.ndarray) and self.channels == "BGR" \
            else rgb255.flip(1) if self.channels == "BGR" else rgb255
        shape = (1, 3, 1, 1)
        mean, std = np.reshape(self.mean, shape), np.reshape(self.std, shape)
        if torch.is_tensor(x):
            mean, std = torch.as_tensor(mean, dtype=x.dtype), torch.as_tensor(std, dtype=x.dtype)
        return (x * self.scale - mean) / std


def _conventions():
    out = {}
    for name, scale, mean, std in (("raw", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                                   ("unit", 1.0 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                                   ("imagenet", 1.0 / 255, IMAGENET_MEAN, IMAGENET_STD)):
        out[name] = InputConvention(name, "RGB", scale, mean, std)
        out[name + "-bgr"] = InputConvention(name + "-bgr", "BGR", scale, mean[::-1], std[::-1])
    return out


INPUT_CONVENTIONS: Dict[str, InputConvention] = _conventions()


@dataclass(frozen=True)
class ExportContract:
    """What the exported graph takes and gives: ``input`` an ``INPUT_CONVENTIONS`` name,
    ``camera`` "mean" | "none" | "input" | a 0-based camera id, ``normalize`` L2-normalise
    the output feature, ``preprocess`` the crop resize the consumer applies before the graph
    (recorded for BoxMOT: "resize" stretches the crop to H x W)."""

    input: str = "raw"
    camera: Union[str, int] = "mean"
    normalize: bool = False
    preprocess: str = "resize"


# A consumer's contract by name: BoxMOT feeds RGB /255 ImageNet-normalised crops, stretched to
# the graph's H x W by cv2 (bilinear), one input, and L2-normalises the features itself.
PRESETS = {"boxmot": ExportContract(input="imagenet", camera="mean", normalize=False,
                                    preprocess="resize")}


class ExportCheckError(UserError):
    """The exported graph does not reproduce the torch model; its files were removed."""


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


def _backbone(model: nn.Module):
    return getattr(model, "backbone", None)


def _uses_sie(model: nn.Module) -> bool:
    """True when the model's backbone publishes an SIE table (``BackboneSpec.sie_rows``)."""
    spec = getattr(_backbone(model), "output_spec", None)  # GLTrans ViT backbones publish one
    return spec is not None and spec().sie_rows > 0


def _camera_policy(model: nn.Module, camera) -> Union[str, int]:
    """The contract's camera policy, checked against the model: "mean" | "none" | "input" |
    a camera id; "mean" on a model without an SIE table is "none"."""
    if isinstance(camera, str) and camera.lstrip("-").isdigit():
        camera = int(camera)
    if isinstance(camera, str) and camera not in ("mean", "none", "input"):
        raise UserError(f"camera policy {camera!r} is not one of {CAMERA_POLICIES}",
                        "--camera", "give mean, none, input or a 0-based camera id")
    if not _uses_sie(model):
        if camera == "input" or isinstance(camera, int):
            raise UserError(f"camera policy {camera!r} needs an SIE table, but the model has none",
                            "MODEL.BACKBONE.SIE_CAMERA False",
                            "export with --camera none (or mean: the same graph here)")
        return "none"
    bb = _backbone(model)
    if isinstance(camera, int):
        n = int(getattr(bb, "num_cameras", 0))
        if not bb.sie_camera or not 0 <= camera < n:
            raise UserError(f"camera {camera} is not in the model's camera SIE table "
                            f"({n if bb.sie_camera else 0} cameras)", "--camera",
                            f"give a 0-based id below {n}, or mean / none"
                            if bb.sie_camera else "give mean or none")
        if bb.sie_view:
            raise UserError(f"a fixed camera ({camera}) on a model with a view SIE table would "
                            f"get the unseen-view policy for the whole image",
                            "MODEL.BACKBONE.SIE_VIEW True", "export with --camera mean or none")
    return camera


@contextlib.contextmanager
def _sie_unseen(model: nn.Module, policy: Optional[str]):
    """Temporarily set the backbone's SIE_UNSEEN policy (``None``: leave it); its warning
    about images without camera ids is off meanwhile (the policy is the export's choice)."""
    bb = _backbone(model)
    if policy is None or bb is None or not hasattr(bb, "sie_unseen"):
        yield
        return
    old = bb.sie_unseen, getattr(bb, "_logged_no_sie", False)
    bb.sie_unseen, bb._logged_no_sie = policy, True
    try:
        yield
    finally:
        bb.sie_unseen, bb._logged_no_sie = old


class ExportModule(nn.Module):
    """The graph ``export_model`` traces: ``forward(images[, camids])`` with images in the
    contract's input convention -> the feature B x F.

    pixel (RGB 0..255) = reorder(x * std / scale + mean / scale); then the model's own test
    forward (``InferenceWrapper``) with the camera policy applied.
    """

    def __init__(self, model: nn.Module, contract: ExportContract = ExportContract()):
        super().__init__()
        if contract.input not in INPUT_CONVENTIONS:
            raise UserError(f"input convention {contract.input!r} is not one of "
                            f"{sorted(INPUT_CONVENTIONS)}", "--input",
                            "give imagenet for BoxMOT-style crops, raw for 0..255 RGB")
        self.inner = InferenceWrapper(model)
        self.convention = INPUT_CONVENTIONS[contract.input]
        self.camera = _camera_policy(model, contract.camera)
        self.normalize = bool(contract.normalize)
        self.preprocess = str(contract.preprocess)
        c = self.convention
        self.identity_input = c.scale == 1.0 and c.mean == (0.0,) * 3 and c.std == (1.0,) * 3
        gain = torch.tensor(c.std, dtype=torch.float32) / c.scale
        bias = torch.tensor(c.mean, dtype=torch.float32) / c.scale
        self.register_buffer("gain", gain.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bias", bias.view(1, 3, 1, 1), persistent=False)

    @property
    def takes_camids(self) -> bool:
        return self.camera == "input"

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the input convention -> RGB 0..255 (B x 3 x H x W)."""
        x = images if self.identity_input else images * self.gain + self.bias
        if self.convention.channels == "BGR":
            x = x[:, [2, 1, 0]]
        return x

    def forward(self, images: torch.Tensor, camids: Optional[torch.Tensor] = None):
        x = self.to_pixels(images)
        policy = None
        if isinstance(self.camera, int):  # B ids from the batch dim: dynamic batch
            camids = torch.full_like(images[:, 0, 0, 0], self.camera, dtype=torch.long)
        elif self.camera in ("mean", "none"):
            camids, policy = None, self.camera
        with _sie_unseen(self.inner.model, policy):
            feats = self.inner(x, camids)
        return F.normalize(feats, dim=1) if self.normalize else feats


# ---------------------------------------------------------------------- inputs
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


def _check_inputs(module: ExportModule, size, batch: int, seed: int):
    """(client images, camids or None) in the graph's own input range: 0..255 RGB pixels of
    a smooth random image plus noise, put through the input convention."""
    h, w = size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, h // 8), max(2, w // 8), generator=g) * 255
    pixels = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    pixels = (pixels + torch.randn(batch, 3, h, w, generator=g) * 12).clamp(0, 255).round()
    camids = None
    if module.takes_camids:
        n = max(1, int(getattr(_backbone(module.inner.model), "num_cameras", 1)))
        camids = torch.arange(batch, dtype=torch.long) % n
    return module.convention.to_client(pixels), camids


# ---------------------------------------------------------------------- metadata
def sidecar_path(path: str) -> str:
    """BoxMOT's metadata sidecar of an artifact: ``<file>.metadata.json``."""
    return path + ".metadata.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _camera_text(camera) -> str:
    if camera == "mean":
        return "mean of the learned camera embeddings (SIE) added to every image"
    if camera == "none":
        return "no SIE term"
    if camera == "input":
        return ("camera ids from the second input 'camids' (int64, 0-based; -1 or an id "
                "outside the table gets MODEL.BACKBONE.SIE_UNSEEN)")
    return f"camera {camera}'s SIE embedding added to every image"


def contract_metadata(module: ExportModule, cfg, fmt: str, feature_dim: int,
                      config_file: str = "", weights: str = "", opset: Optional[int] = None
                      ) -> Dict:
    """The metadata of an exported graph: BoxMOT's sidecar keys and the full contract."""
    h, w = (int(v) for v in cfg.INPUT.SIZE_TEST[:2])
    c = module.convention
    bb = _backbone(module.inner.model)
    meta = {
        # read by BoxMOT (boxmot/reid/core/artifacts.py, core/registry.py)
        "schema_version": 1,
        "model_name": "gltrans" if cfg.MODEL.META_ARCHITECTURE == "GLTrans"
        else str(cfg.MODEL.META_ARCHITECTURE).lower(),
        "img_size": [h, w],
        "preprocess": module.preprocess,
        "model_kwargs_schema_version": 1,
        "model_kwargs": {"img_size": [h, w]},
        # the contract
        "producer": "gltrans_plugin",
        "contract_version": CONTRACT_VERSION,
        "format": fmt,
        "input_name": "images",
        "input_shape": ["batch", 3, h, w],
        "input_layout": "NCHW float32",
        "input_convention": c.name,
        "channel_order": c.channels,
        "pixel_scale": c.scale,
        "mean": list(c.mean),
        "std": list(c.std),
        "input_formula": f"x = (pixel * {c.scale:.10g} - mean) / std, channels {c.channels}, "
                         f"pixel 0..255",
        "resize": f"crop stretched to {h} x {w} (fast-reid's test transform: bicubic)",
        "output_name": "feature",
        "feature_dim": int(feature_dim),
        "l2_normalized": module.normalize,
        "feature": f"test feature, MODEL.HEADS.NECK_FEAT {cfg.MODEL.HEADS.NECK_FEAT}",
        "camera_policy": module.camera if isinstance(module.camera, str)
        else f"camera {module.camera}",
        "camera_policy_text": _camera_text(module.camera),
        "camids_input": module.takes_camids,
        "sie_cameras": int(getattr(bb, "num_cameras", 0)) if _uses_sie(module.inner.model)
        else 0,
        "meta_architecture": str(cfg.MODEL.META_ARCHITECTURE),
        "config_file": os.path.abspath(config_file) if config_file else "",
        "weights": os.path.abspath(weights) if weights else "",
        "weights_sha256": _sha256(weights) if weights and os.path.isfile(weights) else "",
        "torch_version": torch.__version__,
    }
    if opset is not None:
        meta["onnx_opset"] = int(opset)
    return meta


def _write_sidecar(path: str, meta: Dict) -> str:
    side = sidecar_path(path)
    tmp = side + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, side)
    return side


def _add_onnx_metadata(path: str, meta: Dict) -> None:
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
    proto.producer_name = "gltrans_plugin"
    onnx.save(proto, path)


def read_onnx_metadata(path: str) -> Dict:
    """The ONNX file's ``metadata_props`` as a dict (JSON values decoded)."""
    import onnx

    out = {}
    for p in onnx.load(path, load_external_data=False).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


# ---------------------------------------------------------------------- export
def _trace_args(module: ExportModule, images, camids):
    return (images,) if not module.takes_camids else (images, camids)


def _write_onnx(module: ExportModule, path: str, images, camids, opset: int) -> None:
    names = ["images"] + (["camids"] if module.takes_camids else [])
    axes = {n: {0: "batch"} for n in names + ["feature"]}
    torch.onnx.export(module, _trace_args(module, images, camids), path, input_names=names,
                      output_names=["feature"], dynamic_axes=axes, opset_version=opset,
                      dynamo=False, do_constant_folding=True)


def _write_torchscript(module: ExportModule, path: str, images, camids, meta: Dict) -> None:
    traced = torch.jit.trace(module, _trace_args(module, images, camids), check_trace=False)
    # frozen: weights become constants of one graph, so no submodule names are serialised
    # (a TorchScript file cannot hold a submodule named like a Python keyword, e.g. "global")
    frozen = torch.jit.freeze(traced.eval())
    torch.jit.save(frozen, path, _extra_files={"metadata.json": json.dumps(meta)})


def run_torchscript(path: str, images, camids=None) -> np.ndarray:
    """The TorchScript file's feature (CPU)."""
    m = torch.jit.load(path, map_location="cpu")
    args = [torch.as_tensor(np.asarray(images, dtype=np.float32))]
    if camids is not None:
        args.append(torch.as_tensor(np.asarray(camids), dtype=torch.long))
    with torch.no_grad():
        return m(*args).numpy()


def _compare(got: np.ndarray, ref: np.ndarray, rtol: float, what: str, path: str) -> Dict:
    if got.shape != ref.shape:
        raise ExportCheckError(f"{what} gives features of shape {got.shape}, torch "
                               f"{ref.shape}", path, "the file was removed; report this")
    scale = float(np.abs(ref).max()) or 1.0
    diff = float(np.abs(got - ref).max())
    cos = float(np.min(np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1)
                                               * np.linalg.norm(ref, axis=1) + 1e-12)))
    if not diff <= rtol * scale:
        raise ExportCheckError(
            f"{what} differs from torch by {diff:.3g} (max abs; {diff / scale:.3g} of the "
            f"features' largest magnitude {scale:.3g} > rtol {rtol:g}; min cosine {cos:.6f})",
            path, "the file was removed; rerun with --debug and report it (or, if that "
            "difference is acceptable, export again with a larger --rtol)")
    return {"max_abs_diff": diff, "rel_diff": diff / scale, "min_cosine": cos}


def export_model(model: nn.Module, cfg, path: str, contract: ExportContract = ExportContract(),
                 fmt: Optional[str] = None, opset: int = 17, verify: bool = True,
                 rtol: float = 1e-3, config_file: str = "", weights: str = "") -> Dict:
    """Export ``model`` (built from ``cfg``) to ``path`` under ``contract``: the graph, its
    metadata (inside an ONNX file, and the sidecar ``<path>.metadata.json``), then the check.

    ``fmt``: "onnx" | "torchscript" (default: from the suffix of ``path``).  Returns
    {"path", "format", "sidecar", "inputs", "feature_dim", "camera_policy", "input_convention"
    [, "max_abs_diff", "rel_diff", "min_cosine"]}.  A failed check removes what was written and
    raises ``ExportCheckError``.
    """
    fmt = fmt or ("torchscript" if path.endswith((".torchscript", ".pt", ".ts")) else "onnx")
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r} is not one of {sorted(FORMATS)}", "--format",
                        "give onnx or torchscript")
    module = ExportModule(model, contract).eval()
    size = tuple(int(v) for v in cfg.INPUT.SIZE_TEST[:2])
    images, camids = _check_inputs(module, size, 2, seed=0)
    written = [path, sidecar_path(path)]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on shape reads that are constant for a fixed H x W
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            dim = int(module(*_trace_args(module, images, camids)).shape[1])
            meta = contract_metadata(module, cfg, fmt, dim, config_file, weights,
                                     opset if fmt == "onnx" else None)
            if fmt == "onnx":
                _write_onnx(module, path, images, camids, opset)
                _add_onnx_metadata(path, meta)
            else:
                _write_torchscript(module, path, images, camids, meta)
        _write_sidecar(path, meta)
        info = {"path": path, "format": fmt, "sidecar": sidecar_path(path),
                "inputs": ["images"] + (["camids"] if module.takes_camids else []),
                "feature_dim": dim, "camera_policy": meta["camera_policy"],
                "input_convention": module.convention.name, "l2_normalized": module.normalize}
        if verify:  # another batch size than the traced one: the batch is dynamic
            images3, camids3 = _check_inputs(module, size, 3, seed=1)
            with torch.no_grad():
                ref = module(*_trace_args(module, images3, camids3)).numpy()
            run = run_onnx if fmt == "onnx" else run_torchscript
            got = run(path, images3.numpy(), None if camids3 is None else camids3.numpy())
            info.update(_compare(got, ref, rtol, f"the {fmt} graph", path))
            logger.info("%s vs torch: max abs difference %.3g (%.3g of the features' scale), "
                        "min cosine %.7f (batch 3)", fmt, info["max_abs_diff"],
                        info["rel_diff"], info["min_cosine"])
    except BaseException:
        for p in written:
            if os.path.exists(p):
                os.remove(p)
        raise
    logger.info("Exported %s (%s; inputs %s, input %s, camera policy %s, feature dim %d)",
                path, fmt, info["inputs"], info["input_convention"], info["camera_policy"], dim)
    return info


# ---------------------------------------------------------------------- the raw graph
def export_onnx(model: nn.Module, path: str, images: torch.Tensor,
                camids: Optional[torch.Tensor] = None, opset: int = 17) -> Dict:
    """Export ``model``'s raw test forward (``InferenceWrapper``: images RGB 0..255 [+ camids])
    to ``path``, without metadata or check; returns {"path", "inputs", "output_dim"}.

    ``images`` (B x 3 x H x W) fixes H and W; B is dynamic.  ``camids`` given -> a second
    input ``camids`` (B, int64); without, the model's MODEL.BACKBONE.SIE_UNSEEN applies
    ("mean": the mean camera embedding, "none": no SIE term).
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
    """Max |onnxruntime - torch| of the raw graph's feature on these inputs (RGB 0..255);
    raises if above ``atol``."""
    ref = InferenceWrapper(model).eval()(images, camids).cpu().numpy()
    got = run_onnx(path, images.cpu().numpy(), None if camids is None else camids.cpu().numpy())
    if got.shape != ref.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != torch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    if not diff <= atol:
        raise AssertionError(f"ONNX output differs from torch by {diff:.3g} > {atol:g}")
    logger.info("onnxruntime vs torch: max abs difference %.3g (batch %d)", diff, len(images))
    return diff
