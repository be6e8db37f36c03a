"""The plugin's trainer: fast-reid's ``DefaultTrainer`` (as the plugin's runtime patches leave it:
the plugin's loaders, camera count, warm-up in epochs, AMP dtype) plus what only this plugin's
runs do: set-up checks before data and model, the evaluator of TEST.EVALUATOR, rank 0's
BatchNorm statistics evaluated on every rank, a configurable log period, training health, an
optional evaluation before training, checked resumes that continue with the same batches, and
``results.json``.  No training loop of its own.
"""
import contextlib
import logging
import os
from collections import OrderedDict

import torch
from fastreid.engine import DefaultTrainer, default_setup, hooks
from fastreid.evaluation import ReidEvaluator, print_csv_format
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from ..card import write_card
from ..checkpoint import check_optimizer_fits, check_resume_fits, load_file
from ..checks import check_data, validate_config
from ..data import clear_dataset_cache
from ..data.samplers import EpochSampler
from ..data.validation import VAL_NAME, val_enabled
from ..distributed import broadcast_buffers, convert_sync_batchnorm
from ..evaluation import ChunkedReidEvaluator
from ..evaluation.inference import inference_on_dataset
from ..errors import NonFiniteLossError, UserError, nan_advice
from ..evaluation.results import put_eval_results
from .hooks import StopOnSignal, TrainingHealth
from .results import log_before_after, write_results

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "checked_loads", "default_setup_gltrans"]

RESUME_KEY = "--resume (OUTPUT_DIR/last_checkpoint)"  # names the file in messages


