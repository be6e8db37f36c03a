"""``inference_on_dataset`` with a flip test that does not normalise images twice.

fast-reid's version calls the model on ``inputs``, flips ``inputs["images"]`` and calls it
again.  ``Baseline.preprocess_image`` normalises ``images`` in place, so the second call sees
already-normalised (then flipped) pixels and normalises them again.  Here each forward gets its
own copy of the batch dict with a clone of the raw images (the flipped one for the flip pass),
so what the model does to ``images`` cannot leak into the other pass or into the evaluator.
"""
import datetime
import logging
import time

import torch
from fastreid.evaluation.evaluator import inference_context
from fastreid.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["inference_on_dataset", "flip_features"]


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
    it = data_loader
    if progress and comm.is_main_process():
        from tqdm import tqdm

        it = tqdm(data_loader, total=total, desc="features", unit="batch", leave=False)
    with inference_context(model), torch.no_grad():
        for inputs in it:
            outputs = flip_features(model, inputs, flip_test)
            check_finite_features(outputs, inputs.get("img_paths"))  # names images, weights
            evaluator.process(inputs, outputs)
    dt = time.perf_counter() - start
    logger.info("Total inference time: %s (%.4f s / batch, %d devices)",
                datetime.timedelta(seconds=int(dt)), dt / max(total, 1), comm.get_world_size())
    results = evaluator.evaluate()
    return {} if results is None else results
