"""Data: the datasets registered into fast-reid (your own data in ``folder.py``), the built-in
synthetic set, and the image sets, samplers and dataset building the trainer uses."""
from . import images, synthetic  # noqa: F401
from .cameras import CameraLayout, camera_index, unseen_camera  # noqa: F401
from .checks import DatasetError, check_dataset_root  # noqa: F401
from .datasets import MSMT17TrainVal, SyntheticReID, synthetic_kwargs  # noqa: F401  (register)
from .folder import ReIDFolder, ReIDFolder2, folder_kwargs  # noqa: F401  (registers them)
from .veri import VeRiViews, fill_num_views  # noqa: F401  (registers VeRiViews)
from .build import (  # noqa: F401
    build_dataset,
    camera_layout,
    clear_dataset_cache,
    dataset_root,
    test_camera_map,
)
from .synthetic import generate_synthetic_reid  # noqa: F401