class MissingCheckpointError(UserError, FileNotFoundError):
    """``--resume`` where OUTPUT_DIR/last_checkpoint names a file that is gone."""

    def __init__(self, path, output_dir):
        import glob

        others = sorted(os.path.basename(p) for p in glob.glob(
            os.path.join(glob.escape(output_dir), "model_*.pth")))
        super().__init__(
            f"--resume: OUTPUT_DIR/last_checkpoint names {os.path.basename(path)}, which does "
            f"not exist", path,
            "restore the file, or write the name of another checkpoint of the folder into "
            "last_checkpoint" + (f" (there: {', '.join(others[-3:])})" if others else "")
            + ", or start again without --resume (--overwrite)")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for GLTrans (and any fast-reid model) on today's stack."""

    def __init__(self, cfg):
        validate_config(cfg)  # impossible settings fail here, before any data is read
        clear_dataset_cache()  # this start-up lists every dataset once (data/build.py)
        try:
            super().__init__(cfg)
        except BaseException:  # the train loader's prefetch thread may already run: stop it,
            self.stop_train_stream()  # or the interpreter aborts at exit (rc 134)
            raise
        self._before_train_results = None
        # fast-reid sets this in default_setup only; a Trainer built without it honours it too
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)

    @classmethod
    def build_model(cls, cfg):
        # fast-reid's NORM syncBN keys, applied to every BatchNorm (GLTrans builds plain ones)
        return convert_sync_batchnorm(super().build_model(cfg), cfg)

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        name = cfg.TEST.EVALUATOR
        if name == "chunked":
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

    @classmethod
    def validate(cls, cfg, model):
        """The validation split's metrics (DATASETS.VAL.IDS), as ``{"Validation": {...}}``;
        its ``metric`` (what model_best is chosen by) is the validation mAP."""
        from ..data.loaders import build_val_loader

        broadcast_buffers(model)
        loader, num_query = build_val_loader(cfg)
        evaluator = ChunkedReidEvaluator(cfg, num_query)
        results = inference_on_dataset(model, loader, evaluator, flip_test=cfg.TEST.FLIP.ENABLED)
        if comm.is_main_process():
            results = OrderedDict(results)
            results["metric"] = results["mAP"]
            print_csv_format(OrderedDict(dataset=VAL_NAME, **results))
        return {VAL_NAME: results}

    @staticmethod
    def auto_scale_hyperparams(cfg, num_classes):
        if comm.is_main_process() and cfg.OUTPUT_DIR:  # fast-reid writes config.yaml there
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        cfg = DefaultTrainer.auto_scale_hyperparams(cfg, num_classes)  # classes and cameras
        check_data(cfg)  # empty query / gallery, camera ids vs the SIE table
        if comm.is_main_process() and cfg.OUTPUT_DIR:  # config.yaml with every auto value
            with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
                f.write(cfg.dump())
        return cfg

    def build_hooks(self):
        ret = super().build_hooks() + [StopOnSignal()]
        period = max(1, int(self.cfg.SOLVER.LOG_PERIOD))
        for h in ret:
            if isinstance(h, hooks.PeriodicWriter):
                h._period = period
        if self.cfg.SOLVER.HEALTH.ENABLED and comm.is_main_process():
            ret.insert(0, TrainingHealth(period, self.cfg.SOLVER.HEALTH))
        if val_enabled(self.cfg):  # choices on the validation split, not on the test sets
            ret = [hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._validate_and_save)
                   if isinstance(h, hooks.EvalHook) else h for h in ret]
        if self.cfg.TEST.EVAL_BEFORE_TRAIN and comm.is_main_process():
            # the untrained model's accuracy at the first iteration of metrics.json / TensorBoard
            ret.insert(0, hooks.CallbackHook(before_train=lambda t: put_eval_results(
                t.storage, t._before_train_results, t.cfg.DATASETS.TESTS)))
        return ret

    def _validate_and_save(self):
        self._last_eval_results = self.validate(self.cfg, self.model)
        return self._last_eval_results

    def _test_selected(self):
        """With a validation split: the test sets evaluated once, with the checkpoint chosen by
        validation mAP (model_best.pth, else the final weights); returns (results, choice)."""
        best = os.path.join(self.cfg.OUTPUT_DIR, "model_best.pth")
        choice = {"checkpoint": "final weights"}
        if os.path.exists(best):
            state = load_file(best, key="OUTPUT_DIR/model_best.pth")
            self.model_without_ddp().load_state_dict(state["model"])
            choice = {"checkpoint": "model_best.pth", "epoch": int(state.get("epoch", -1)) + 1,
                      "validation mAP": float(state.get("metric", float("nan")))}
            logger.info(f"Selected by validation mAP: epoch {choice['epoch']} (validation mAP "
                        f"{choice['validation mAP']:.2f}); testing it once on "
                        f"{', '.join(self.cfg.DATASETS.TESTS)}.")
        return self.test(self.cfg, self.model), choice

    def model_without_ddp(self):
        return getattr(self.model, "module", self.model)

    # ------------------------------------------------------------------ run
    def resume_or_load(self, resume=True):
        """fast-reid's resume_or_load; a checkpoint to resume from must fit the model and the
        optimizer (checkpoint.check_resume_fits) and errors name the file and the key; on resume
        the train sampler continues at the checkpoint's next epoch, with the batches the
        uninterrupted run would have drawn there."""
        try:
            ck = self.checkpointer
            if resume and ck.has_checkpoint() and not os.path.isfile(ck.get_checkpoint_file()):
                raise MissingCheckpointError(ck.get_checkpoint_file(), self.cfg.OUTPUT_DIR)
            if not (resume and ck.has_checkpoint()):
                out = super().resume_or_load(resume=resume)
            else:
                path = ck.get_checkpoint_file()
                with checked_loads(ck, lambda sd: check_resume_fits(sd, ck.model, path),
                                   key=RESUME_KEY):
                    out = super().resume_or_load(resume=resume)
                check_optimizer_fits(self.optimizer, path)
        except BaseException:  # stop the prefetch thread before raising (no SIGABRT at exit)
            self.stop_train_stream()
            raise
        if resume and self.start_epoch > 0:
            self.restart_train_stream(self.start_epoch)
        return out

    def train(self):
        try:
            return self._train()
        except NonFiniteLossError as e:  # the advice that fits this run's folder
            if not hasattr(e, "facts"):
                raise
            raise NonFiniteLossError(e.facts + " " + nan_advice(self.cfg.OUTPUT_DIR)) from None
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
        if comm.is_main_process():  # every checkpoint of the folder has a card, final or not
            write_card(self.cfg, self.cfg.OUTPUT_DIR, None, model=self.model)
        results = super().train()
        choice = None
        if val_enabled(self.cfg):
            results, choice = self._test_selected()
        if comm.is_main_process():
            if self._before_train_results:
                log_before_after(self._before_train_results, results)
            write_results(self.cfg.OUTPUT_DIR, results, self._before_train_results,
                          self.iter + 1, selected=choice)
            tested = (choice or {}).get("checkpoint") == "model_best.pth"
            write_card(self.cfg, self.cfg.OUTPUT_DIR, results, model=self.model,
                       iteration=self.iter + 1, checkpoint=os.path.join(
                           self.cfg.OUTPUT_DIR, "model_best.pth" if tested else "model_final.pth"))
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


@contextlib.contextmanager
def checked_loads(checkpointer, check, key="MODEL.WEIGHTS"):
    """Within the block, every checkpoint ``checkpointer`` loads is read with ``key`` naming it
    in messages, and ``check(model_state_dict)`` runs on it before fast-reid's own (non-strict)
    ``_load_model`` applies it."""
    load_model = checkpointer._load_model

    def _load_file(f):
        return load_file(f, key=key)

    def _load_model(checkpoint):
        check(checkpoint.get("model", {}))
        return load_model(checkpoint)

    checkpointer._load_file, checkpointer._load_model = _load_file, _load_model
    try:
        yield checkpointer
    finally:
        del checkpointer._load_file, checkpointer._load_model  # back to the class's methods


def default_setup_gltrans(cfg, args):
    """fast-reid's default_setup, plus seeding from cfg.SEED and the plugin's logger."""
    default_setup(cfg, args)
    # fastreid's default_setup configures only the "fastreid" logger: ours log there too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gltrans_plugin",
                 abbrev_name="gltrans")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED + comm.get_rank())
    if cfg.MODEL.DEVICE == "cpu":
        logging.getLogger("fastreid").info("No GPU found (or MODEL.DEVICE cpu): running on CPU.")
