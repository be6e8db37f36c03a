"""GLTrans features inside a multi-object tracker, in PyTorch: ``TrackerReID``.

BoxMOT's trackers (BotSort, StrongSort, DeepOcSort, ...) take any object with
``get_features(xyxys, frame) -> N x D`` as their ``reid_model``.  ``TrackerReID`` is that
object built on ``FeatureExtractor``: the crops get exactly the test loader's preprocessing
(so the features equal the evaluator's), the camera id of the stream feeds the SIE term, and
the crops of a frame go through the model in batches on the chosen device.

    from boxmot import BotSort
    from gltrans_plugin.tracking import TrackerReID

    reid = TrackerReID("logs/run/config.yaml", "logs/run/model_final.pth", camid=0)
    tracker = BotSort(reid_model=reid)
    for frame in frames:                          # H x W x 3 uint8 BGR (OpenCV)
        dets = detector(frame)                    # N x 6: x1, y1, x2, y2, conf, cls
        tracks = tracker.update(dets, frame)      # M x 8: x1, y1, x2, y2, id, conf, cls, det

One ``TrackerReID`` per camera stream (``reid.for_camera(c)`` shares the model): camera ids are
0-based rows of the model's SIE table; ``camid=None`` (a camera the model was not trained on)
gets MODEL.BACKBONE.SIE_UNSEEN (default: the mean camera embedding).
"""
import logging
from typing import Optional

import numpy as np

from .extractor import FeatureExtractor

logger = logging.getLogger(__name__)

__all__ = ["TrackerReID", "crops_from_boxes"]

AABB_COLUMNS = (4, 6, 8)  # x1, y1, x2, y2 [, conf, cls [, ...]]: BoxMOT's axis-aligned rows


def crops_from_boxes(xyxys, frame: np.ndarray, empty_size=(8, 8)):
    """The crops of ``frame`` (H x W x 3) under N boxes whose first four columns are
    x1, y1, x2, y2 in pixels: rounded, clipped to the frame (as BoxMOT cuts them); a box with
    nothing inside gives a black ``empty_size`` crop, so the rows stay aligned."""
    boxes = np.asarray(xyxys, dtype=np.float32)
    if boxes.ndim == 1:
        boxes = boxes.reshape(1, -1) if boxes.size else boxes.reshape(0, 4)
    if boxes.ndim != 2 or (len(boxes) and boxes.shape[1] not in AABB_COLUMNS):
        raise ValueError(f"boxes of shape {boxes.shape}: give N x 4 (x1, y1, x2, y2) rows, "
                         f"optionally followed by conf and class (N x 6); oriented boxes "
                         f"(N x 5 / 7) are not supported.")
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame: expected an H x W x 3 uint8 array, got "
                         f"{getattr(frame, 'shape', type(frame).__name__)}.")
    h, w = frame.shape[:2]
    crops = []
    for x1, y1, x2, y2 in np.round(boxes[:, :4]).astype(np.int64):
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if x2 > x1 and y2 > y1:
            crops.append(np.ascontiguousarray(frame[y1:y2, x1:x2]))
        else:
            crops.append(np.zeros((*empty_size, 3), dtype=frame.dtype))
    return crops


class TrackerReID:
    """A tracker's appearance model on a trained checkpoint (BoxMOT's ``reid_model``).

    ``TrackerReID(config_file, weights=None, camid=None, device="auto", batch_size=32,
    bgr=True, flip_test=False, amp=False, opts=())``: ``camid`` the 0-based camera id of the
    stream (None: not known), ``bgr`` frames in OpenCV's channel order (BoxMOT's), the others
    as ``FeatureExtractor``.  ``get_features(xyxys, frame)`` -> N x D float32 numpy array,
    L2-normalised (0 x D for no boxes; D is 0 until a first crop has been seen).
    """

    def __init__(self, config_file=None, weights=None, camid: Optional[int] = None,
                 device="auto", batch_size=32, bgr=True, flip_test=False, amp=False, opts=(),
                 extractor: Optional[FeatureExtractor] = None):
        if extractor is None:
            if config_file is None:
                raise ValueError("TrackerReID: give config_file (a run's config.yaml) and "
                                 "weights, or an extractor.")
            extractor = FeatureExtractor(config_file, weights, device=device,
                                         batch_size=batch_size, amp=amp, flip_test=flip_test,
                                         normalize=True, bgr=bgr, opts=opts)
        self.extractor = extractor
        self.camid = None if camid is None else int(camid)
        self.bgr = bool(bgr)
        self._dim = 0

    @classmethod
    def from_extractor(cls, extractor: FeatureExtractor, camid: Optional[int] = None,
                       bgr: bool = True):
        """An adapter around an extractor already built (its batch size, device, flip test;
        features are L2-normalised here whatever the extractor's ``normalize``)."""
        return cls(extractor=extractor, camid=camid, bgr=bgr)

    def for_camera(self, camid: Optional[int]) -> "TrackerReID":
        """The same model for another stream (camera ``camid``)."""
        return type(self)(extractor=self.extractor, camid=camid, bgr=self.bgr)

    @property
    def device(self):
        return self.extractor.device

    @property
    def input_shape(self):
        """(H, W) the crops are resized to (INPUT.SIZE_TEST)."""
        return tuple(int(v) for v in self.extractor.cfg.INPUT.SIZE_TEST[:2])

    def get_features(self, xyxys, frame) -> np.ndarray:
        """N x D L2-normalised features of the boxes' crops of ``frame`` (H x W x 3 uint8,
        BGR unless built with bgr=False)."""
        crops = crops_from_boxes(xyxys, frame)
        if not crops:
            return np.zeros((0, self._dim), dtype=np.float32)
        feats = self.extractor(crops, camids=self.camid, bgr=self.bgr)
        feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._dim = int(feats.shape[1])
        return feats.numpy().astype(np.float32, copy=False)

    __call__ = get_features
