"""Reliability of fast-reid training runs: clear early errors, atomic checkpoints, resumable
sampling, NaN-loss stops and unreadable images.

``install()`` (idempotent; ``gltrans_plugin.engine`` calls it on import) patches fastreid in
memory, one small wrapper each, nothing copied and nothing edited in site-packages:

* ``atomic_checkpoints``: ``fastreid/utils/checkpoint.py`` writes ``model_*.pth`` and
  ``last_checkpoint`` in place (``PathManager.open(path, "wb")``); a kill during the write leaves
  a truncated file, and ``model_best`` / ``model_final`` are overwritten in place.  Every write of
  the checkpointer now goes to a temporary file in the same folder, is fsync'ed and renamed
  (``os.replace``) over the target, so a file is either the old one or the complete new one, and
  ``last_checkpoint`` (written after the checkpoint) never names a partial file.
* ``nonfinite_loss_stops``: ``fastreid/engine/train_loop.py`` ``SimpleTrainer._write_metrics``
  (called after backward, before ``optimizer.step``) checks the losses on rank 0 only, after
  averaging, and prints the whole dict.  Now every rank checks its own losses first, the ranks
  agree (one all-reduce of a flag), and all stop together with ``NonFiniteLossError`` naming the
  iteration, the bad loss keys (one per branch) and the rank -- before the step, so the weights
  stay finite.
* ``loader_errors_propagate``: ``fastreid/data/data_utils.py`` ``BackgroundGenerator`` runs the
  data loader in a thread; an exception there (an unreadable image, a bad transform) ends the
  thread and the training loop waits forever on its queue.  The exception is now handed to the
  training loop and raised there.
* ``images_read_as_rgb``: fast-reid's ``read_image`` keeps an image's mode (RGBA, CMYK, 16-bit
  ...), which the transforms then fail on; every image is now read as 8-bit RGB
  (``data/images.py``).
* ``reader_names_checked``: fast-reid's Market-1501 / DukeMTMC readers fail on a badly named
  file with ``AttributeError`` or a bare ``AssertionError``; they now name the file, the
  naming rule and the fix (``data/datasets.py``).

A disk that fills up during a checkpoint write is ``errors.DiskFullError`` naming the folder
and the file (the previous checkpoint is intact), not torch's ``enforce fail`` message.

Plus the pieces the trainer (``gltrans_plugin.engine.Trainer``) uses:

* ``RobustCommDataset``: fast-reid's ``CommDataset`` whose unreadable images raise
  ``CorruptImageError`` naming the file, or are skipped with a warning
  (``DATALOADER.SKIP_CORRUPT``).
* ``EpochSampler``: makes fast-reid's infinite samplers deterministic per epoch, so a run resumed
  at epoch ``e`` sees exactly the batches the uninterrupted run saw from epoch ``e`` on.
* ``merge_config`` / ``validate_config`` / ``check_data``: config typos and impossible settings
  fail at set-up, before data loading or before the first iteration, with one message each.
"""
import contextlib
import difflib
import errno
import glob
import itertools
import logging
import os
import re

import numpy as np
import torch
from fastreid.data.common import CommDataset
from torch.utils.data import Sampler

from .errors import DiskFullError

logger = logging.getLogger(__name__)

__all__ = [
    "CorruptImageError",
    "ConfigKeyError",
    "EpochSampler",
    "NonFiniteLossError",
    "RobustCommDataset",
    "atomic_open",
    "check_data",
    "install",
    "merge_config",
    "restart_train_stream",
    "stop_train_stream",
    "validate_config",
    "wrap_sampler",
]

INSTALLED = []  # names of the patches installed, in order


class CorruptImageError(OSError):
    """An image file that PIL cannot read (corrupt, truncated, not an image)."""


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; raised before the optimizer step."""


class ConfigKeyError(KeyError, ValueError):
    """A config key that does not exist (file or command line)."""

    def __str__(self):  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------- atomic writes
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


class _AtomicPathManager:
    """fastreid's PathManager with local writes going through ``atomic_open``."""

    def __init__(self, path_manager):
        self._pm = path_manager

    def open(self, path, mode="r", **kwargs):
        if any(c in mode for c in "wax") and "://" not in str(path):
            return atomic_open(path, mode)
        return self._pm.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._pm, name)


def _install_atomic_checkpoints():
    from fastreid.utils import checkpoint

    if not isinstance(checkpoint.PathManager, _AtomicPathManager):
        # Checkpointer.save and tag_last_checkpoint write through this module-level name
        checkpoint.PathManager = _AtomicPathManager(checkpoint.PathManager)


