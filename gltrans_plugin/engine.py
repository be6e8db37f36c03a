"""Config + data + checkpoint -> a trained or loaded model: fast-reid's DefaultTrainer with the
plugin's choices, and ``load_model`` for everything that uses a trained checkpoint.

``Trainer``: datasets built from the config (root, synthetic sizes, consistent camera ids, one
listing per start-up), set-up checks (``checks.py``) before data loading and before the model is
built, unreadable images named (or skipped), a train sampler deterministic per epoch so
``--resume`` continues with the same batches, the optimizer without ContiguousParams,
epoch-based warm-up, a configurable log period, training health, our evaluator, and an optional
evaluation before training.  No training loop of our own: everything runs through
``fastreid.engine.DefaultTrainer``.

``cfg_for_checkpoint`` / ``load_model`` / ``model_arg_parser``: the one path from a config file
and a checkpoint to a model, shared by ``projects/train_net.py --eval-only`` and every tool.
"""
import contextlib
import logging
import os

import torch
from fastreid.data import build_reid_test_loader, build_reid_train_loader
from fastreid.data.build import _train_loader_from_config
from fastreid.data.transforms import build_transforms
from fastreid.engine import DefaultTrainer, default_setup, hooks
from fastreid.evaluation import ReidEvaluator
from fastreid.solver import build_optimizer
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from .checkpoint import atomic_open, load_file, load_state_dict, sizes_from_state_dict, \
    unwrap_state_dict
from .checks import check_data, check_identities, check_test_set, validate_config
from .compat import fix, put_eval_results, set_data_device
from .config import setup_cfg
from .data import build_dataset, camera_layout, clear_dataset_cache, test_camera_map
from .data.common import RobustCommDataset
from .data.datasets import check_train_set
from .data.samplers import EpochSampler, wrap_sampler
from .distributed import broadcast_buffers

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingHealth", "build_trained_model", "cfg_for_checkpoint",
           "default_setup_gltrans", "load_cfg", "load_eval_weights", "load_model",
           "model_arg_parser",
           "resolve_device", "setup_cfg", "write_results"]

