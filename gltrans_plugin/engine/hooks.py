"""Hooks of the plugin's trainer: training health (are the metric features separating
identities?) and a clean stop on SIGINT / SIGTERM."""
import logging
import os
import signal
import threading

from fastreid.engine import hooks

from ..errors import Interrupted

logger = logging.getLogger(__name__)

__all__ = ["StopOnSignal", "TrainingHealth"]


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
        from ..modeling.losses import HEALTH_PREFIX

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


class StopOnSignal(hooks.HookBase):
    """SIGINT and SIGTERM (Ctrl-C; what docker, systemd and schedulers send) end a training
    cleanly: the step in progress completes, rank 0 saves the model, optimizer and scheduler as
    ``model_interrupted.pth`` (atomically, as every checkpoint) and points ``last_checkpoint`` at
    it, one line is logged, and the run ends with ``errors.Interrupted`` (exit code 130 / 143).
    ``--resume`` continues from it; a stop inside an epoch restarts that epoch from its first
    batch (fast-reid resumes at epoch boundaries), with the weights as they were at the stop.
    The handlers are installed for the training only and the previous ones restored after it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def before_train(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)

    def after_train(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def after_step(self):
        if self.signum is None:
            return
        t = self.trainer
        it = t.iter + 1  # steps done
        epoch_done = it % t.iters_per_epoch == 0
        # the last finished epoch: resume starts at the next one (fast-reid's rule)
        epoch = t.epoch if epoch_done else t.epoch - 1
        name = signal.Signals(self.signum).name
        t.checkpointer.save("model_interrupted", epoch=epoch)  # rank 0 writes; atomic
        where = os.path.join(t.cfg.OUTPUT_DIR, "model_interrupted.pth")
        resume = (f"--resume continues at epoch {epoch + 2}" if epoch_done else
                  f"--resume restarts epoch {t.epoch + 1} from its first batch with these "
                  f"weights")
        logger.warning(f"{name} at iteration {it}: saved the model, optimizer and scheduler to "
                       f"{where}; {resume}.")
        raise Interrupted(self.signum, f"stopped by {name} at iteration {it}; saved {where}: "
                                       f"{resume} (same OUTPUT_DIR)")
