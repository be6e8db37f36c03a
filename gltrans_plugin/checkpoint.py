"""Checkpoint files: the one place that reads them, writes them atomically, and checks that
one fits the model it is loaded into.

* ``load_file(path, key=...)``: the only ``torch.load`` of the package (weights-only; pickled
  files need the one opt-in, env ``GLTRANS_ALLOW_PICKLE=1``).  It first tells a torch checkpoint
  (zip archive or legacy pickle) from any other file, and a truncated archive from a complete
  one, so each gets its own message naming the file and the config key that pointed at it --
  instead of torch's ``KeyError: 101`` for a text file starting with ``h``,
  ``PytorchStreamReader failed reading zip archive`` for a truncated one, or the "would run
  code" refusal for a file that is no pickle at all.  ``safetensors=True`` also reads
  ``*.safetensors`` files (pretrained weights).  What it returns is checked: every entry of a
  zip archive against its CRC-32 (torch does not check them: a few flipped bytes inside a
  tensor load silently), and every floating tensor for NaN / infinite values; both errors name
  the file and the tensor.
* ``unwrap_state_dict`` / ``sizes_from_state_dict``: a fast-reid
  checkpoint or bare state dict -> name -> tensor, and the class / camera counts it shows.
* ``load_state_dict`` / ``check_eval_fits``: trained weights for evaluation or a tool; a
  checkpoint that lacks model weights or holds weights the model does not have (another
  architecture) or has other shapes fails instead of evaluating random or missing parts
  (opt-in ``TEST.ALLOW_MISSING_KEYS``, for both).
* ``check_resume_fits`` / ``check_optimizer_fits``: ``--resume`` onto a checkpoint whose
  classifier or optimizer state does not fit the model (the number of identities changed)
  fails before the first step, with how to fine-tune instead.
* ``atomic_open``: writes through a temporary file renamed over the target (fast-reid's
  checkpointer is routed through it by ``compat.atomic_checkpoints``); a full disk is
  ``errors.DiskFullError`` naming the file.

Errors are ``CheckpointError`` (a ``ValueError``; ``errors.UserError``'s one-line form).
"""
import contextlib
import errno
import glob
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping

from .errors import DiskFullError, UserError

__all__ = [
    "ALLOW_PICKLE_ENV",
    "CheckpointError",
    "PickledCheckpointError",
    "AtomicPathManager",
    "atomic_open",
    "check_eval_fits",
    "check_optimizer_fits",
    "check_resume_fits",
    "check_finite",
    "file_kind",
    "load_file",
    "load_state_dict",
    "sizes_from_state_dict",
    "unwrap_state_dict",
]

# The one opt-in for checkpoints that hold pickled code (torch.load with weights_only=False).
ALLOW_PICKLE_ENV = "GLTRANS_ALLOW_PICKLE"
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


def pickle_allowed():
    """True when env ``GLTRANS_ALLOW_PICKLE=1`` allows checkpoints with pickled code."""
    return os.environ.get(ALLOW_PICKLE_ENV, "") == "1"


def _safe_globals():
    # numpy scalars / arrays: fast-reid's checkpointer saves the best metric as a numpy scalar
    import numpy as np

    safe = [np.dtype, np.ndarray, np._core.multiarray.scalar, np._core.multiarray._reconstruct]
    return safe + [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]


def require_file(path, key="", fix=""):
    """``FileNotFoundError`` naming ``path``, the key that named it and ``fix``."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found ({key or 'path'})."
                                + (f" {fix}" if fix else ""))


_DAMAGED_FIX = ("copy the file again from where it came from, or use another checkpoint "
                "(OUTPUT_DIR/model_*.pth)")


def _crc_failures(path):
    """Names of the zip entries of ``path`` whose bytes do not match their CRC-32 (entries
    written without one, CRC 0 -- torch.save with compute_crc32 off -- are not checked)."""
    bad = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.CRC == 0 or info.is_dir():
                continue
            try:
                with zf.open(info) as f:
                    while f.read(1 << 24):
                        pass
            except zipfile.BadZipFile:
                bad.append(info.filename)
    return bad


def _tensors(obj, prefix=""):
    """(dotted name, tensor) of every tensor in nested dicts / lists / tuples."""
    import torch

    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _storage_crc(t):
    import torch

    data = torch.empty(0, dtype=torch.uint8).set_(t.detach().cpu().untyped_storage())
    return zlib.crc32(data.numpy())


def _damaged_tensors(obj, path, bad):
    """Names of the tensors of ``obj`` (loaded from ``path``) whose storage bytes match no
    stored CRC of the archive's data entries: the tensors the damaged entries ``bad`` hold."""
    with zipfile.ZipFile(path) as zf:
        good = {i.CRC for i in zf.infolist() if "/data/" in i.filename and i.filename not in bad}
    return [name for name, t in _tensors(obj) if _storage_crc(t) not in good]


