"""A finished run's results: ``OUTPUT_DIR/results.json`` and the before / after log line."""
import json
import logging
import os

from ..checkpoint import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["RESULTS_FILE", "log_before_after", "write_results"]

RESULTS_FILE = "results.json"


def write_results(output_dir, results, before=None, iteration=None, selected=None):
    """``OUTPUT_DIR/results.json`` (atomic): the final test metrics of a finished run,
    ``{"final": {...}, "before": {...} or null, "iteration": N, "selected": {...} or null}``,
    values as fast-reid logs them (percent); ``selected``: with a validation split, the
    checkpoint the test metrics are of (chosen by validation mAP).  Its presence marks a run as
    finished (``tools/reproduce.py``)."""
    if not output_dir:
        return

    def plain(d):
        return None if not d else {k: (plain(v) if isinstance(v, dict) else
                                        v if isinstance(v, str) else float(v))
                                   for k, v in d.items()}

    os.makedirs(output_dir, exist_ok=True)
    with atomic_open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
        json.dump({"final": plain(results), "before": plain(before), "iteration": iteration,
                   "selected": plain(selected)}, f, indent=1)


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