# ----------------------------------------------------------------------------- NaN / inf loss
def _install_nonfinite_loss_stops():
    from fastreid.engine import train_loop
    from fastreid.utils import comm

    original = train_loop.SimpleTrainer._write_metrics
    if getattr(original, "_gltrans_patched", False):
        return

    def _write_metrics(self, loss_dict, data_time, *args, **kwargs):
        bad = {k: float(v.detach().float().cpu()) for k, v in loss_dict.items()
               if not bool(torch.isfinite(v.detach()).all())}
        if comm.get_world_size() > 1:  # all ranks stop together (no rank left in a collective)
            import torch.distributed as dist

            device = next(iter(loss_dict.values())).device
            flag = torch.tensor([1.0 if bad else 0.0], device=device)
            dist.all_reduce(flag)
            if flag.item() > 0:
                per_rank = comm.all_gather(bad)
                bad = {f"{k} (rank {r})": v for r, d in enumerate(per_rank) for k, v in d.items()}
        if bad:
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            finite = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items()
                               if not any(key.split(" (rank")[0] == k for key in bad))
            raise NonFiniteLossError(
                f"Loss became NaN or infinite at iteration {getattr(self, 'iter', '?')}: {terms}"
                + (f" (finite: {finite})" if finite else "") + ". Training stopped before the "
                "optimizer step, so the weights are still finite. --resume would restore the "
                "checkpoint's learning-rate schedule and diverge again: instead start a new run "
                "from the last checkpoint, MODEL.WEIGHTS <OUTPUT_DIR>/<the file last_checkpoint "
                "names> without --resume and with another OUTPUT_DIR, with a lower "
                "SOLVER.BASE_LR or a longer warm-up (SOLVER.WARMUP_EPOCHS); or check the inputs "
                "of that branch."
            )
        return original(self, loss_dict, data_time, *args, **kwargs)

    _write_metrics._gltrans_patched = True
    train_loop.SimpleTrainer._write_metrics = _write_metrics


# ----------------------------------------------------------------------------- loader thread
class _LoaderError:
    def __init__(self, exc):
        self.exc = exc


def _install_loader_errors_propagate():
    from fastreid.data import data_utils

    BG = data_utils.BackgroundGenerator
    if getattr(BG.run, "_gltrans_patched", False):
        return
    orig_run, orig_next = BG.run, BG.next

    def run(self):
        try:
            orig_run(self)
        except BaseException as e:  # hand it to the consumer instead of dying silently
            self.queue.put(_LoaderError(e))

    def next(self):
        item = self.queue.get()
        if isinstance(item, _LoaderError):
            self.queue.put(item)  # every later call raises too
            raise item.exc
        if item is None:
            raise StopIteration
        return item

    run._gltrans_patched = True
    BG.run, BG.next = run, next
    del orig_next


def _install_images_read_as_rgb():
    from .data import images

    images.install()  # any image mode -> RGB (data/images.py)


def _install_reader_names_checked():
    from .data.datasets import install_reader_checks

    install_reader_checks()  # Market-1501 / Duke readers name a badly named file


def install():
    """Install the fastreid patches above once; returns the names installed."""
    for fn in (_install_atomic_checkpoints, _install_nonfinite_loss_stops,
               _install_loader_errors_propagate, _install_images_read_as_rgb,
               _install_reader_names_checked):
        name = fn.__name__[len("_install_"):]
        if name not in INSTALLED:
            fn()
            INSTALLED.append(name)
    return list(INSTALLED)


# ----------------------------------------------------------------------------- images
def _placeholder_image():
    from PIL import Image

    return Image.new("RGB", (64, 128), (128, 128, 128))