# TEST.EVALUATOR values -> the evaluator; "fast" is the old name of "chunked"
_DEPRECATED_EVALUATORS = {"fast": "chunked"}


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for GLTrans (and any fast-reid model) on today's stack."""

    def __init__(self, cfg):
        validate_config(cfg)  # impossible settings fail here, before any data is read
        clear_dataset_cache()  # this start-up lists every dataset once (data/build.py)
        dtype = cfg.SOLVER.AMP.DTYPE
        if dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"SOLVER.AMP.DTYPE={dtype!r}: use 'auto', 'bf16' or 'fp16'.")
        try:
            super().__init__(cfg)
        except BaseException:  # the train loader's prefetch thread may already run: stop it,
            self.stop_train_stream()  # or the interpreter aborts at exit (rc 134)
            raise
        self._before_train_results = None
        # fast-reid sets this in default_setup only; a Trainer built without it honours it too
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
        self._trainer.amp_dtype = dtype  # read by the AMPTrainer (compat.amp_on_cpu)
        if cfg.SOLVER.WARMUP_EPOCHS > 0:  # the LRScheduler hook reads trainer.warmup_iters
            self.warmup_iters = warmup_iters(cfg, self.iters_per_epoch)

    # ------------------------------------------------------------------ data
    @classmethod
    def build_train_loader(cls, cfg):
        set_data_device(cfg.MODEL.DEVICE)  # CUDA copies / pinned memory only for a CUDA model
        items = []
        for name in cfg.DATASETS.NAMES:
            data = build_dataset(cfg, name)
            check_train_set(name, data)  # an empty folder is named, before fast-reid's tables
            if comm.is_main_process():
                data.show_train()
            items.extend(data.train)
        layout = camera_layout(cfg)  # identities of merged sets apart, each its own SIE rows
        train_set = RobustCommDataset(items, build_transforms(cfg, is_train=True), relabel=True,
                                      skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT)
        # Same camera index in training as in test (see camera_index, CameraLayout).
        train_set.cam_dict = {c: layout.train_index(c) for c in train_set.cams}
        check_identities(cfg, train_set)  # else the identity sampler never completes a batch
        sampler = _train_loader_from_config(cfg, train_set=train_set)["sampler"]
        # deterministic per epoch, so a resumed run sees the same batches (data/samplers.py)
        sampler = wrap_sampler(cfg, sampler, len(train_set))
        return build_reid_train_loader(cfg, train_set=train_set, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        set_data_device(cfg.MODEL.DEVICE)
        data = build_dataset(cfg, dataset_name)
        if comm.is_main_process():
            data.show_test()
        check_test_set(dataset_name, data)
        # the training's camera rows; a camera the training never saw gets a negative id
        cam = test_camera_map(cfg, dataset_name)
        items = [(item[0], item[1], cam(item[2])) + tuple(item[3:])
                 for item in data.query + data.gallery]
        test_set = RobustCommDataset(items, build_transforms(cfg, is_train=False), relabel=False,
                                     skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT)
        return build_reid_test_loader(cfg, test_set=test_set, num_query=len(data.query))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        name = cfg.TEST.EVALUATOR
        if name in _DEPRECATED_EVALUATORS:
            new = _DEPRECATED_EVALUATORS[name]
            logger.warning(f"TEST.EVALUATOR {name!r} is deprecated and will be removed in the "
                           f"next release: use {new!r}.")
            name = new
        if name == "chunked":
            from .evaluation import ChunkedReidEvaluator

            return data_loader, ChunkedReidEvaluator(cfg, num_query, output_dir)
        if name != "fastreid":
            raise ValueError(f"TEST.EVALUATOR {cfg.TEST.EVALUATOR!r}: use 'chunked' (ours) or "
                             f"'fastreid' (fast-reid's ReidEvaluator).")
        return data_loader, ReidEvaluator(cfg, num_query, output_dir)

    @classmethod
    def test(cls, cfg, model, *args, **kwargs):
        # every rank evaluates rank 0's BatchNorm statistics: the model rank 0 saves
        broadcast_buffers(model)
        return super().test(cfg, model, *args, **kwargs)

    # ------------------------------------------------------------------ solver
    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model, contiguous=False)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        if cfg.SOLVER.WARMUP_EPOCHS > 0:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.WARMUP_ITERS = warmup_iters(cfg, iters_per_epoch)
        return super().build_lr_scheduler(cfg, optimizer, iters_per_epoch)

    @staticmethod
    def auto_scale_hyperparams(cfg, num_classes):
        cfg = fill_num_cameras(cfg)
        check_data(cfg)  # empty query / gallery, camera ids vs the SIE table
        if comm.is_main_process() and cfg.OUTPUT_DIR:  # fast-reid writes config.yaml there
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        cfg = DefaultTrainer.auto_scale_hyperparams(cfg, num_classes)
        if comm.is_main_process() and cfg.OUTPUT_DIR:  # config.yaml with every auto value
            with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
                f.write(cfg.dump())
        return cfg

    def build_hooks(self):
        ret = super().build_hooks()
        period = max(1, int(self.cfg.SOLVER.LOG_PERIOD))
        for h in ret:
            if isinstance(h, hooks.PeriodicWriter):
                h._period = period
        if self.cfg.SOLVER.HEALTH.ENABLED and comm.is_main_process():
            ret.insert(0, TrainingHealth(period, self.cfg.SOLVER.HEALTH))
        if self.cfg.TEST.EVAL_BEFORE_TRAIN and comm.is_main_process():
            # the untrained model's accuracy at the first iteration of metrics.json / TensorBoard
            ret.insert(0, hooks.CallbackHook(before_train=lambda t: put_eval_results(
                t.storage, t._before_train_results, t.cfg.DATASETS.TESTS)))
        return ret

    # ------------------------------------------------------------------ run
    def resume_or_load(self, resume=True):
        """fast-reid's resume_or_load; on resume the train sampler continues at the checkpoint's
        next epoch, with the batches the uninterrupted run would have drawn there."""
        try:
            out = self._checked_resume_or_load(resume)
        except BaseException:  # stop the prefetch thread before raising (no SIGABRT at exit)
            self.stop_train_stream()
            raise
        if resume and self.start_epoch > 0:
            self.restart_train_stream(self.start_epoch)
        return out

    def _checked_resume_or_load(self, resume):
        """fast-reid's resume_or_load; a checkpoint to resume from must fit the model and the
        optimizer (checkpoint.check_resume_fits), and errors name the file and the key."""
        from .checkpoint import check_optimizer_fits, check_resume_fits

        ck = self.checkpointer
        resuming = resume and ck.has_checkpoint()
        ck.source_key = "--resume (OUTPUT_DIR/last_checkpoint)" if resuming else "MODEL.WEIGHTS"
        if not resuming:
            return super().resume_or_load(resume=resume)
        path = ck.get_checkpoint_file()
        with checked_loads(ck, lambda sd: check_resume_fits(sd, ck.model, path)):
            out = super().resume_or_load(resume=resume)
        check_optimizer_fits(self.optimizer, path)
        return out

    def train(self):
        try:
            return self._train()
        finally:  # fast-reid leaves the prefetch thread running; stop it
            self.stop_train_stream()

    def _train(self):
        if self.cfg.TEST.EVAL_BEFORE_TRAIN and self.start_epoch == 0:
            logger.info("Evaluating the model before training (TEST.EVAL_BEFORE_TRAIN).")
            self._before_train_results = self.test(self.cfg, self.model)
        if self.start_epoch >= self.max_epoch:
            logger.info(f"Checkpoint is at the last epoch ({self.max_epoch}); evaluating it.")
            self._last_eval_results = self.test(self.cfg, self.model)
            if comm.is_main_process():
                write_results(self.cfg.OUTPUT_DIR, self._last_eval_results, None,
                              self.start_epoch * self.iters_per_epoch)
            return self._last_eval_results
        results = super().train()
        if comm.is_main_process():
            if self._before_train_results:
                log_before_after(self._before_train_results, results)
            write_results(self.cfg.OUTPUT_DIR, results, self._before_train_results,
                          self.iter + 1)
        return results

    # ------------------------------------------------------------------ train stream
    def stop_train_stream(self):
        """Stop the train loader's prefetch thread (fast-reid leaves it running after training;
        a daemon thread still inside torch when the interpreter exits aborts the process).  A
        trainer whose construction failed before its loop (and so its thread) existed has
        nothing to stop."""
        loop = getattr(self, "_trainer", None)
        if loop is not None:
            _shutdown(loop.data_loader)

    def restart_train_stream(self, start_epoch):
        """Point the running train loader at ``start_epoch`` of its ``EpochSampler``.

        ``SimpleTrainer`` starts iterating the loader when it is built, before
        ``resume_or_load`` knows the epoch: stop that prefetch thread and start a new iterator
        at ``start_epoch``.  Returns True when the stream was moved.
        """
        inner = self._trainer
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