def check_finite(obj, path, key=""):
    """``CheckpointError`` naming ``path`` and the first floating tensor of ``obj`` (a loaded
    checkpoint or state dict) holding NaN or infinite values."""
    import torch

    for name, t in _tensors(obj):
        if not t.is_floating_point() or t.numel() == 0:
            continue
        try:
            finite = torch.isfinite(t)
        except (RuntimeError, TypeError):  # a dtype without isfinite (float8): not checked
            continue
        if not bool(finite.all()):
            n = int(finite.numel() - finite.sum())
            raise CheckpointError(
                f"tensor {name!r} holds {n} NaN / infinite value(s) of {t.numel()}: the "
                f"features of a model with these weights would be NaN", _where(path, key),
                "the file is damaged or was saved from a run that diverged: "
                + _DAMAGED_FIX.replace("(OUTPUT_DIR", "(an earlier OUTPUT_DIR"))


def load_file(path, *, key="", allow_pickle=None, safetensors=False, missing_fix=""):
    """``torch.load`` of ``path`` to CPU, weights-only, with checks.

    ``key``: the config key / option that named the file (for the messages);
    ``allow_pickle``: None = env ``GLTRANS_ALLOW_PICKLE=1`` (the one opt-in, named in the
    refusal); ``safetensors``: also read a ``*.safetensors`` file (a tensor dict);
    ``missing_fix``: what to do about a missing file.  A missing file is
    ``FileNotFoundError``; everything else that cannot be loaded is ``CheckpointError`` naming
    the file and the key.
    """
    require_file(path, key, missing_fix)
    if allow_pickle is None:
        allow_pickle = pickle_allowed()
    if safetensors and str(path).endswith(".safetensors"):
        from safetensors.torch import load_file as load_safetensors

        try:
            out = load_safetensors(path, device="cpu")
        except Exception as e:
            raise CheckpointError(f"not a readable safetensors file ({e})", _where(path, key),
                                  "give a complete .safetensors file or a torch checkpoint") from e
        check_finite(out, path, key)
        return out
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
    bad = _crc_failures(path) if kind == "zip" else []
    try:
        out = _torch_load(path, key, allow_pickle)
    except CheckpointError:
        if bad:
            raise CheckpointError(f"the checkpoint is damaged: archive entry {bad[0]} fails its "
                                  f"CRC-32 check (its bytes changed after it was written)",
                                  _where(path, key), _DAMAGED_FIX) from None
        raise
    if bad:
        names = _damaged_tensors(out, path, bad)
        what = (f"tensor {names[0]!r} (archive entry {bad[0]})" if len(names) == 1
                else f"archive entr{'y' if len(bad) == 1 else 'ies'} {', '.join(bad[:3])}")
        raise CheckpointError(f"the checkpoint is damaged: {what} fails its CRC-32 check (its "
                              f"bytes changed after torch.save wrote them)", _where(path, key),
                              _DAMAGED_FIX)
    check_finite(out, path, key)
    return out


def _torch_load(path, key, allow_pickle):
    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            first = next((ln.strip() for ln in str(e).splitlines()
                          if "GLOBAL" in ln or "Unsupported" in ln), "")
            raise PickledCheckpointError(
                "the checkpoint holds pickled Python objects besides tensors: loading it would "
                "run code from the file" + (f" ({first[:160]})" if first else ""),
                _where(path, key),
                f"if you trust the file, set {ALLOW_PICKLE_ENV}=1 (this runs code from the "
                f"file); else re-save its state dict alone") from None
        raise CheckpointError(f"the checkpoint cannot be unpickled ({str(e).splitlines()[0]})",
                              _where(path, key), "the file is damaged: use another "
                              "checkpoint") from e
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile,
            OSError) as e:
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"the checkpoint cannot be read ({type(e).__name__}: {msg[:200]})",
                              _where(path, key), "the file is damaged or truncated: copy it "
                              "again or use another checkpoint (OUTPUT_DIR/model_*.pth)") from e


_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state", "model_state_dict")


