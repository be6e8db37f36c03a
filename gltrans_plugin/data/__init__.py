"""Data: the built-in synthetic Re-ID set and the datasets registered into fast-reid."""
from . import synthetic  # noqa: F401
from .datasets import (  # noqa: F401  (importing registers the datasets)
    MSMT17TrainVal,
    SyntheticReID,
    camera_index,
    camera_indices,
    check_dataset_root,
    synthetic_kwargs,
)
from .synthetic import generate_synthetic_reid  # noqa: F401