class RobustCommDataset(CommDataset):
    """fast-reid's ``CommDataset`` with one clear error for an unreadable image.

    ``skip_corrupt`` False: ``CorruptImageError`` naming the file and the fix.  True: a warning
    (once per file) and, in training (``relabel``), another image of the same identity in its
    place (the identity sampler's batch composition is kept); in test, a grey placeholder image
    is used, so query / gallery indices stay aligned (its matches count as misses).
    """

    def __init__(self, img_items, transform=None, relabel=True, skip_corrupt=False):
        super().__init__(img_items, transform, relabel)
        self.skip_corrupt = bool(skip_corrupt)
        self._bad = set()

    def _check_readable(self, index, error):
        """Raise CorruptImageError if item ``index``'s file cannot be read; else return."""
        from fastreid.data.data_utils import read_image

        path = self.img_items[index][0]
        try:
            read_image(path)
        except Exception as e:
            raise CorruptImageError(
                f"Cannot read image {path} ({type(e).__name__}: {e}). The file is corrupt, "
                f"truncated or not an image: replace or delete it, or set "
                f"DATALOADER.SKIP_CORRUPT True to skip unreadable images with a warning."
            ) from e
        raise error  # the image is fine: the error came from elsewhere (e.g. a transform)

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except Exception as e:  # noqa: BLE001  (re-raised unless the image is the cause)
            if isinstance(e, CorruptImageError):
                raise
            try:
                self._check_readable(index, e)
            except CorruptImageError as bad:
                if not self.skip_corrupt:
                    raise
                return self._skip(index, bad)

    def _skip(self, index, error):
        path = self.img_items[index][0]
        if path not in self._bad:
            self._bad.add(path)
            logger.warning("Skipping unreadable image (DATALOADER.SKIP_CORRUPT): %s", error)
        if not self.relabel:  # test set: keep the index, use a blank image
            item = self.img_items[index]
            img = _placeholder_image()
            if self.transform is not None:
                img = self.transform(img)
            return {"images": img, "targets": item[1], "camids": item[2], "img_paths": item[0]}
        pid = self.img_items[index][1]
        n = len(self.img_items)
        order = sorted(range(n), key=lambda j: (self.img_items[j][1] != pid, (j - index) % n))
        for j in order[1:]:
            if self.img_items[j][0] in self._bad:
                continue
            try:
                return super().__getitem__(j)
            except Exception:  # noqa: BLE001
                self._bad.add(self.img_items[j][0])
                logger.warning("Skipping unreadable image (DATALOADER.SKIP_CORRUPT): %s",
                               self.img_items[j][0])
        raise CorruptImageError(f"No readable image left in the data set (last: {path}).")


# ----------------------------------------------------------------------------- sampler
class EpochSampler(Sampler):
    """A fast-reid infinite sampler made deterministic per epoch (for exact resumption).

    fast-reid's samplers (``NaiveIdentitySampler``, ``TrainingSampler``, ...) produce one endless
    index stream from one seed, and ``NaiveIdentitySampler`` draws from numpy's *global* RNG,
    which the data transforms also use; a resumed run restarts the stream, so it trains on other
    batches than the uninterrupted run would have.  Here epoch ``e`` is the first
    ``epoch_size`` indices of the wrapped sampler's own stream seeded with ``seed + e``
    (generated eagerly, numpy's global RNG saved and restored around it), sliced per rank as
    fast-reid does.  ``start_epoch`` (set by ``Trainer.resume_or_load``) skips finished epochs
    without loading a single image.

    Args:
        base: a fast-reid sampler with ``_infinite_indices()``, ``_seed``, ``_rank``,
            ``_world_size`` (global stream, per-rank slicing in ``__iter__``).
        epoch_size: global number of indices per epoch (iterations per epoch x global batch).
        seed: base seed (``cfg.SEED`` when >= 0, else the sampler's shared random seed).
    """

    def __init__(self, base, epoch_size, seed=None):
        self.base = base
        self.epoch_size = int(epoch_size)
        self.seed = int(base._seed if seed is None else seed)
        self.start_epoch = 0
        self._rank, self._world_size = base._rank, base._world_size
        if self.epoch_size <= 0 or self.epoch_size % self._world_size:
            raise ValueError(f"epoch_size {epoch_size} must be a positive multiple of the number "
                             f"of processes ({self._world_size}).")

    def epoch_indices(self, epoch):
        """The global index list of ``epoch`` (all ranks)."""
        saved_state, saved_seed = np.random.get_state(), self.base._seed
        try:
            self.base._seed = (self.seed + 1_000_003 * int(epoch)) % (2 ** 32)
            return [int(i) for i in itertools.islice(self.base._infinite_indices(),
                                                     self.epoch_size)]
        finally:
            self.base._seed = saved_seed
            np.random.set_state(saved_state)

    def __iter__(self):
        for epoch in itertools.count(self.start_epoch):
            yield from self.epoch_indices(epoch)[self._rank::self._world_size]


