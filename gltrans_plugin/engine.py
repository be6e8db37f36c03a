"""fast-reid's DefaultTrainer with the plugin's choices: datasets built from the config (root,
synthetic sizes, consistent camera ids), the optimizer without ContiguousParams, epoch-based
warm-up, a configurable log period, our evaluator, and an optional evaluation before training.

No training loop of our own: everything runs through ``fastreid.engine.DefaultTrainer``.
Reliability (``reliability.py``): config typos and impossible settings fail before data loading,
data problems before the model is built, unreadable images name the file (or are skipped), the
train sampler is deterministic per epoch so ``--resume`` continues with the same batches, and
checkpoints are written atomically.
"""
import contextlib
import logging
import os

import torch
from fastreid.config import get_cfg
from fastreid.data import build_reid_test_loader, build_reid_train_loader
from fastreid.data.build import _train_loader_from_config
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.transforms import build_transforms
from fastreid.engine import DefaultTrainer, default_setup, hooks
from fastreid.evaluation import ReidEvaluator
from fastreid.solver import build_optimizer
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from . import reliability
from .compat import set_data_device
from .config import add_gltrans_config
from .data import camera_index, check_dataset_root, synthetic_kwargs
from .data.datasets import check_train_set
from .distributed import broadcast_buffers
from .reliability import RobustCommDataset, check_data, merge_config, validate_config

logger = logging.getLogger(__name__)

reliability.install()  # atomic checkpoints, NaN-loss stop, loader errors raised (see there)


def dataset_root(cfg):
    """The dataset root: DATASETS.ROOT, else env FASTREID_DATASETS, else "datasets"."""
    return cfg.DATASETS.ROOT or os.getenv("FASTREID_DATASETS", "datasets")