def _shutdown(loader):
    shutdown = getattr(loader, "_shutdown_background_thread", None)
    if shutdown is not None and getattr(loader, "iter", None) is not None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001  (the stream is discarded anyway)
            logger.debug("train-loader thread did not shut down cleanly", exc_info=True)


class TrainingHealth(hooks.HookBase):
    """Every ``period`` iterations, one log line per branch on how well the features its
    triplet term sees (pre-BNNeck unless ``MODEL.GLTRANS.TRI_FEATURE after``) separate
    identities (``health/<branch>/*`` scalars put by the model's loss, averaged over the
    period), and one warning per branch whose features are collapsing: mean cosine between
    different identities above ``MAX_COS_NEG`` or relative gap below ``MIN_REL_GAP`` for
    ``PATIENCE`` periods in a row.  Models that put no ``health/`` scalars log nothing."""

    def __init__(self, period, health_cfg):
        self._period = int(period)
        self._max_cos_neg = float(health_cfg.MAX_COS_NEG)
        self._min_rel_gap = float(health_cfg.MIN_REL_GAP)
        self._patience = max(1, int(health_cfg.PATIENCE))
        self._bad_periods = {}
        self._warned = set()

    def summary(self, storage):
        """{branch: {stat: mean over the last period}} from the EventStorage."""
        from .modeling.losses import HEALTH_PREFIX

        out = {}
        for name, hist in storage.histories().items():
            if name.startswith(HEALTH_PREFIX):
                branch, stat = name[len(HEALTH_PREFIX):].rsplit("/", 1)
                out.setdefault(branch, {})[stat] = hist.avg(self._period)
        return out

    def after_step(self):
        it = self.trainer.iter + 1
        if it % self._period and it != self.trainer.max_iter:
            return
        for branch, st in self.summary(self.trainer.storage).items():
            if "cos_neg" not in st:
                continue
            logger.info(
                f"health {branch:>8}: norm {st['norm']:.3g}  dist pos {st['pos']:.4g} "
                f"neg {st['neg']:.4g} (gap {100 * st['rel_gap']:.1f}%)  cos pos "
                f"{st['cos_pos']:.4f} neg {st['cos_neg']:.4f}  hard triplets wrong "
                f"{100 * st['violation']:.0f}%"
            )
            collapsing = st["cos_neg"] > self._max_cos_neg or st["rel_gap"] < self._min_rel_gap
            n = self._bad_periods.get(branch, 0) + 1 if collapsing else 0
            self._bad_periods[branch] = n
            if n >= self._patience and branch not in self._warned:
                self._warned.add(branch)
                logger.warning(
                    f"Branch {branch!r}: features are collapsing at iteration {it}: images "
                    f"of different identities have mean cosine {st['cos_neg']:.4f} and the "
                    f"negatives are only {100 * st['rel_gap']:.1f}% farther than the "
                    f"positives, for {n} log periods; the metric (triplet) loss is not "
                    f"separating identities. Check the learning rate / optimizer, warm-up "
                    f"and the triplet margin (SOLVER.HEALTH.* sets this check)."
                )


