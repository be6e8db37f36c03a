"""Synthetic camera frames with the built-in data set's people in them, for the tracker checks.

``Scene(seed, height, width)`` holds a textured background (a synthetic-set camera look) and
draws people (``gltrans_plugin.data.synthetic``'s identities and figure drawing) into frames:

    scene = Scene(seed=0, height=480, width=640)
    frame, boxes = scene.frame([(pid, cx, top, fig_h, face), ...])   # BGR uint8, xyxy boxes

People are drawn in the order given (later ones occlude earlier ones).  A box is the figure's
extent (head to shoes, arms included) clipped to the frame, as a detector would give it.
"""
import numpy as np
from PIL import Image, ImageDraw

try:  # the figure drawing of the built-in set
    from gltrans_plugin.data.synthetic import draw as syn
except ImportError:  # the one-module layout of earlier versions
    from gltrans_plugin.data import synthetic as syn

_camera = getattr(syn, "camera", None) or syn._camera
_identity = getattr(syn, "identity", None) or syn._identity

__all__ = ["Scene", "person_box"]


def person_box(cx, top, fig_h):
    """xyxy extent of a figure drawn at (cx, top) of height fig_h (shoes and arms included)."""
    half_w = 0.30 * fig_h
    return np.array([cx - half_w, top - 0.03 * fig_h, cx + half_w, top + 1.03 * fig_h])


class Scene:
    """A camera: background of ``height`` x ``width`` and the identities of ``seed``."""

    def __init__(self, seed=0, height=480, width=640, camera=1, group_size=4):
        cam = _camera(seed, camera, height, width)
        bg = cam["background"]
        reps = (int(np.ceil(height / bg.shape[0])), int(np.ceil(width / bg.shape[1])), 1)
        self.background = np.tile(bg, reps)[:height, :width].copy()
        self.seed, self.height, self.width, self.group_size = seed, height, width, group_size
        self._ids = {}

    def identity(self, pid):
        if pid not in self._ids:
            self._ids[pid] = _identity(self.seed, pid, self.group_size)
        return self._ids[pid]

    def frame(self, people, pose_seed=0):
        """(BGR uint8 frame, N x 4 float32 xyxy boxes clipped to the frame) with ``people``
        [(pid, cx, top, fig_h, face)] drawn in that order; ``pose_seed`` varies the gait."""
        img = Image.fromarray(self.background)
        draw = ImageDraw.Draw(img)
        boxes = []
        for pid, cx, top, fig_h, face in people:
            rng = np.random.default_rng([self.seed, pose_seed, pid])
            syn._draw_person(draw, self.identity(pid), rng, cx, top, fig_h, face)
            b = person_box(cx, top, fig_h)
            b[[0, 2]] = b[[0, 2]].clip(0, self.width)
            b[[1, 3]] = b[[1, 3]].clip(0, self.height)
            boxes.append(b)
        rgb = np.asarray(img, dtype=np.uint8)
        return np.ascontiguousarray(rgb[..., ::-1]), np.array(boxes, np.float32).reshape(-1, 4)
