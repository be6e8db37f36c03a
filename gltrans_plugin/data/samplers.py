"""Training samplers: fast-reid's infinite samplers made deterministic per epoch, so a run
resumed at epoch ``e`` sees exactly the batches the uninterrupted run saw from epoch ``e`` on."""
import itertools
import logging

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

__all__ = ["EpochSampler", "wrap_sampler"]


class EpochSampler(Sampler):
    """A fast-reid infinite sampler made deterministic per epoch (for exact resumption).

    fast-reid's samplers (``NaiveIdentitySampler``, ``TrainingSampler``, ...) produce one endless
    index stream from one seed, and ``NaiveIdentitySampler`` draws from numpy's *global* RNG,
    which the data transforms also use; a resumed run restarts the stream, so it trains on other
    batches than the uninterrupted run would have.  Here epoch ``e`` is the first
    ``epoch_size`` indices of the wrapped sampler's own stream seeded with ``seed + e``
    (generated eagerly, numpy's global RNG saved and restored around it, the same for any
    number of processes), each rank taking its share of every global batch.  ``start_epoch``
    (set by ``Trainer.resume_or_load``) skips finished epochs without loading a single image.

    Args:
        base: a fast-reid sampler with ``_infinite_indices()``, ``_seed``, ``_rank``,
            ``_world_size`` (global stream, per-rank slicing in ``__iter__``).
        epoch_size: global number of indices per epoch (iterations per epoch x global batch).
        seed: base seed (``cfg.SEED`` when >= 0, else the sampler's shared random seed).
        batch_size: the global batch (all ranks; default: one index per rank).
    """

    def __init__(self, base, epoch_size, seed=None, batch_size=None):
        self.base = base
        self.epoch_size = int(epoch_size)
        self.seed = int(base._seed if seed is None else seed)
        self.start_epoch = 0
        self._rank, self._world_size = base._rank, base._world_size
        self.batch_size = int(batch_size or self._world_size)  # global batch, all ranks
        if self.epoch_size <= 0 or self.epoch_size % self.batch_size \
                or self.batch_size % self._world_size:
            raise ValueError(f"epoch_size {epoch_size} must be a positive multiple of the global "
                             f"batch {self.batch_size}, itself one of the number of processes "
                             f"({self._world_size}).")

    def epoch_indices(self, epoch):
        """The global index list of ``epoch`` (all ranks), the same for any number of
        processes: the base sampler draws whole global batches as one process would (fast-reid's
        identity samplers otherwise pick identities per process batch and reorder by rank)."""
        base = self.base
        saved_state = np.random.get_state()
        saved = {k: getattr(base, k) for k in ("_seed", "_world_size", "batch_size",
                                               "num_pids_per_batch") if hasattr(base, k)}
        try:
            base._seed = (self.seed + 1_000_003 * int(epoch)) % (2 ** 32)
            base._world_size = 1
            if "batch_size" in saved:
                base.batch_size = self.batch_size
            if "num_pids_per_batch" in saved:
                base.num_pids_per_batch = self.batch_size // base.num_instances
            return [int(i) for i in itertools.islice(base._infinite_indices(), self.epoch_size)]
        finally:
            for k, v in saved.items():
                setattr(base, k, v)
            np.random.set_state(saved_state)

    def __iter__(self):
        # rank r takes the r-th contiguous share of every global batch (whole identities with
        # the identity samplers, as fast-reid's reordering gives them)
        B, share = self.batch_size, self.batch_size // self._world_size
        lo = self._rank * share
        for epoch in itertools.count(self.start_epoch):
            indices = self.epoch_indices(epoch)
            for s in range(0, len(indices), B):
                yield from indices[s + lo:s + lo + share]


def wrap_sampler(cfg, sampler, dataset_len):
    """``EpochSampler`` around a fast-reid infinite sampler, else ``sampler`` unchanged."""
    if not cfg.DATALOADER.EPOCH_SAMPLER:
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
    return EpochSampler(sampler, iters * mini * world, seed=seed, batch_size=mini * world)
