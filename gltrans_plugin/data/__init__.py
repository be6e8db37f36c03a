"""Data: the datasets registered into fast-reid, the built-in synthetic set, and the image
sets, samplers and dataset building the trainer uses."""
from . import images, synthetic  # noqa: F401  (images registers its compat fix)
from .datasets import (  # noqa: F401  (importing registers the datasets)
    MSMT17TrainVal,
    SyntheticReID,
    camera_index,
    camera_indices,
    check_dataset_root,
    synthetic_kwargs,
)
from .build import build_dataset, clear_dataset_cache, dataset_root  # noqa: F401
from .synthetic import generate_synthetic_reid  # noqa: F401
