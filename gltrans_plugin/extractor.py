"""Re-ID features of arbitrary images from a trained checkpoint: ``FeatureExtractor``.

    from gltrans_plugin import FeatureExtractor

    extract = FeatureExtractor("logs/run/config.yaml", "logs/run/model_final.pth")
    feats = extract(["a.jpg", "b.jpg"], camids=[0, 2])       # 2 x D, L2-normalised, CPU
    feats = extract(crops_from_opencv, bgr=True)              # H x W x 3 uint8 BGR arrays

The images get exactly the test loader's preprocessing (fast-reid's ``read_image``, which the
plugin makes return RGB, then ``build_transforms(cfg, is_train=False)``), so a file's feature
equals the evaluator's feature of that file.  Any model ``engine.load_model`` builds works
(GLTrans, fast-reid's ``Baseline``, ...).  Inputs are checked, not guessed: an empty crop,
NaN / infinite values, a float tensor in 0..1 (the model takes 0..255; ``value_range=1`` says
so), a folder given as an image are errors naming the image; features that come out NaN /
infinite are an error naming the images and the weights.  The tools' image listing, list
files and camera ids from file names are in ``data.listing``.
"""
import contextlib
import logging
import numbers
import os
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.listing import ImageInputError
from .errors import CorruptImageError
from .evaluation.index import check_finite_features
from .evaluation.inference import batch_features

logger = logging.getLogger(__name__)

__all__ = ["FeatureExtractor", "ImageInputError", "per_image_ids"]

_INPUT_TYPES = ("a file path, a PIL image, an H x W x 3 uint8 numpy array (RGB, or BGR with "
                "bgr=True), a 3 x H x W / B x 3 x H x W float tensor of 0..255 values, or a "
                "list of these")
VALUE_RANGES = (255, 1)  # what a float tensor's pixel values span: 0..255 (fast-reid) or 0..1