def fill_num_cameras(cfg):
    """MODEL.BACKBONE.NUM_CAMERAS = 0 means 'from the training data': max camera index + 1 of
    each training dataset, summed (each dataset its own rows: ``CameraLayout``)."""
    if cfg.MODEL.BACKBONE.NUM_CAMERAS > 0:
        return cfg
    layout = camera_layout(cfg)
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NUM_CAMERAS = layout.total
    logger.info(f"Auto-scaling MODEL.BACKBONE.NUM_CAMERAS={layout.total}"
                + (" (" + ", ".join(f"{n}: rows {layout.offsets[n]}.."
                                    f"{layout.offsets[n] + layout.spans[n] - 1}"
                                    for n in layout.names) + ")"
                   if len(layout.names) > 1 else ""))
    if frozen:
        cfg.freeze()
    return cfg


def cfg_for_checkpoint(cfg, path, *, key="MODEL.WEIGHTS", state_dict=None):
    """``cfg`` (cloned, unfrozen) with the sizes a leaf config leaves to the trainer filled from
    the checkpoint ``path``: MODEL.HEADS.NUM_CLASSES and MODEL.BACKBONE.NUM_CAMERAS (0 = "from
    the data") from its classifier and SIE-table shapes, so the model is built with the trained
    shapes.  Without a checkpoint, or where it shows no size, the classes default to 1 (an
    untrained model for reports / export) and the camera table to the training data's.
    ``MODEL.BACKBONE.PRETRAIN`` is turned off: the ImageNet file is never read, the trained
    weights replace it.  ``state_dict``: the checkpoint's, when the caller has read it already."""
    cfg = cfg.clone()
    cfg.defrost()
    if state_dict is None and path:
        state_dict = unwrap_state_dict(load_file(path, key=key))
    sizes = sizes_from_state_dict(state_dict) if state_dict is not None else {}
    if cfg.MODEL.HEADS.NUM_CLASSES <= 0:
        cfg.MODEL.HEADS.NUM_CLASSES = sizes.get("NUM_CLASSES", 1)
    bb = cfg.MODEL.BACKBONE
    if bb.NUM_CAMERAS <= 0 and "NUM_CAMERAS" in sizes and not bb.SIE_VIEW:
        bb.NUM_CAMERAS = sizes["NUM_CAMERAS"]
    bb.PRETRAIN = False
    if bb.SIE_CAMERA and bb.NUM_CAMERAS <= 0:
        cfg = fill_num_cameras(cfg)  # from the training data
    return cfg


def load_eval_weights(cfg, model, state_dict=None, key="MODEL.WEIGHTS"):
    """``cfg.MODEL.WEIGHTS`` into ``model`` for evaluation or a tool: every model weight must be
    in the checkpoint with its shape (a checkpoint of another architecture fails unless
    ``TEST.ALLOW_MISSING_KEYS``; ``checkpoint.load_state_dict``)."""
    path = cfg.MODEL.WEIGHTS
    if state_dict is None:
        state_dict = unwrap_state_dict(load_file(path, key=key))
    load_state_dict(model, state_dict, path, key, allow_missing=cfg.TEST.ALLOW_MISSING_KEYS)
    return model


