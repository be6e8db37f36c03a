"""Checks of a dataset's content before it is loaded: enough identities for the sampler, a test set
with both a query and a gallery.  One message each, naming the fix."""
__all__ = ["check_identities", "check_test_set"]


def check_identities(cfg, train_set):
    """An identity sampler needs IMS_PER_BATCH / NUM_INSTANCE identities for one batch; with
    fewer it would loop forever without producing one."""
    num_pids = cfg.SOLVER.IMS_PER_BATCH // max(1, cfg.DATALOADER.NUM_INSTANCE)
    if "Identity" in cfg.DATALOADER.SAMPLER_TRAIN and len(train_set.pids) < num_pids:
        raise ValueError(
            f"The training set has {len(train_set.pids)} identities but a batch needs "
            f"{num_pids} (SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} / "
            f"DATALOADER.NUM_INSTANCE {cfg.DATALOADER.NUM_INSTANCE}): lower IMS_PER_BATCH.")


def check_test_set(name, data):
    """A test set with an empty query or gallery has nothing to evaluate: name its folders."""
    if data.query and data.gallery:
        return
    folders = [getattr(data, a) for a in ("query_dir", "gallery_dir") if hasattr(data, a)]
    raise ValueError(f"Dataset {name}: empty query ({len(data.query)} images) or gallery "
                     f"({len(data.gallery)} images); nothing to evaluate. Check its "
                     f"folders under the dataset root (DATASETS.ROOT)"
                     + (f": {', '.join(folders)}." if folders else "."))