def wrap_sampler(cfg, sampler, dataset_len):
    """``EpochSampler`` around a fast-reid infinite sampler, else ``sampler`` unchanged."""
    if not cfg.DATALOADER.get("EPOCH_SAMPLER", True):
        return sampler
    needed = ("_infinite_indices", "_seed", "_rank", "_world_size")
    if not all(hasattr(sampler, a) for a in needed):
        logger.info("Sampler %s is not an infinite fast-reid sampler; resumed runs will not see "
                    "the same batches.", type(sampler).__name__)
        return sampler
    world = sampler._world_size
    mini = cfg.SOLVER.IMS_PER_BATCH // world
    iters = max(1, dataset_len // cfg.SOLVER.IMS_PER_BATCH)  # = DefaultTrainer.iters_per_epoch
    seed = cfg.SEED if cfg.SEED >= 0 else None
    return EpochSampler(sampler, iters * mini * world, seed=seed)


def _shutdown(loader):
    shutdown = getattr(loader, "_shutdown_background_thread", None)
    if shutdown is not None and getattr(loader, "iter", None) is not None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001  (the stream is discarded anyway)
            logger.debug("train-loader thread did not shut down cleanly", exc_info=True)


def stop_train_stream(trainer):
    """Stop the train loader's prefetch thread (fast-reid leaves it running after training; a
    daemon thread still inside torch when the interpreter exits aborts the process).  A trainer
    whose construction failed before its loop (and so its thread) existed has nothing to stop."""
    loop = getattr(trainer, "_trainer", None)
    if loop is not None:
        _shutdown(loop.data_loader)


def restart_train_stream(trainer, start_epoch):
    """Point the trainer's running train loader at ``start_epoch`` of its ``EpochSampler``.

    ``SimpleTrainer`` starts iterating the loader when it is built, before ``resume_or_load``
    knows the epoch: stop that prefetch thread and start a new iterator at ``start_epoch``.
    Returns True when the stream was moved.
    """
    inner = trainer._trainer
    loader = inner.data_loader
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if not isinstance(sampler, EpochSampler):
        return False
    sampler.start_epoch = int(start_epoch)
    _shutdown(loader)
    inner._data_loader_iter = iter(loader)
    logger.info("Train sampler resumed at epoch %d (same batches as an uninterrupted run).",
                start_epoch)
    return True


# ----------------------------------------------------------------------------- config
_MISSING_KEY = re.compile(r"Non-existent (?:config )?key: ([^\s'\"]+)")


def _all_keys(cfg, prefix=""):
    out = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        out.extend(_all_keys(v, full + ".") if isinstance(v, dict) else [full])
    return out


def _unknown_key_error(cfg, err, where):
    m = _MISSING_KEY.search(str(err))
    if not m:
        return None
    key = m.group(1)
    close = difflib.get_close_matches(key, _all_keys(cfg), n=2, cutoff=0.9)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return ConfigKeyError(
        f"Unknown config key {key} in {where}.{hint} Keys are defined by fast-reid "
        f"(fastreid/config/defaults.py) and gltrans_plugin/config.py (add_gltrans_config)."
    )


def merge_config(cfg, config_file="", opts=()):
    """``cfg.merge_from_file`` + ``merge_from_list`` with a one-line error for an unknown key."""
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            err = _unknown_key_error(cfg, e, f"config file {config_file} (or a _BASE_ it "
                                             f"includes)")
            if err is None:
                raise
            raise err from None
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError) as e:
        err = _unknown_key_error(cfg, e, "the command-line options")
        if err is None and isinstance(e, AssertionError):  # yacs: odd length, a fixed key
            raise ValueError(f"Command-line options {list(opts or [])}: {e}. Give them as "
                             f"KEY VALUE pairs after the flags.") from None
        if err is None:
            raise
        raise err from None
    return cfg


_GLTRANS_BACKBONES = ("build_gltrans_backbone", "build_gltrans_vit_backbone")


def validate_config(cfg):
    """Impossible settings, found from the config alone (no data, no model build).

    GLTrans backbones: image size vs patch / stride (train and test sizes), MODEL.GLTRANS.AGG_LAYERS
    vs the depth (K <= 12), PTL parts vs grid rows, GMA heads vs the embedding dim, a missing
    pretrained-weight file.  Any model: identity-sampler batch sizes.  Each check reuses the
    model's own validation, so the messages are the ones the model would raise later.
    """
    _check_batch(cfg)
    if cfg.MODEL.BACKBONE.NAME in _GLTRANS_BACKBONES:
        _check_gltrans(cfg)
    return cfg


