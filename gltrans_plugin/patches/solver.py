"""Runtime patches of fast-reid's solver: the optimizer on plain parameters, a cosine over at
least one epoch, and fast-reid's DefaultTrainer scheduling its warm-up in epochs."""
import functools
import logging

from ..compat import fix

logger = logging.getLogger(__name__)


@fix
def optimizer_without_contiguous_params():
    # fastreid/solver/build.py: build_optimizer() wraps parameters in ContiguousParams
    # (utils/params.py); torch 2's zero_grad(set_to_none=True) drops its gradient views, so the
    # optimizer silently never updates a weight.  Always build on the plain parameters.
    import fastreid.solver
    import fastreid.solver.build as build
    import fastreid.engine.defaults as defaults

    original = build.build_optimizer
    if getattr(original, "_gltrans_patched", False):
        return

    @functools.wraps(original)
    def build_optimizer(cfg, model, contiguous=False):
        if contiguous:
            logger.warning("ContiguousParams does not update weights on torch 2; ignoring it.")
        return original(cfg, model, contiguous=False)

    build_optimizer._gltrans_patched = True
    build.build_optimizer = fastreid.solver.build_optimizer = build_optimizer
    defaults.build_optimizer = build_optimizer


@fix
def cosine_with_zero_epochs():
    # fastreid/solver/build.py: build_lr_scheduler() gives CosineAnnealingLR
    # T_max = MAX_EPOCH - warm-up epochs, which is 0 for short runs -> ZeroDivisionError at the
    # first epoch end.  A cosine schedule over at least one epoch.
    import torch
    from fastreid.solver import lr_scheduler

    base = torch.optim.lr_scheduler.CosineAnnealingLR

    class CosineAnnealingLR(base):
        def __init__(self, optimizer, T_max, *args, **kwargs):
            super().__init__(optimizer, max(int(T_max), 1), *args, **kwargs)

    lr_scheduler.CosineAnnealingLR = CosineAnnealingLR


@fix
def default_trainer_warmup_epochs():
    # fastreid/engine/defaults.py: DefaultTrainer builds the warm-up from SOLVER.WARMUP_ITERS and
    # its LRScheduler hook reads trainer.warmup_iters = SOLVER.WARMUP_ITERS, so SOLVER.WARMUP_EPOCHS
    # is ignored: with the base config's 1000 iterations the learning rate stays near
    # WARMUP_FACTOR x BASE_LR for a short run.  Both now come from the plugin's solver
    # (solver.build_lr_scheduler, solver.warmup_iters), which honours WARMUP_EPOCHS.
    from fastreid.engine.defaults import DefaultTrainer

    from .. import solver  # the plugin's solver module

    orig_init = DefaultTrainer.__init__

    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        return solver.build_lr_scheduler(cfg, optimizer, iters_per_epoch)

    @functools.wraps(orig_init)
    def __init__(self, cfg):
        orig_init(self, cfg)
        # what the LRScheduler hook reads: 0 for a per-epoch (released) warm-up
        self.warmup_iters = solver.hook_warmup_iters(self.cfg, self.iters_per_epoch)

    DefaultTrainer.build_lr_scheduler = classmethod(build_lr_scheduler)
    DefaultTrainer.__init__ = __init__
