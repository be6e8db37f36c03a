"""Checkpoint files read with checks: what kind of file it is, whether it is complete, and
whether it fits the model it is loaded into.

* ``torch_load(path, key=...)``: ``torch.load`` (weights-only unless opted out) that first
  tells a torch checkpoint (zip archive or legacy pickle) from any other file, and a truncated
  archive from a complete one, so each gets its own message naming the file and the config key
  that pointed at it -- instead of torch's ``KeyError: 101`` for a text file starting with
  ``h``, ``PytorchStreamReader failed reading zip archive`` for a truncated one, or the
  "would run code" refusal for a file that is no pickle at all.
* ``check_eval_fits``: evaluation of a checkpoint that lacks model weights (another
  architecture) fails instead of evaluating random heads (opt-in ``TEST.ALLOW_MISSING_KEYS``).
* ``check_resume_fits`` / ``check_optimizer_fits``: ``--resume`` onto a checkpoint whose
  classifier or optimizer state does not fit the model (the number of identities changed)
  fails before the first step, with how to fine-tune instead.

Errors are ``CheckpointError`` (a ``ValueError``; ``errors.UserError``'s one-line form).
"""
import os
import pickle
import zipfile

from .errors import UserError

__all__ = [
    "CheckpointError",
    "PickledCheckpointError",
    "check_eval_fits",
    "check_optimizer_fits",
    "check_resume_fits",
    "file_kind",
    "torch_load",
]

# buffers a checkpoint may lack without harm (set from the config)
OPTIONAL_KEYS = ("pixel_mean", "pixel_std")


class CheckpointError(UserError, ValueError):
    """A checkpoint file that is not one, is damaged, or does not fit the model."""


class PickledCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint that holds pickled code, refused by weights-only loading."""


def _where(path, key):
    return f"{path}, {key}" if key else str(path)


def file_kind(path):
    """"zip" (torch.save), "pickle" (legacy torch.save), "safetensors", or None (other)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # pickle protocol 2-5
        return "pickle"
    if len(head) > 8 and int.from_bytes(head[:8], "little") < (1 << 27) and head[8:9] == b"{":
        return "safetensors"
    return None


def _describe(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if not head:
        return "the file is empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with bytes {head[:8].hex(' ')}"
    text = text.splitlines()[0] if text.strip() else text
    return f"it starts with text {text[:20]!r}"


def torch_load(path, *, key="", allow_pickle=False, opt_in="", safe_globals=()):
    """``torch.load(path, map_location="cpu", weights_only=not allow_pickle)`` with checks.

    ``key``: the config key / option that named the file (for the messages); ``opt_in``: the
    setting that allows pickled files (named in the refusal); ``safe_globals``: extra types
    allowed by weights-only loading.  A missing file is ``FileNotFoundError``; everything else
    that cannot be loaded is ``CheckpointError`` naming the file and the key.
    """
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found ({key or 'path'}).")
    kind = file_kind(path)
    if kind is None:
        raise CheckpointError(
            f"the file is not a PyTorch checkpoint (neither the zip archive torch.save writes "
            f"nor a pickle; {_describe(path)})", _where(path, key),
            "give a checkpoint written by torch.save (e.g. a run's OUTPUT_DIR/model_final.pth)")
    if kind == "safetensors":
        raise CheckpointError("the file is a safetensors file, not a torch.save checkpoint",
                              _where(path, key), "give the .pth checkpoint (safetensors files "
                              "are read as pretrained weights, MODEL.BACKBONE.PRETRAIN_PATH, "
                              "when named *.safetensors)")
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"the checkpoint is truncated or damaged (a zip archive without its end, "
            f"{os.path.getsize(path)} bytes)", _where(path, key),
            "the file was cut short (an interrupted copy, download or save): copy it again or "
            "use another checkpoint (OUTPUT_DIR/model_*.pth)")
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            first = next((ln.strip() for ln in str(e).splitlines()
                          if "GLOBAL" in ln or "Unsupported" in ln), "")
            raise PickledCheckpointError(
                "the checkpoint holds pickled Python objects besides tensors: loading it would "
                "run code from the file" + (f" ({first[:160]})" if first else ""),
                _where(path, key),
                f"if you trust the file, set {opt_in} (this runs code from the file); else "
                f"re-save its state dict alone" if opt_in else
                "re-save its state dict alone") from None
        raise CheckpointError(f"the checkpoint cannot be unpickled ({str(e).splitlines()[0]})",
                              _where(path, key), "the file is damaged: use another "
                              "checkpoint") from e
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile,
            OSError) as e:
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"the checkpoint cannot be read ({type(e).__name__}: {msg[:200]})",
                              _where(path, key), "the file is damaged or truncated: copy it "
                              "again or use another checkpoint (OUTPUT_DIR/model_*.pth)") from e


