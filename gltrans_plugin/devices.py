"""The one device rule: which device a run, a tool or a data loader uses, and what AMP "auto" means.

* ``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")``: "auto" is CUDA when torch sees a GPU, else
  the CPU; a CUDA device without CUDA is an error naming the fix.
* ``fall_back_to_cpu(cfg)``: a config's MODEL.DEVICE "cuda..." becomes "cpu" where torch sees no GPU
  (fast-reid's default is "cuda"), with one log line.
* ``loader_device(device)``: the device the data loaders built inside the block feed (CUDA copies,
  pinned memory and a copy stream only for a CUDA device; fast-reid's loader builders take no
  device, so the builder call is wrapped in this block).
* ``amp_dtype(choice, device)``: SOLVER.AMP.DTYPE "auto" is bfloat16 where the device supports it
  (every CPU; CUDA GPUs of compute capability 8.0 and newer), else float16 (older GPUs, with a
  GradScaler); "bf16" / "fp16" force one.  Training and the extractor use this one rule.
"""
import contextlib
import contextvars
import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["AMP_DTYPES", "amp_dtype", "cuda_available", "fall_back_to_cpu", "loader_device",
           "loader_uses_cuda", "resolve_device"]

AMP_DTYPES = ("auto", "bf16", "fp16")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(device="auto") -> str:
    """"auto" -> "cuda" when a GPU is present, else "cpu"; a CUDA device without CUDA fails with
    the fix named."""
    device = str(device or "auto")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible to torch here; use --device "
                         f"cpu (or auto).")
    return device


def fall_back_to_cpu(cfg, log=None):
    """MODEL.DEVICE "cuda..." -> "cpu" in place (a frozen ``cfg`` stays frozen) where torch sees
    no CUDA GPU, with one log line on ``log`` (default: this module's logger; False: none).
    Returns the device it replaced, or None when ``cfg`` is kept."""
    device = str(cfg.MODEL.DEVICE)
    if not device.startswith("cuda") or cuda_available():
        return None
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    if frozen:
        cfg.freeze()
    if log is not False:
        (log or logger).info(f"No CUDA GPU is visible to torch: MODEL.DEVICE {device} -> cpu.")
    return device


# The device of the loaders being built (None: fast-reid's rule, CUDA when present).
_LOADER_DEVICE = contextvars.ContextVar("gltrans_loader_device", default=None)


@contextlib.contextmanager
def loader_device(device):
    """Data loaders built inside the block feed ``device`` (cfg.MODEL.DEVICE)."""
    token = _LOADER_DEVICE.set(None if device is None else str(device))
    try:
        yield
    finally:
        _LOADER_DEVICE.reset(token)


def loader_uses_cuda() -> bool:
    """Whether a loader built now copies its batches to CUDA."""
    device = _LOADER_DEVICE.get()
    return cuda_available() and (device is None or device.startswith("cuda"))


def amp_dtype(choice, device) -> torch.dtype:
    """SOLVER.AMP.DTYPE ("auto" | "bf16" | "fp16") on ``device`` -> the autocast dtype."""
    choice = str(choice)
    if choice not in AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE={choice!r}: use 'auto', 'bf16' or 'fp16'.")
    if choice == "auto":
        dev = torch.device(device)
        bf16 = dev.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
        choice = "bf16" if bf16 else "fp16"
    return torch.bfloat16 if choice == "bf16" else torch.float16