def build_dataset(cfg, name):
    """Instantiate a registered dataset under the configured root; an unknown name or a missing
    folder fails here, before training, with the expected layout in the message."""
    root = dataset_root(cfg)
    check_dataset_root(name, root)
    kwargs = synthetic_kwargs(cfg) if name == "SyntheticReID" else {}
    return DATASET_REGISTRY.get(name)(root=root, combineall=False, **kwargs)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for GLTrans (and any fast-reid model) on today's stack."""

    def __init__(self, cfg):
        validate_config(cfg)  # impossible settings fail here, before any data is read
        dtype = cfg.SOLVER.AMP.get("DTYPE", "auto")
        if dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"SOLVER.AMP.DTYPE={dtype!r}: use 'auto', 'bf16' or 'fp16'.")
        try:
            super().__init__(cfg)
        except BaseException:  # the train loader's prefetch thread may already run: stop it,
            reliability.stop_train_stream(self)  # or the interpreter aborts at exit (rc 134)
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
        train_set = RobustCommDataset(items, build_transforms(cfg, is_train=True), relabel=True,
                                      skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT)
        # Same camera index in training as in test (see camera_index).
        train_set.cam_dict = {c: camera_index(c) for c in train_set.cams}
        num_pids = cfg.SOLVER.IMS_PER_BATCH // max(1, cfg.DATALOADER.NUM_INSTANCE)
        if "Identity" in cfg.DATALOADER.SAMPLER_TRAIN and len(train_set.pids) < num_pids:
            raise ValueError(  # fast-reid's identity sampler would loop forever without a batch
                f"The training set has {len(train_set.pids)} identities but a batch needs "
                f"{num_pids} (SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} / "
                f"DATALOADER.NUM_INSTANCE {cfg.DATALOADER.NUM_INSTANCE}): lower IMS_PER_BATCH.")
        sampler = _train_loader_from_config(cfg, train_set=train_set)["sampler"]
        # deterministic per epoch, so a resumed run sees the same batches (reliability.py)
        sampler = reliability.wrap_sampler(cfg, sampler, len(train_set))
        return build_reid_train_loader(cfg, train_set=train_set, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        set_data_device(cfg.MODEL.DEVICE)
        data = build_dataset(cfg, dataset_name)
        if comm.is_main_process():
            data.show_test()
        if not data.query or not data.gallery:
            raise ValueError(f"Dataset {dataset_name}: empty query ({len(data.query)}) or "
                             f"gallery ({len(data.gallery)}); nothing to evaluate.")
        test_set = RobustCommDataset(data.query + data.gallery,
                                     build_transforms(cfg, is_train=False), relabel=False,
                                     skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT)
        return build_reid_test_loader(cfg, test_set=test_set, num_query=len(data.query))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        if cfg.TEST.EVALUATOR == "fast":
            from .evaluation import FastReidEvaluator

            return data_loader, FastReidEvaluator(cfg, num_query, output_dir)
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
        check_data(cfg, build_dataset)  # empty query / gallery, camera ids vs the SIE table
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
        return ret

    # ------------------------------------------------------------------ run
    def resume_or_load(self, resume=True):
        """fast-reid's resume_or_load; on resume the train sampler continues at the checkpoint's
        next epoch, with the batches the uninterrupted run would have drawn there."""
        try:
            out = self._checked_resume_or_load(resume)
        except BaseException:  # stop the prefetch thread before raising (no SIGABRT at exit)
            reliability.stop_train_stream(self)
            raise
        if resume and self.start_epoch > 0:
            reliability.restart_train_stream(self, self.start_epoch)
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
        finally:  # fast-reid leaves the prefetch thread running; stop it (reliability.py)
            reliability.stop_train_stream(self)

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
    """MODEL.BACKBONE.NUM_CAMERAS = 0 means 'from the training data': max camera index + 1."""
    if cfg.MODEL.BACKBONE.get("NUM_CAMERAS", 1) > 0:
        return cfg
    cams = {camera_index(c) for name in cfg.DATASETS.NAMES
            for _, _, c in build_dataset(cfg, name).train}
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NUM_CAMERAS = max(cams) + 1
    logger.info(f"Auto-scaling MODEL.BACKBONE.NUM_CAMERAS={max(cams) + 1}")
    if frozen:
        cfg.freeze()
    return cfg


def fill_from_checkpoint(cfg, path):
    """For evaluating a checkpoint with a leaf config: sizes left at 0 (MODEL.HEADS.NUM_CLASSES,
    MODEL.BACKBONE.NUM_CAMERAS) are read from the checkpoint's classifier / SIE table, so the
    model is built with the trained shapes; the camera table falls back to the training data."""
    from .compat import safe_torch_load

    sd = safe_torch_load(path).get("model", {})
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.HEADS.NUM_CLASSES <= 0:
        cls = [v for k, v in sd.items() if k.endswith("classifier.weight") or k == "heads.weight"]
        if cls:
            cfg.MODEL.HEADS.NUM_CLASSES = int(cls[0].shape[0])
    if cfg.MODEL.BACKBONE.get("NUM_CAMERAS", 1) <= 0 and "backbone.sie_embed" in sd:
        cfg.MODEL.BACKBONE.NUM_CAMERAS = int(sd["backbone.sie_embed"].shape[0])
    return fill_num_cameras(cfg)


def load_eval_weights(cfg, model):
    """``cfg.MODEL.WEIGHTS`` into ``model`` for evaluation: a checkpoint that lacks model
    weights (another architecture) fails unless ``TEST.ALLOW_MISSING_KEYS``."""
    from fastreid.utils.checkpoint import Checkpointer

    from .checkpoint import check_eval_fits

    path = cfg.MODEL.WEIGHTS
    ck = Checkpointer(model)
    with checked_loads(ck, lambda sd: check_eval_fits(
            sd, model, path, allow_missing=cfg.TEST.ALLOW_MISSING_KEYS)):
        ck.load(path)
    return model


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
    with reliability.atomic_open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
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


def setup_cfg(config_file="", opts=()):
    """fast-reid's get_cfg + our keys + a yaml + command-line opts, with device auto-selection."""
    cfg = get_cfg()
    add_gltrans_config(cfg)
    merge_config(cfg, config_file, opts)  # an unknown key: ConfigKeyError naming it and the file
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


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