def _check_batch(cfg):
    from fastreid.utils import comm

    world = comm.get_world_size()
    ims = cfg.SOLVER.IMS_PER_BATCH
    if ims < world or ims % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {ims} must be a positive multiple of the number "
                         f"of processes ({world}): it is the global batch, split across them.")
    if cfg.DATALOADER.SAMPLER_TRAIN in ("NaiveIdentitySampler", "BalancedIdentitySampler",
                                        "SetReWeightSampler"):
        k = cfg.DATALOADER.NUM_INSTANCE
        mini = ims // world
        if k < 1 or mini % k:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH {ims} over {world} process(es) gives {mini} images per "
                f"process, not a multiple of DATALOADER.NUM_INSTANCE {k}: fast-reid's identity "
                f"sampler would never complete a batch (training hangs). Use IMS_PER_BATCH = "
                f"identities x NUM_INSTANCE x processes.")


def _check_gltrans(cfg):
    from .modeling.backbone import VIT_DEPTH, GLTransViT, _normalise_layers, patch_grid
    from .modeling.gma import GMA
    from .modeling.ptl import stripe_sizes

    args = GLTransViT.from_config(cfg)  # unknown DEPTH -> ValueError
    bb, g = cfg.MODEL.BACKBONE, cfg.MODEL.GLTRANS
    for key in ("SIZE_TRAIN", "SIZE_TEST"):
        size = tuple(cfg.INPUT[key])
        try:
            grid = patch_grid(size, args["patch_size"], args["stride_size"])
        except ValueError as e:
            raise ValueError(f"INPUT.{key} {list(size)}: {e}") from None
        if cfg.MODEL.BACKBONE.NAME == "build_gltrans_backbone" and g.LOCAL.ENABLED:
            stripe_sizes(grid[0], int(g.PTL.NUM_PARTS))  # NUM_PARTS > grid rows
    if cfg.MODEL.BACKBONE.NAME == "build_gltrans_backbone":
        _normalise_layers(tuple(g.AGG_LAYERS), VIT_DEPTH)  # K > depth, out of range, repeats
        if g.LOCAL.ENABLED and g.GMA.ENABLED:
            d = args["embed_dim"]
            GMA(embed_dim=d, global_dim=d, num_heads=int(g.GMA.NUM_HEADS),
                reduction=int(g.GMA.REDUCTION))  # heads / reduction must divide D
    if bb.PRETRAIN and not os.path.isfile(str(bb.PRETRAIN_PATH)):
        from .modeling.weights import read_checkpoint

        read_checkpoint(str(bb.PRETRAIN_PATH))  # FileNotFoundError naming the key and the fix


def check_data(cfg, build_dataset):
    """Data checks before the model is built: non-empty query / gallery of every test set, and
    camera ids inside the SIE table (GLTrans with MODEL.BACKBONE.SIE_CAMERA and strict ids).

    ``build_dataset(cfg, name)`` builds a registered dataset (``engine.build_dataset``).
    """
    from fastreid.utils import comm

    from .data import camera_index
    from .data.datasets import check_image_headers

    test_cams = {}
    for name in cfg.DATASETS.TESTS:
        data = build_dataset(cfg, name)
        if not data.query or not data.gallery:
            folders = [getattr(data, a) for a in ("query_dir", "gallery_dir") if hasattr(data, a)]
            raise ValueError(f"Dataset {name}: empty query ({len(data.query)} images) or gallery "
                             f"({len(data.gallery)} images); nothing to evaluate. Check its "
                             f"folders under the dataset root (DATASETS.ROOT)"
                             + (f": {', '.join(folders)}." if folders else "."))
        if not cfg.DATALOADER.SKIP_CORRUPT and comm.is_main_process():
            check_image_headers(name, data)  # not at the first evaluation, an epoch later
        test_cams[name] = {camera_index(c) for _, _, c in data.query + data.gallery}
    bb = cfg.MODEL.BACKBONE
    if bb.NAME != "build_gltrans_backbone" or not bb.SIE_CAMERA \
            or not cfg.MODEL.GLTRANS.STRICT_CAMIDS or bb.NUM_CAMERAS <= 0:
        return
    table = int(bb.NUM_CAMERAS)
    sources = [(f"training set {n}", {camera_index(c) for _, _, c in build_dataset(cfg, n).train})
               for n in cfg.DATASETS.NAMES] + [(f"test set {n}", c) for n, c in test_cams.items()]
    for what, cams in sources:
        bad = sorted(c for c in cams if not 0 <= c < table)
        if bad:
            raise ValueError(
                f"Camera id(s) {bad} of the {what} are outside the SIE table of "
                f"MODEL.BACKBONE.NUM_CAMERAS={table} (valid ids 0..{table - 1}). Set NUM_CAMERAS "
                f"to the number of cameras ({max(bad) + 1} or more; 0 = from the training data), "
                f"or MODEL.GLTRANS.STRICT_CAMIDS False to give such images no SIE term.")
