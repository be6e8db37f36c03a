"""A validation split held out of the training identities, for choices that must not see the test
set (a recipe, an epoch, a threshold).

With ``DATASETS.VAL.IDS N`` (N > 0), N identities of the training sets (drawn with
``DATASETS.VAL.SEED`` from all of DATASETS.NAMES, every registered dataset and ``ReIDFolder``
alike) leave the training set and form a validation query / gallery split by camera as the
test sets are: per held-out identity, one image of each of its cameras is a query and the others
are gallery images (same-camera matches are dropped by the evaluator, as in the test protocol).
An identity seen by one camera only joins the gallery as a distractor.  Identities are never
shared between train, validation and test: validation identities come from the training sets,
whose identities the test sets do not share.

The trainer then evaluates the validation split every TEST.EVAL_PERIOD instead of the test
sets, keeps ``model_best.pth`` by validation mAP, and evaluates the test sets once, at the end,
with the chosen checkpoint.
"""
import logging
import random
from typing import Dict, List, NamedTuple, Sequence, Tuple

from ..errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["VAL_NAME", "ValidationError", "ValidationSplit", "split_validation", "val_enabled"]

VAL_NAME = "Validation"  # the name of the split in logs, metrics.json and results.json


class ValidationError(UserError, ValueError):
    """DATASETS.VAL.* that the training sets cannot honour."""


class ValidationSplit(NamedTuple):
    train: List[tuple]    # training items (path, pid, camid, ...) without the held-out identities
    query: List[tuple]    # (path, pid index, camid, ...) of the held-out identities
    gallery: List[tuple]
    held_out: Tuple[str, ...]  # the held-out identities (fast-reid's "<dataset>_<pid>" names)


def val_enabled(cfg) -> bool:
    return int(cfg.DATASETS.VAL.IDS) > 0


def split_validation(items: Sequence[tuple], num_ids: int, seed: int) -> ValidationSplit:
    """Hold ``num_ids`` identities of the training ``items`` out (see the module docstring).
    Validation pids are numbered 0.. in the order of the sorted identity names; camera ids are
    kept as given (the caller maps them to SIE rows)."""
    by_pid: Dict[str, List[tuple]] = {}
    for item in items:
        by_pid.setdefault(item[1], []).append(item)
    pids = sorted(by_pid, key=str)
    if num_ids >= len(pids):
        raise ValidationError(
            f"DATASETS.VAL.IDS {num_ids} holds out every training identity (the training sets "
            f"have {len(pids)})", "DATASETS.VAL.IDS",
            f"hold out fewer (e.g. {max(1, len(pids) // 10)}, a tenth), or 0 for no validation "
            f"split")
    held = sorted(random.Random(int(seed)).sample(pids, int(num_ids)), key=str)
    held_set = set(held)
    query, gallery = [], []
    for index, pid in enumerate(held):
        seen_cams = set()
        for item in sorted(by_pid[pid], key=lambda it: str(it[0])):
            row = (item[0], index, item[2]) + tuple(item[3:])
            cams = {it[2] for it in by_pid[pid]}
            if len(cams) > 1 and item[2] not in seen_cams:
                seen_cams.add(item[2])
                query.append(row)
            else:
                gallery.append(row)
    if not query:
        raise ValidationError(
            f"no held-out identity of DATASETS.VAL.IDS {num_ids} has images from two cameras, so "
            f"the validation split has no query", "DATASETS.VAL.IDS",
            "hold out more identities, or use a dataset with several cameras per identity")
    train = [item for item in items if item[1] not in held_set]
    logger.info(f"Validation split: {len(held)} identities held out of training "
                f"({len(query)} query, {len(gallery)} gallery images), seed {seed}.")
    return ValidationSplit(train, query, gallery, tuple(str(p) for p in held))
