"""Images in any mode read as 8-bit RGB, as a photo viewer shows them.

fast-reid's ``read_image`` (``fastreid/data/data_utils.py``) keeps the file's mode: an RGBA or
LA PNG gives 4 / 2 channels, a CMYK JPEG 4, a 16-bit PNG uint16 values; the transforms then
fail far from the file (torchvision's ``RandomErasing``: ``ValueError: If value is a sequence,
it should have either a single value or 4 ...``) or normalise wrong values.  ``to_rgb``
converts every mode (P, L, LA, RGBA, CMYK, YCbCr, I;16, I, F, 1, ...) to RGB: transparency
composited on black (what dropping alpha gives), 16-bit scaled to 8 bits.
The runtime patch ``images_read_as_rgb`` (``patches/data.py``) makes fast-reid's reader
(training, test and ``tools/``) return ``to_rgb`` images.
"""
import numpy as np
from PIL import Image

__all__ = ["to_rgb"]

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img):
    """A PIL image of any mode -> 8-bit RGB (the input is returned when it already is)."""
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_BIT_MODES or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = 255.0 if arr.size == 0 or arr.max() <= 255 else (
            65535.0 if arr.max() <= 65535 else float(arr.max()))
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)  # H x W
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency: through RGBA, as Pillow advises
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")