def _strip(sd):
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _shape_mismatches(sd, target):
    return [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in sd.items()
            if k in target and hasattr(v, "shape") and tuple(v.shape) != tuple(target[k].shape)]


def _missing(sd, target):
    return [k for k in target if k not in sd and not k.endswith(OPTIONAL_KEYS)]


def _few(keys, n=3):
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_eval_fits(sd, model, path, *, key="MODEL.WEIGHTS", allow_missing=False):
    """Evaluation: every weight of ``model`` is in ``sd`` with the model's shape.

    Missing weights (a checkpoint of another architecture) would be evaluated at their random
    init: ``CheckpointError`` unless ``allow_missing`` (``TEST.ALLOW_MISSING_KEYS``)."""
    sd, target = _strip(sd), model.state_dict()
    bad = _shape_mismatches(sd, target)
    if bad:
        k, a, b = bad[0]
        raise CheckpointError(
            f"the checkpoint does not fit the model built from the config: {len(bad)} weight(s) "
            f"of another shape, e.g. {k}: {a} in the checkpoint, {b} in the model",
            _where(path, key), "give the config it was trained with (its OUTPUT_DIR/config.yaml)")
    missing = _missing(sd, target)
    if missing and not allow_missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} of the model's {len(target)} weights "
            f"({_few(missing)}): it is from another architecture, and evaluating would use "
            f"random weights there", _where(path, key),
            "give the config it was trained with (its OUTPUT_DIR/config.yaml), or set "
            "TEST.ALLOW_MISSING_KEYS True to evaluate anyway")
    return missing


def _is_classifier(k):
    return k.endswith(("classifier.weight", "classifier.bias")) or k in ("heads.weight",
                                                                        "heads.bias")


def check_resume_fits(sd, model, path):
    """``--resume``: the checkpoint holds every weight of ``model`` with its shape.

    A classifier of another size means the number of training identities changed (fast-reid
    would drop it and then crash inside the optimizer on its saved state)."""
    sd, target = _strip(sd), model.state_dict()
    bad = _shape_mismatches(sd, target)
    cls = [b for b in bad if _is_classifier(b[0])]
    where = f"{path}, --resume (OUTPUT_DIR/last_checkpoint)"
    fine_tune = (f"--resume continues the same run on the same data; to fine-tune on the new "
                 f"data start a new run from these weights: MODEL.WEIGHTS {path} without "
                 f"--resume, with another OUTPUT_DIR")
    if cls:
        k, a, b = cls[0]
        raise CheckpointError(
            f"the number of training identities changed: the checkpoint's classifier {k} has "
            f"{a[0]} identities, the training data now has {b[0]}", where, fine_tune)
    missing = _missing(sd, target)
    if bad or missing:
        detail = (f"{len(bad)} weight(s) of another shape, e.g. {bad[0][0]}: {bad[0][1]} vs "
                  f"{bad[0][2]}" if bad else f"{len(missing)} model weights missing "
                                             f"({_few(missing)})")
        raise CheckpointError(
            f"the checkpoint to resume from does not fit the model built from the config "
            f"({detail})", where,
            "resume with the config of the run that wrote it (OUTPUT_DIR/config.yaml); "
            + fine_tune.split("; ", 1)[1])


def check_optimizer_fits(optimizer, path):
    """After loading an optimizer state: every state tensor has its parameter's shape."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, v in optimizer.state.get(p, {}).items():
                if hasattr(v, "shape") and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                    raise CheckpointError(
                        f"the checkpoint's optimizer state does not fit the model: {name} of "
                        f"shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)} (the "
                        f"number of identities or the model changed)",
                        f"{path}, --resume (OUTPUT_DIR/last_checkpoint)",
                        "resume with the data and config of the run that wrote it; to "
                        "fine-tune, start a new run with MODEL.WEIGHTS <checkpoint> without "
                        "--resume")