class FeatureExtractor:
    """Features of images from a trained model (a config file + checkpoint).

    ``config_file``: a run's ``OUTPUT_DIR/config.yaml`` or a leaf config; ``weights``: the
    trained checkpoint (else the config's MODEL.WEIGHTS).  Class and camera-table sizes are
    read from the checkpoint; the ImageNet file and the dataset folders are never read.
    ``device``: "auto" (CUDA when present), "cpu", "cuda", "cuda:N". ``batch_size`` images per
    forward; ``amp``: autocast on CUDA in SOLVER.AMP.DTYPE (``devices.amp_dtype``: "auto" is
    bf16 where the GPU supports it, else fp16), ignored on CPU; ``flip_test``: mean with the
    horizontally flipped image's feature (as TEST.FLIP.ENABLED in evaluation); ``normalize``:
    L2-normalise every feature; ``bgr``: numpy arrays are BGR (OpenCV ``imread``, most trackers'
    crops) unless a call says otherwise. ``opts``: config overrides ``[KEY, VALUE, ...]``.

    ``extractor(images, camids=None, viewids=None, bgr=None)`` -> N x D float32 CPU tensor.
    """

    def __init__(self, config_file, weights=None, device="auto", batch_size=64, amp=False,
                 flip_test=False, normalize=True, bgr=False, opts=()):
        from .loading import load_model

        cfg, model = load_model(config_file, weights or None, list(opts), device)
        self._setup(cfg, model, batch_size, amp, flip_test, normalize, bgr)

    @classmethod
    def from_model(cls, cfg, model, batch_size=64, amp=False, flip_test=False, normalize=True,
                   bgr=False):
        """An extractor around a model already built (``cfg`` is the config it was built
        from; its INPUT.* give the preprocessing).  The model is put in eval mode."""
        obj = cls.__new__(cls)
        obj._setup(cfg, model, batch_size, amp, flip_test, normalize, bgr)
        return obj

    def _setup(self, cfg, model, batch_size, amp, flip_test, normalize, bgr):
        from fastreid.data.transforms import build_transforms

        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size}: give a positive number of images per "
                             f"forward pass.")
        self.cfg = cfg
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
        self.flip_test = bool(flip_test)
        self.normalize = bool(normalize)
        self.bgr = bool(bgr)
        self.transform = build_transforms(cfg, is_train=False)
        param = next(iter(model.parameters()), None)
        self.device = param.device if param is not None else torch.device(cfg.MODEL.DEVICE)
        self._target_hw = _output_size(cfg)
        if self.amp and self.device.type != "cuda":
            logger.info("amp is for CUDA only: features are computed in float32 on %s.",
                        self.device)

    # ------------------------------------------------------------------ public
    def __call__(self, images, camids=None, viewids=None, bgr=None, progress=False,
                 value_range=255):
        """N x D float32 CPU features of ``images``.

        ``images``: one image or a list; each a file path (read as the test loader reads
        it), a PIL image (any mode, converted to RGB), an H x W x 3 uint8 numpy array (RGB;
        BGR when ``bgr`` is True, default: the extractor's ``bgr``; an N x H x W x 3 array is
        N images), or a tensor of 0..255 values, 3 x H x W or B x 3 x H x W, RGB, as fast-reid
        batches hold them (resized to INPUT.SIZE_TEST if it has another size).
        ``camids`` / ``viewids``: None (not known: the model's SIE_UNSEEN policy applies), one
        int for every image, or one per image (0-based; None or -1 where not known).
        ``progress``: a tqdm bar over the batches.  ``value_range``: what a float tensor's
        values span, 255 (0..255, the default) or 1 (0..1, scaled by 255 here); a float tensor
        whose values all lie in 0..1 under the default is an error, not a guess.
        """
        bgr = self.bgr if bgr is None else bool(bgr)
        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range={value_range!r}: give 255 (pixels 0..255) or 1 "
                             f"(0..1).")
        items = _flatten(images)
        n = len(items)
        cams = per_image_ids(camids, n, "camids")
        views = per_image_ids(viewids, n, "viewids")
        spans = [(s, min(n, s + self.batch_size)) for s in range(0, n, self.batch_size)]

        def batches():
            for s, e in spans:
                batch = torch.stack([self._load(items[i], i, bgr, value_range)
                                     for i in range(s, e)])
                inputs = {"images": batch.to(self.device)}
                if cams is not None:
                    inputs["camids"] = cams[s:e].to(self.device)
                if views is not None:
                    inputs["viewids"] = views[s:e].to(self.device)
                yield inputs

        out = []
        found = batch_features(self.model, batches(), self.flip_test, progress=progress,
                               total=len(spans), forward_context=self._autocast)
        with contextlib.closing(found):
            for (s, e), (_, feats) in zip(spans, found):
                out.append(self._test_features(feats))
                check_finite_features(out[-1], [_name(items[i], i) for i in range(s, e)],
                                      self.cfg.MODEL.WEIGHTS)
        feats = torch.cat(out)
        return F.normalize(feats, dim=1) if self.normalize else feats

    def preprocess(self, image, bgr=None, value_range=255):
        """One image (any input form of ``__call__``) -> the 3 x H x W float tensor (0..255)
        the model gets."""
        items = _flatten(image)
        if len(items) != 1:
            raise ValueError(f"preprocess takes one image, got {len(items)}.")
        return self._load(items[0], 0, self.bgr if bgr is None else bool(bgr), value_range)

    # ------------------------------------------------------------------ internals
    def _test_features(self, feats):
        """The model's eval output -> B x D float32 CPU features (checked)."""
        if isinstance(feats, dict):  # a model returning named outputs: its test feature
            feats = feats.get("features", feats)
        if not torch.is_tensor(feats) or feats.dim() != 2:
            raise ValueError(f"{type(self.model).__name__} returned "
                             f"{type(feats).__name__} in eval mode, not B x D features: the "
                             f"extractor needs a re-id model whose eval forward gives features.")
        return feats.float().cpu()

    def _autocast(self):
        import contextlib

        from .devices import amp_dtype

        if not (self.amp and self.device.type == "cuda"):
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=amp_dtype(self.cfg.SOLVER.AMP.DTYPE, self.device))

    def _load(self, item, i, bgr, value_range=255):
        if isinstance(item, (str, os.PathLike)):
            return self.transform(_read(os.fspath(item)))
        if isinstance(item, Image.Image):
            from .data.images import to_rgb

            _check_size(item.height, item.width, i)
            return self.transform(to_rgb(item))
        if isinstance(item, np.ndarray):
            return self.transform(_array_to_pil(item, i, bgr))
        if torch.is_tensor(item):
            return self._tensor(item, i, value_range)
        raise ValueError(f"image {i}: {type(item).__name__} is not an image input; give "
                         f"{_INPUT_TYPES}.")

    def _tensor(self, t, i, value_range=255):
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"image {i}: tensor of shape {tuple(t.shape)}; expected 3 x H x W "
                             f"(RGB, 0..255, as fast-reid batches; permute an H x W x 3 tensor "
                             f"with .permute(2, 0, 1)).")
        _check_size(t.shape[1], t.shape[2], i)
        t = t.detach().cpu()
        t = t.float() if not t.is_floating_point() else t.to(torch.float32)
        _check_values(t, i, value_range)
        if value_range == 1:
            t = t * 255.0
        if self._target_hw is not None and tuple(t.shape[1:]) == self._target_hw:
            return t
        for tf in self.transform.transforms:  # Resize / CenterCrop work on tensors too
            if type(tf).__name__ != "ToTensor":
                t = tf(t)
        return t.clamp_(0, 255)


