"""Camera ids: one integer index for fast-reid's two camera-id forms, one SIE camera table for
several training datasets (each its own rows), and the id of a test camera the training never
saw."""
import numbers
import re

from .checks import DatasetError

__all__ = ["CameraLayout", "camera_index", "unseen_camera"]

_TRAILING_INT = re.compile(r"(-?\d+)$")


def camera_index(camid):
    """One integer camera index for both forms fast-reid produces.

    fast-reid's readers give *training* camera ids as strings ``"{dataset_name}_{cam}"``
    (``"msmt17_10"``; ``"market1501_test_3"`` after ``combineall``) and ``CommDataset`` then
    relabels them by *sorted string order* ("msmt17_10" < "msmt17_2"), while *test* camera ids
    stay raw 0-based integers. With more than 10 cameras the relabelled training index and the
    test index of the same camera differ. This maps both forms to the dataset's own 0-based
    camera number: ``camera_index("msmt17_10") == camera_index(10) == 10``. Use it on the
    un-relabelled ids (the reader's), not on CommDataset's relabelled ones.
    """
    if isinstance(camid, bool):
        raise TypeError(f"camera id {camid!r} is a bool, not a camera id.")
    if isinstance(camid, numbers.Integral):
        return int(camid)
    if hasattr(camid, "item") and getattr(camid, "ndim", None) == 0:  # numpy / torch scalar
        return camera_index(camid.item())
    if isinstance(camid, str):
        m = _TRAILING_INT.search(camid.strip())
        if m:
            return int(m.group(1))
        raise ValueError(
            f"camera id {camid!r} does not end with an integer; expected an int or a string "
            "like 'msmt17_10' (fast-reid's '{dataset_name}_{cam}' training form)."
        )
    raise TypeError(f"camera id {camid!r} of type {type(camid).__name__}: expected int or str.")


def unseen_camera(camid):
    """The id of a test camera the training never saw: ``-1 - camera_index(camid)``.

    Negative, so the model treats it as "no camera id" (``MODEL.BACKBONE.SIE_UNSEEN``), and one
    per camera (camera 0 -> -1, camera 3 -> -4), so the evaluation still drops same-camera
    gallery matches as the protocol asks (with one id for all, no gallery match would count).
    """
    return -1 - camera_index(camid)


class CameraLayout:
    """The rows of one SIE camera table shared by the training datasets, in DATASETS.NAMES order.

    Dataset ``i`` spans ``c_i`` rows (its largest training camera index + 1) from the offset
    ``o_i = c_0 + ... + c_{i-1}``: its camera ``k`` is row ``o_i + k``, in training and in test,
    and ``total`` (the sum) is the table size ``MODEL.BACKBONE.NUM_CAMERAS 0`` asks for.  With
    one training dataset the offset is 0: the rows are its own camera numbers.

    A test camera whose row would fall into another dataset's rows (a camera of a training
    dataset beyond its training cameras, when more datasets follow it), or of a test set not in
    DATASETS.NAMES (cross-dataset), was never seen in training: it gets ``unseen_camera``.

    ``train_sets``: [(name, training items)] with fast-reid's training camera ids (strings
    ``"{dataset_name}_{cam}"``).  A dataset listed twice, or two datasets giving the same
    identity or camera labels (the same ``dataset_name`` prefix), are a DatasetError.
    """

    def __init__(self, train_sets):
        self.offsets, self.spans, self._train = {}, {}, {}
        owner = {}  # identity label -> dataset
        offset = 0
        for name, items in train_sets:
            if name in self.offsets:
                raise DatasetError(f"dataset {name} is listed twice", "DATASETS.NAMES",
                                   "list each training dataset once")
            cams = {item[2] for item in items}
            for pid in {item[1] for item in items}:
                other = owner.setdefault(pid, name)
                if other != name:
                    raise DatasetError(
                        f"training datasets {other} and {name} give the same identity label "
                        f"{pid!r} (the same dataset_name prefix): their identities would be "
                        f"merged", "DATASETS.NAMES",
                        "train on each dataset once (e.g. MSMT17TrainVal already holds MSMT17's "
                        "training set); for two sets of your own use ReIDFolder and ReIDFolder2")
            for c in cams:
                if c in self._train:  # a shared prefix, the identities apart
                    raise DatasetError(f"training datasets share the camera label {c!r}",
                                       "DATASETS.NAMES", "train on each dataset once")
                self._train[c] = offset + camera_index(c)
            span = max((camera_index(c) for c in cams), default=-1) + 1
            self.offsets[name], self.spans[name] = offset, span
            offset += span
        self.names = list(self.offsets)
        self.total = offset

    def train_index(self, camid):
        """Row of a training camera id (fast-reid's un-relabelled form)."""
        return self._train[camid]

    def test_index(self, name, camid):
        """Row of camera ``camid`` of test set ``name`` (``unseen_camera`` when not trained)."""
        if name not in self.offsets:
            return unseen_camera(camid)
        cam = camera_index(camid)
        if cam >= self.spans[name] and name != self.names[-1]:
            return unseen_camera(camid)
        return self.offsets[name] + cam