def build_trained_model(cfg, key="MODEL.WEIGHTS"):
    """(cfg, model) for using the checkpoint ``cfg.MODEL.WEIGHTS``: sizes filled from it
    (``cfg_for_checkpoint``), the ImageNet file never read (``MODEL.BACKBONE.PRETRAIN`` off: the
    trained weights replace it), weights loaded by ``load_eval_weights``; no weights: the model
    keeps its initialisation (model reports, export tests).  Model in eval mode on
    ``cfg.MODEL.DEVICE``."""
    from fastreid.modeling import build_model

    path = cfg.MODEL.WEIGHTS
    sd = unwrap_state_dict(load_file(path, key=key)) if path else None
    cfg = cfg_for_checkpoint(cfg, path, key=key, state_dict=sd)
    model = build_model(cfg)
    if sd is not None:
        load_eval_weights(cfg, model, sd, key)
        logger.info("Loaded %s", path)
    model.to(cfg.MODEL.DEVICE).eval()
    return cfg, model


@contextlib.contextmanager
def checked_loads(checkpointer, check):
    """Within the block, ``check(model_state_dict)`` runs on every checkpoint ``checkpointer``
    loads, before fast-reid's own (non-strict) ``_load_model`` applies it."""
    load_model = checkpointer._load_model

    def _load_model(checkpoint):
        check(checkpoint.get("model", {}))
        return load_model(checkpoint)

    checkpointer._load_model = _load_model
    try:
        yield checkpointer
    finally:
        del checkpointer._load_model  # back to the class's method


def warmup_iters(cfg, iters_per_epoch):
    """SOLVER.WARMUP_EPOCHS in iterations (at least 1 when warm-up is asked for)."""
    return max(1, round(cfg.SOLVER.WARMUP_EPOCHS * iters_per_epoch))


RESULTS_FILE = "results.json"


def write_results(output_dir, results, before=None, iteration=None):
    """``OUTPUT_DIR/results.json`` (atomic): the final test metrics of a finished run,
    ``{"final": {...}, "before": {...} or null, "iteration": N}``, values as fast-reid logs
    them (percent).  Its presence marks a run as finished (``tools/reproduce.py``)."""
    if not output_dir:
        return
    import json

    def plain(d):
        return None if not d else {k: (plain(v) if isinstance(v, dict) else float(v))
                                    for k, v in d.items()}

    os.makedirs(output_dir, exist_ok=True)
    with atomic_open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
        json.dump({"final": plain(results), "before": plain(before), "iteration": iteration},
                  f, indent=1)


def log_before_after(before, after):
    """Log untrained vs trained mAP / rank-1 (single test set results)."""
    if not isinstance(before, dict) or "mAP" not in before or "mAP" not in after:
        return
    ratio = after["mAP"] / max(before["mAP"], 1e-12)
    logger.info(
        f"Before training: Rank-1 {before['Rank-1']:.2f}  mAP {before['mAP']:.2f} | "
        f"after training: Rank-1 {after['Rank-1']:.2f}  mAP {after['mAP']:.2f} "
        f"(mAP x{ratio:.1f})"
    )


def default_setup_gltrans(cfg, args):
    """fast-reid's default_setup, plus seeding from cfg.SEED and a device log line."""
    default_setup(cfg, args)
    # fastreid's default_setup configures only the "fastreid" logger: ours log there too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gltrans_plugin",
                 abbrev_name="gltrans")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED + comm.get_rank())
    log = logging.getLogger("fastreid")
    if cfg.MODEL.DEVICE == "cpu":
        log.info("No GPU found (or MODEL.DEVICE cpu): running on CPU.")


# ---------------------------------------------------------------------- trained models
def _tool_cfg(config_file, opts, weights, device):
    cfg = setup_cfg(config_file, list(opts))
    cfg.defrost()
    if weights:
        cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = resolve_device(device)
    return cfg


def load_cfg(config_file, opts=(), weights=None, device="auto"):
    """The config ``load_model`` builds its model from: the yaml + ``opts``, ``weights`` as
    MODEL.WEIGHTS, the device resolved, sizes filled from the checkpoint, no ImageNet file."""
    cfg = _tool_cfg(config_file, opts, weights, device)
    return cfg_for_checkpoint(cfg, cfg.MODEL.WEIGHTS, key="--weights / MODEL.WEIGHTS")