def _output_size(cfg):
    """(H, W) of the test transforms' output, or None when it depends on the image."""
    if cfg.INPUT.CROP.ENABLED:
        size = list(cfg.INPUT.CROP.SIZE)
        return (size[0], size[0]) if len(size) == 1 else tuple(size[:2])
    size = list(cfg.INPUT.SIZE_TEST)
    return tuple(size[:2]) if len(size) == 2 and size[0] > 0 else None


def _check_size(h, w, i):
    if h == 0 or w == 0:
        raise ImageInputError(f"image {i} is empty ({h} x {w} pixels)", f"image {i}",
                              "give a crop of at least one pixel each way (an empty detection "
                              "box gives none: drop it before extracting)")


def _check_values(t, i, value_range):
    """A float image tensor: finite, and in 0..``value_range``, not ambiguous."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise ImageInputError(f"image {i} holds {int((~finite).sum())} NaN / infinite pixel "
                              f"values", f"image {i}", "give finite pixel values (0..255)")
    if t.numel() == 0:
        return
    lo, hi = float(t.min()), float(t.max())
    if lo < 0:
        raise ImageInputError(
            f"image {i} has negative pixel values (min {lo:.3g}): it looks normalised already",
            f"image {i}", "give raw 0..255 pixels; the model normalises them itself "
            "(MODEL.PIXEL_MEAN / PIXEL_STD)")
    if value_range == 255 and 0 < hi <= 1:
        raise ImageInputError(
            f"image {i} is a float tensor with every value in 0..1 (max {hi:.3g}); the model "
            f"takes 0..255 pixels", f"image {i}",
            "multiply it by 255, or pass value_range=1 to say the tensor is in 0..1")


def _name(item, i):
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"image {i}"


def _read(path):
    from fastreid.data.data_utils import read_image  # the plugin's RGB reader

    if os.path.isdir(path):
        raise ImageInputError("a folder was given as an image", path,
                              "give image files; for every image under a folder use --input "
                              "DIR (tools) or list_images(folder)")
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "image file not found", path)
    try:
        return read_image(path)
    except Exception as e:  # noqa: BLE001  (named below)
        raise CorruptImageError(f"Cannot read image {path} ({type(e).__name__}: {e}): the file "
                                f"is corrupt, truncated or not an image; replace or remove "
                                f"it.") from e


def _array_to_pil(a, i, bgr):
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image {i}: numpy array of shape {a.shape}; expected H x W x 3 "
                         f"(a grey H x W image: np.stack([a] * 3, -1); a 3 x H x W one: "
                         f"a.transpose(1, 2, 0)).")
    if a.dtype != np.uint8:
        raise ValueError(f"image {i}: numpy array of dtype {a.dtype}; expected uint8 0..255 "
                         f"(convert with np.clip(a, 0, 255).astype(np.uint8); float images in "
                         f"0..1: multiply by 255 first).")
    _check_size(a.shape[0], a.shape[1], i)
    if bgr:
        a = a[..., ::-1]
    return Image.fromarray(np.ascontiguousarray(a), mode="RGB")


def _flatten(images) -> list:
    """One image or a list of them -> a flat list of single images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif torch.is_tensor(images) and images.dim() == 4:
        items = list(images)
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or torch.is_tensor(
            images):
        items = [images]
    elif isinstance(images, (list, tuple)):
        items = []
        for x in images:
            if (isinstance(x, np.ndarray) and x.ndim == 4) or (torch.is_tensor(x)
                                                               and x.dim() == 4):
                items.extend(list(x))
            else:
                items.append(x)
    else:
        raise ValueError(f"images: {type(images).__name__} is not an image input; give "
                         f"{_INPUT_TYPES}.")
    if not items:
        raise ValueError("images: the list is empty; give at least one image.")
    return items


def per_image_ids(ids, n: int, name: str = "camids") -> Optional[torch.Tensor]:
    """Camera / view ids as ``FeatureExtractor`` takes them (None, one int for all ``n``
    images, or one int or None per image) -> a LongTensor of ``n`` (-1 = not known), or None.
    ``name`` is used in the errors."""
    if ids is None:
        return None
    if isinstance(ids, bool):
        raise ValueError(f"{name}={ids!r} is a bool; give an int, a list of ints, or None.")
    if isinstance(ids, numbers.Integral) or (hasattr(ids, "ndim") and ids.ndim == 0):
        return torch.full((n,), int(ids), dtype=torch.long)
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"{name}: {type(ids).__name__} given; give None, one int for every "
                         f"image, or one int per image.")
    if len(ids) != n:
        raise ValueError(f"{name}: {len(ids)} ids for {n} images; give one per image, a single "
                         f"int for all, or None.")
    out = []
    for j, c in enumerate(ids):
        if c is None:
            out.append(-1)
        elif isinstance(c, numbers.Integral) and not isinstance(c, bool):
            out.append(int(c))
        else:
            raise ValueError(f"{name}[{j}] = {c!r}: ids are 0-based ints (None or -1: not "
                             f"known).")
    return torch.tensor(out, dtype=torch.long)
