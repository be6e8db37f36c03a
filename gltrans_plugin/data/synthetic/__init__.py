"""Built-in synthetic Re-ID data set: a generator that writes a real Market-1501 layout.

Two rooms: ``draw`` makes the images (person-like figures seen by cameras, deterministic from
the seed), ``storage`` lays them out on disk (parameters, file names, manifest, repair of a
damaged set, a lock and an atomic write).  ``generate_synthetic_reid(root_dir, ...)`` is the
entry point; ``SyntheticReID`` (``data.datasets``) calls it on first use.
"""
from .draw import GENERATOR_VERSION, render_image
from .storage import (DEFAULTS, MANIFEST_NAME, SPLIT_DIRS, generate_synthetic_reid,
                      is_valid_synthetic_reid, read_manifest, set_differences, synthetic_params)

__all__ = [
    "GENERATOR_VERSION",
    "DEFAULTS",
    "SPLIT_DIRS",
    "MANIFEST_NAME",
    "generate_synthetic_reid",
    "is_valid_synthetic_reid",
    "read_manifest",
    "render_image",
    "set_differences",
    "synthetic_params",
]