def unwrap_state_dict(obj):
    """Strip ``model`` / ``state_dict`` / ... wrappers and ``module.`` prefixes (pure)."""
    import torch

    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS
                      if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(
            "the checkpoint holds no state dict (no mapping of names to tensors, also not under "
            f"any of the keys {list(_WRAPPER_KEYS)}); give a ViT weight file "
            "(MODEL.BACKBONE.PRETRAIN_PATH).")
    out = {}
    for k, v in obj.items():
        if not torch.is_tensor(v):
            continue
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def sizes_from_state_dict(sd):
    """{"NUM_CLASSES": C, "NUM_CAMERAS": T} as far as the checkpoint's shapes show them.

    C: rows of a classifier (``heads.necks.<b>.classifier.weight`` for GLTrans,
    ``heads.weight`` for fast-reid's EmbeddingHead); T: rows of ``backbone.sie_embed``.
    """
    out, sd = {}, _strip(sd)
    for k, v in sd.items():
        if k.startswith("heads.") and (k.endswith("classifier.weight") or k == "heads.weight"):
            out["NUM_CLASSES"] = int(v.shape[0])
            break
    if "backbone.sie_embed" in sd:
        out["NUM_CAMERAS"] = int(sd["backbone.sie_embed"].shape[0])
    return out


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


def _unexpected(sd, target):
    return [k for k in sd if k not in target and not k.endswith(OPTIONAL_KEYS)]


def check_eval_fits(sd, model, path, *, key="MODEL.WEIGHTS", allow_missing=False):
    """Evaluation: every weight of ``model`` is in ``sd`` with the model's shape, and ``sd``
    holds no weight the model lacks.

    Missing weights (a checkpoint of another architecture) would be evaluated at their random
    init, unexpected ones (a full GLTrans checkpoint under a ViT-baseline config) would be
    dropped: ``CheckpointError`` unless ``allow_missing`` (``TEST.ALLOW_MISSING_KEYS``, the one
    opt-in for a checkpoint that does not match the model's weights)."""
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
    unexpected = _unexpected(sd, target)
    if unexpected and not allow_missing:
        raise CheckpointError(
            f"the checkpoint holds {len(unexpected)} weights the model built from the config "
            f"does not have ({_few(unexpected)}): it is from another architecture, and "
            f"evaluating would drop them", _where(path, key),
            "give the config it was trained with (its OUTPUT_DIR/config.yaml), or set "
            "TEST.ALLOW_MISSING_KEYS True to evaluate the matching weights alone")
    return missing


def load_state_dict(model, sd, path="checkpoint", key="MODEL.WEIGHTS", allow_missing=False):
    """Load trained weights ``sd`` into ``model`` for use (evaluation, tools): every weight of
    the model must be there with its shape and no other (``check_eval_fits``; missing or
    unexpected ones only with ``allow_missing``, ``TEST.ALLOW_MISSING_KEYS``, then logged and
    ignored).  Returns the missing keys."""
    import logging

    sd = _strip(sd)
    missing = check_eval_fits(sd, model, path, key=key, allow_missing=allow_missing)
    target = model.state_dict()
    unexpected = [k for k in sd if k not in target]
    if unexpected:
        logging.getLogger(__name__).warning(
            "%s: %d key(s) not in the model, ignored: %s", path, len(unexpected), _few(unexpected))
    model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
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


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open ``path`` for writing through a temporary file in the same folder.

    On a clean exit the data is flushed, fsync'ed and renamed over ``path`` (atomic on POSIX and
    Windows); on an exception the temporary file is removed and ``path`` is untouched.  A kill in
    between leaves ``path`` as it was plus a stray ``.<name>.tmp-<pid>`` file, removed by the next
    write of the same ``path``.
    """
    folder, base = os.path.split(os.path.abspath(path))
    for stale in glob.glob(os.path.join(folder, f".{glob.escape(base)}.tmp-*")):
        with contextlib.suppress(OSError):
            os.remove(stale)
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    f = open(tmp, mode)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if _is_disk_full(e):  # torch reports it as "[enforce fail at inline_container.cc]"
            raise DiskFullError(path) from e
        raise
    _fsync_dir(folder)


def _is_disk_full(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fsync_dir(folder):
    # make the rename itself durable (no-op where directories cannot be opened, e.g. Windows)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicPathManager:
    """fastreid's PathManager with local writes going through ``atomic_open``."""

    def __init__(self, path_manager):
        self._pm = path_manager

    def open(self, path, mode="r", **kwargs):
        if any(c in mode for c in "wax") and "://" not in str(path):
            return atomic_open(path, mode)
        return self._pm.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._pm, name)