def load_model(config_file, weights=None, opts=(), device="auto"):
    """(cfg, model in eval mode) from a yaml (a run's ``config.yaml`` or a leaf config) and a
    trained checkpoint (``weights``, else ``MODEL.WEIGHTS``); any fast-reid model, GLTrans or
    not (``build_trained_model``).  ``device``: "auto" (CUDA when present, else CPU), "cpu",
    "cuda", "cuda:1" ...
    """
    cfg = _tool_cfg(config_file, opts, weights, device)
    return build_trained_model(cfg, key="--weights / MODEL.WEIGHTS")


def resolve_device(device="auto"):
    """"auto" -> "cuda" when a GPU is present, else "cpu"; a CUDA device without CUDA fails
    with the fix named."""
    device = str(device or "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible to torch here; use --device "
                         f"cpu (or auto).")
    return device


def model_arg_parser(doc, config_help="the model's yaml (a run's OUTPUT_DIR/config.yaml or a "
                                      "leaf config)",
                     weights_help="trained checkpoint (else MODEL.WEIGHTS)"):
    """The argument parser every model-facing tool starts from: its docstring as help text,
    --config-file, --weights and --device."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0], epilog=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help=config_help)
    p.add_argument("--weights", default="", help=weights_help)
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    return p


# ---------------------------------------------------------------------- fast-reid's DefaultTrainer
# Fixes of fastreid/engine/defaults.py's plain DefaultTrainer (registered with compat.fix, applied
# by ``import gltrans_plugin``), so fast-reid's own scripts (tools/train_net.py) train a GLTrans
# config as Trainer does.  Trainer overrides these methods or calls the patched ones.
@fix
def default_trainer_reads_dataset_keys():
    # fastreid/engine/defaults.py + data/build.py: DefaultTrainer's loaders build each dataset
    # under env FASTREID_DATASETS with the reader's default arguments -> DATASETS.ROOT and
    # DATASETS.SYNTHETIC.* are silently ignored (the built-in set is generated at its default
    # sizes under ./datasets), and training camera ids, relabelled in string order, stop
    # matching the test ids past 10 cameras (the SIE rows).  Its train and test loaders are now
    # Trainer's: the configured root and sizes, the same camera index in training and test.
    DefaultTrainer.build_train_loader = classmethod(
        lambda cls, cfg: Trainer.build_train_loader.__func__(cls, cfg))
    DefaultTrainer.build_test_loader = classmethod(
        lambda cls, cfg, dataset_name: Trainer.build_test_loader.__func__(cls, cfg, dataset_name))


@fix
def default_trainer_fills_cameras():
    # fastreid/engine/defaults.py: DefaultTrainer.auto_scale_hyperparams fills only
    # MODEL.HEADS.NUM_CLASSES, so a GLTrans config's MODEL.BACKBONE.NUM_CAMERAS 0 ("from the
    # data") builds a model without camera rows and the first batch fails on its camera ids.
    # The camera count now comes from the training data (fill_num_cameras) first.
    original = DefaultTrainer.auto_scale_hyperparams

    def auto_scale_hyperparams(cfg, num_classes):
        return original(fill_num_cameras(cfg), num_classes)

    DefaultTrainer.auto_scale_hyperparams = staticmethod(auto_scale_hyperparams)


@fix
def default_trainer_warmup_epochs():
    # fastreid/engine/defaults.py: DefaultTrainer builds the warm-up from SOLVER.WARMUP_ITERS and
    # its LRScheduler hook reads trainer.warmup_iters = SOLVER.WARMUP_ITERS, so SOLVER.WARMUP_EPOCHS
    # is ignored: with the base config's 1000 iterations the learning rate stays near
    # WARMUP_FACTOR x BASE_LR for a short run.  Both now follow WARMUP_EPOCHS when it is > 0.
    orig_scheduler = DefaultTrainer.build_lr_scheduler.__func__
    orig_init = DefaultTrainer.__init__

    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        if cfg.SOLVER.WARMUP_EPOCHS > 0:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.WARMUP_ITERS = warmup_iters(cfg, iters_per_epoch)
        return orig_scheduler(cls, cfg, optimizer, iters_per_epoch)

    def __init__(self, cfg):
        orig_init(self, cfg)
        if self.cfg.SOLVER.WARMUP_EPOCHS > 0:  # the LRScheduler hook reads it every step
            self.warmup_iters = warmup_iters(self.cfg, self.iters_per_epoch)

    DefaultTrainer.build_lr_scheduler = classmethod(build_lr_scheduler)
    DefaultTrainer.__init__ = __init__
