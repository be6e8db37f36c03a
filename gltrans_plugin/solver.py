"""The learning-rate schedule, in fast-reid's format, in one of two styles (SOLVER.SCHED_STYLE).

fast-reid's ``DefaultTrainer`` takes a dict from ``build_lr_scheduler``: ``"lr_sched"``, which
its ``LRScheduler`` hook steps after every epoch once the trainer's ``warmup_iters`` iterations
and ``delay_epochs`` epochs are over, and an optional ``"warmup_sched"``, stepped after each of
the first ``warmup_iters`` iterations.  Both entries are also saved in checkpoints.

- ``"paper"``: fast-reid's own schedulers: a warm-up from WARMUP_FACTOR x BASE_LR stepped every
  iteration over SOLVER.WARMUP_EPOCHS (converted to iterations) or SOLVER.WARMUP_ITERS, then
  SOLVER.SCHED (cosine to ETA_MIN_LR over the remaining epochs) stepped every epoch.
- ``"released"``: the authors' schedule (TransReID's ``create_scheduler``, which GLTrans keeps,
  driven by ``scheduler.step(epoch)`` at the start of each epoch, epochs counted from 1): timm's
  ``CosineLRScheduler`` with ``t_initial`` = MAX_EPOCH, ``lr_min`` = ETA_MIN_LR, ``warmup_t`` =
  WARMUP_EPOCHS, ``warmup_lr_init`` = WARMUP_FACTOR x BASE_LR, in epochs.  The learning rate is
  constant within an epoch: epoch e (from 1) trains at warm-up value ``init + e (lr - init) / W``
  for e < W, else ``lr_min + (lr - lr_min) (1 + cos(pi e / MAX_EPOCH)) / 2`` (``lr_min`` in the
  last epoch); ``init`` and ``lr_min`` are the same absolute values for every parameter group.
  The hook must not step a warm-up here: the trainer's ``warmup_iters`` is
  ``hook_warmup_iters(cfg, iters_per_epoch)`` = 0.
"""
import logging

from fastreid.solver import build_lr_scheduler as fastreid_build_lr_scheduler
from timm.scheduler import CosineLRScheduler

from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["EpochCosineLR", "SCHED_STYLES", "SolverConfigError", "build_lr_scheduler",
           "hook_warmup_iters", "warmup_iters"]

SCHED_STYLES = ("paper", "released")


class SolverConfigError(UserError, ValueError):
    """A SOLVER.* setting the chosen learning-rate schedule cannot honour."""


def warmup_iters(cfg, iters_per_epoch):
    """The warm-up in iterations: SOLVER.WARMUP_EPOCHS x iterations per epoch when it is > 0
    (at least 1), else SOLVER.WARMUP_ITERS."""
    if cfg.SOLVER.WARMUP_EPOCHS > 0:
        return max(1, round(cfg.SOLVER.WARMUP_EPOCHS * iters_per_epoch))
    return int(cfg.SOLVER.WARMUP_ITERS)


def hook_warmup_iters(cfg, iters_per_epoch):
    """What fast-reid's LRScheduler hook must read as ``trainer.warmup_iters``: the iterations
    of the per-iteration warm-up, 0 for the released style (its warm-up is per epoch)."""
    if _style(cfg) == "released":
        return 0
    return warmup_iters(cfg, iters_per_epoch)


def build_lr_scheduler(cfg, optimizer, iters_per_epoch):
    """fast-reid's scheduler dict (``"lr_sched"``, optional ``"warmup_sched"``) for ``optimizer``
    in the style SOLVER.SCHED_STYLE says (module docstring)."""
    if _style(cfg) == "released":
        return {"lr_sched": _released_scheduler(cfg, optimizer)}
    if cfg.SOLVER.WARMUP_EPOCHS > 0:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.WARMUP_ITERS = warmup_iters(cfg, iters_per_epoch)
    return fastreid_build_lr_scheduler(cfg, optimizer, iters_per_epoch)


class EpochCosineLR(CosineLRScheduler):
    """timm's ``CosineLRScheduler`` stepped as fast-reid's hook steps ``"lr_sched"``: ``step()``
    with no argument once after each epoch.  ``epoch`` is the count (from ``first_epoch``) of the
    epoch about to be trained; its learning rate is set at construction and at every step, and
    again when a checkpoint's state is loaded."""

    def __init__(self, optimizer, *, first_epoch=1, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.epoch = int(first_epoch)
        super().step(self.epoch)

    def step(self, epoch=None, metric=None):
        self.epoch = self.epoch + 1 if epoch is None else int(epoch)
        super().step(self.epoch, metric)

    def load_state_dict(self, state_dict):
        if "epoch" not in state_dict or "t_initial" not in state_dict:
            raise SolverConfigError(
                "the checkpoint's learning-rate schedule is not the released style's",
                "SOLVER.SCHED_STYLE released",
                "resume with the SOLVER.SCHED_STYLE the run was started with")
        super().load_state_dict(state_dict)
        super().step(self.epoch)


def _style(cfg):
    style = cfg.SOLVER.SCHED_STYLE
    if style not in SCHED_STYLES:
        raise SolverConfigError(f"unknown learning-rate schedule style {style!r}",
                                "SOLVER.SCHED_STYLE", "use 'paper' or 'released'")
    return style


def _released_scheduler(cfg, optimizer):
    s = cfg.SOLVER
    if s.SCHED != "CosineAnnealingLR":
        raise SolverConfigError(f"SOLVER.SCHED {s.SCHED!r} with the released cosine schedule",
                                "SOLVER.SCHED_STYLE released",
                                "set SOLVER.SCHED CosineAnnealingLR or SOLVER.SCHED_STYLE paper")
    if s.WARMUP_EPOCHS > 0 and s.WARMUP_METHOD != "linear":
        raise SolverConfigError(f"SOLVER.WARMUP_METHOD {s.WARMUP_METHOD!r} with the released "
                                "schedule, whose warm-up is linear", "SOLVER.SCHED_STYLE released",
                                "set SOLVER.WARMUP_METHOD linear or SOLVER.SCHED_STYLE paper")
    if s.DELAY_EPOCHS:
        raise SolverConfigError(f"SOLVER.DELAY_EPOCHS {s.DELAY_EPOCHS} with the released "
                                "schedule, which has no delay", "SOLVER.SCHED_STYLE released",
                                "set SOLVER.DELAY_EPOCHS 0 or SOLVER.SCHED_STYLE paper")
    if s.WARMUP_EPOCHS <= 0 and s.WARMUP_ITERS > 0:
        logger.warning("SOLVER.SCHED_STYLE released warms up over SOLVER.WARMUP_EPOCHS (0): "
                       "SOLVER.WARMUP_ITERS %d is not used.", s.WARMUP_ITERS)
    return EpochCosineLR(
        optimizer,
        t_initial=int(s.MAX_EPOCH),
        lr_min=float(s.ETA_MIN_LR),
        warmup_t=s.WARMUP_EPOCHS,
        warmup_lr_init=float(s.WARMUP_FACTOR * s.BASE_LR),
        cycle_limit=1,
        t_in_epochs=True,
    )
