"""``inference_on_dataset`` with a flip test that does not normalise images twice.

fast-reid's version calls the model on ``inputs``, flips ``inputs["images"]`` and calls it
again.  ``Baseline.preprocess_image`` normalises ``images`` in place, so the second call sees
already-normalised (then flipped) pixels and normalises them again.  Here each forward gets its
own copy of the batch dict with a clone of the raw images (the flipped one for the flip pass),
so what the model does to ``images`` cannot leak into the other pass or into the evaluator.

``batch_features`` is the one loop over batches that every feature producer uses (this
evaluation, the retrieval index's ``extract_features``, ``FeatureExtractor``).
"""
import contextlib
import datetime
import logging
import time

import torch
from fastreid.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["batch_features", "flip_features", "inference_on_dataset"]


def _with_images(inputs, images):
    if isinstance(inputs, dict):
        out = dict(inputs)
        out["images"] = images
        return out
    return images


@torch.no_grad()
def flip_features(model, inputs, flip_test: bool = True):
    """Features of a batch; with ``flip_test`` the mean of the raw and horizontally flipped
    images' features (B x D).  ``inputs`` (dict with "images" B x 3 x H x W, or a tensor) is
    left untouched."""
    raw = inputs["images"] if isinstance(inputs, dict) else inputs
    raw = raw.clone()  # private copy: never changed by the model, used for both passes
    outputs = model(_with_images(inputs, raw.clone()))
    if flip_test:
        flipped = model(_with_images(inputs, raw.flip(dims=[3])))
        outputs = (outputs + flipped) / 2
    return outputs


def batch_features(model, batches, flip_test: bool = False, *, progress: bool = False,
                   total=None, forward_context=contextlib.nullcontext):
    """Yield ``(inputs, features)`` for each batch of ``batches`` (fast-reid batch dicts or
    image tensors): ``flip_features`` of the model in eval mode, without gradients, each forward
    inside ``forward_context()`` (autocast, say); a tqdm bar over ``total`` batches when
    ``progress``.  No global state is held across a ``yield`` (gradients are off only inside
    each forward), so a consumer that stops with an exception leaves gradients as they were;
    the model's mode is restored when the generator ends or is closed: iterate it inside
    ``contextlib.closing(...)``."""
    it = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, total=total, desc="features", unit="batch", leave=False)
    was_training = model.training
    model.eval()
    try:
        for inputs in it:
            with torch.no_grad(), forward_context():
                feats = flip_features(model, inputs, flip_test)
            yield inputs, feats
    finally:
        model.train(was_training)


def inference_on_dataset(model, data_loader, evaluator, flip_test: bool = False,
                         progress: bool = True):
    """Run ``model`` over ``data_loader`` in eval mode and return ``evaluator.evaluate()``.

    Same contract as ``fastreid.evaluation.inference_on_dataset``; the flip test averages the
    two passes' features without double normalisation (see module docstring)."""
    from .index import check_finite_features

    total = len(data_loader)
    logger.info("Start inference on %d batches (%d images)", total,
                len(getattr(data_loader, "dataset", [])))
    evaluator.reset()
    start = time.perf_counter()
    with contextlib.closing(batch_features(model, data_loader, flip_test, total=total,
                                           progress=progress and comm.is_main_process())) as it:
        for inputs, outputs in it:
            check_finite_features(outputs, inputs.get("img_paths"))  # names images, weights
            evaluator.process(inputs, outputs)
    dt = time.perf_counter() - start
    logger.info("Total inference time: %s (%.4f s / batch, %d devices)",
                datetime.timedelta(seconds=int(dt)), dt / max(total, 1), comm.get_world_size())
    results = evaluator.evaluate()
    return {} if results is None else results
