"""Runtime patches of fast-reid's data loading: loaders without CUDA, test loaders with the
configured workers, transforms on today's torchvision / numpy / Pillow, loader errors raised in
the training loop, images read as RGB, and fast-reid's DefaultTrainer building its loaders as the
plugin does."""
import functools
import types

from PIL import Image

from ..compat import fix
from ..data.images import to_rgb
from ..devices import cuda_available, loader_uses_cuda


@fix
def dataloader_without_cuda():
    # fastreid/data/data_utils.py: DataLoaderX creates a CUDA stream in __init__, its prefetch
    # thread calls torch.cuda.set_device, and __next__ waits on CUDA streams -> every loader
    # fails on a machine without CUDA (and puts batches on the GPU for a MODEL.DEVICE cpu
    # model where there is one).  Keep the prefetch thread; the CUDA parts (pinned memory,
    # copy stream, non_blocking copies) only when the loader is built for a CUDA device
    # (``devices.loader_device``, around the loader builders in data/loaders.py).
    import torch
    from torch.utils.data import DataLoader
    from fastreid.data import data_utils

    X, BG = data_utils.DataLoaderX, data_utils.BackgroundGenerator
    orig_init, orig_preload, orig_next, orig_run = X.__init__, X.preload, X.__next__, BG.run

    def __init__(self, local_rank, **kwargs):
        self.uses_cuda = loader_uses_cuda()  # decided when the loader is built
        if self.uses_cuda:
            return orig_init(self, local_rank, **kwargs)
        kwargs["pin_memory"] = False  # pinning is for copies to CUDA
        DataLoader.__init__(self, **kwargs)
        self.stream = None
        self.local_rank = local_rank

    def preload(self):
        if self.stream is not None:
            return orig_preload(self)
        self.batch = next(self.iter, None)

    def __next__(self):
        if self.stream is not None:
            return orig_next(self)
        batch = self.batch
        if batch is None:
            raise StopIteration
        self.preload()
        return batch

    def run(self):  # the prefetch thread: torch.cuda.set_device only where there is CUDA
        if cuda_available():
            return orig_run(self)
        for item in self.generator:
            if self.exit_event.is_set():
                break
            self.queue.put(item)
        self.queue.put(None)

    X.__init__, X.preload, X.__next__, BG.run = __init__, preload, __next__, run
    del torch


@fix
def test_loader_num_workers():
    # fastreid/data/build.py: _test_loader_from_config() never passes DATALOADER.NUM_WORKERS,
    # so every test loader starts 4 workers whatever the config says.
    import fastreid.data
    import fastreid.data.build as build
    from fastreid.config import configurable

    if getattr(build.build_reid_test_loader, "_gltrans_patched", False):
        return
    orig_from_config = build._test_loader_from_config

    def _test_loader_from_config(cfg, **kwargs):
        out = orig_from_config(cfg, **kwargs)
        out["num_workers"] = cfg.DATALOADER.NUM_WORKERS
        return out

    undecorated = build.build_reid_test_loader.__wrapped__
    fn = configurable(from_config=_test_loader_from_config)(undecorated)
    fn._gltrans_patched = True
    build._test_loader_from_config = _test_loader_from_config
    build.build_reid_test_loader = fn
    fastreid.data.build_reid_test_loader = fn
    import fastreid.engine.defaults as defaults

    defaults.build_reid_test_loader = fn


@fix
def random_affine_new_torchvision():
    # fastreid/data/transforms/build.py: T.RandomAffine(..., resample=False, fillcolor=0) uses
    # arguments torchvision removed (0.13) -> TypeError when INPUT.AFFINE.ENABLED.
    import torchvision.transforms as T
    from fastreid.data.transforms import build

    class RandomAffine(T.RandomAffine):
        def __init__(self, *args, resample=None, fillcolor=None, **kwargs):
            if fillcolor is not None:
                kwargs.setdefault("fill", fillcolor)
            if resample not in (None, False):
                kwargs.setdefault("interpolation", resample)
            super().__init__(*args, **kwargs)

    class _Transforms(types.ModuleType):
        def __getattr__(self, name):
            return getattr(T, name)

    proxy = _Transforms("torchvision.transforms (fastreid compat)")
    proxy.RandomAffine = RandomAffine
    build.T = proxy


@fix
def to_tensor_numpy2():
    # fastreid/data/transforms/functional.py: to_tensor() calls np.array(pic, dtype, copy=False)
    # for PIL modes I, I;16, F and 1 (numpy 2 raises ValueError when a copy is needed) and
    # torch.ByteStorage.from_buffer for the others (deprecated TypedStorage).  Same output
    # (CHW; uint8 images as float 0-255) through numpy.
    import numpy as np
    import torch
    from fastreid.data.transforms import functional, transforms

    original = functional.to_tensor
    if getattr(original, "_gltrans_patched", False):
        return
    dtypes = {"I": np.int32, "I;16": np.int16, "F": np.float32}

    @functools.wraps(original)
    def to_tensor(pic):
        if isinstance(pic, np.ndarray):
            return original(pic)
        arr = np.array(pic, dtype=dtypes.get(pic.mode), copy=True)  # H x W (x C)
        if pic.mode == "1":
            arr = arr.astype(np.uint8) * 255
        if arr.ndim == 2:
            arr = arr[:, :, None]
        img = torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # C x H x W
        return img.float() if img.dtype == torch.uint8 else img

    to_tensor._gltrans_patched = True
    functional.to_tensor = to_tensor
    transforms.to_tensor = to_tensor


@fix
def posterize_zero_bits():
    # fastreid/data/transforms/autoaugment.py: RandAugment/AutoAugment call
    # ImageOps.posterize(img, 0) ("keep 0 bits" = black); Pillow >= 11 rejects bits=0.
    from PIL import Image
    from fastreid.data.transforms import autoaugment

    original = autoaugment.posterize

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)  # every bit dropped: black, as Pillow < 11 did
        return original(img, bits_to_keep, **kwargs)

    autoaugment.posterize = posterize
    for table in (autoaugment.NAME_TO_OP,):
        for k, v in list(table.items()):
            if v is original:
                table[k] = posterize


class _LoaderError:
    def __init__(self, exc):
        self.exc = exc


@fix
def loader_errors_propagate():
    # fastreid/data/data_utils.py: BackgroundGenerator runs the data loader in a thread; an
    # exception there (an unreadable image, a bad transform) ends the thread and the training
    # loop waits forever on its queue.  The exception is now handed to the training loop and
    # raised there.
    from fastreid.data import data_utils

    BG = data_utils.BackgroundGenerator
    orig_run = BG.run

    def run(self):
        try:
            orig_run(self)
        except BaseException as e:  # hand it to the consumer instead of dying silently
            self.queue.put(_LoaderError(e))

    def next(self):
        item = self.queue.get()
        if isinstance(item, _LoaderError):
            self.queue.put(item)  # every later call raises too
            raise item.exc
        if item is None:
            raise StopIteration
        return item

    BG.run, BG.next = run, next


@fix
def default_trainer_reads_dataset_keys():
    # fastreid/engine/defaults.py + data/build.py: DefaultTrainer's loaders build each dataset
    # under env FASTREID_DATASETS with the reader's default arguments -> DATASETS.ROOT and
    # DATASETS.SYNTHETIC.* are silently ignored (the built-in set is generated at its default
    # sizes under ./datasets), and training camera ids, relabelled in string order, stop
    # matching the test ids past 10 cameras (the SIE rows).  Its loaders are now the plugin's
    # (data/loaders.py): the configured root and sizes, the same camera index in training and
    # test, batches on MODEL.DEVICE.  The plugin's Trainer inherits them.
    from fastreid.engine.defaults import DefaultTrainer

    from ..data import loaders

    DefaultTrainer.build_train_loader = classmethod(
        lambda cls, cfg: loaders.build_train_loader(cfg))
    DefaultTrainer.build_test_loader = classmethod(
        lambda cls, cfg, dataset_name: loaders.build_test_loader(cfg, dataset_name))


@fix
def images_read_as_rgb():
    # fastreid/data/data_utils.py: read_image keeps the file's mode (RGBA, CMYK, 16-bit ...),
    # which the transforms then fail on.  It now returns ``to_rgb`` images when no format is
    # asked for (CommDataset and the tools call it so).
    from fastreid.data import common, data_utils

    original = data_utils.read_image

    @functools.wraps(original)
    def read_image(file_name, format=None):
        if format is not None:
            return original(file_name, format)
        with data_utils.PathManager.open(file_name, "rb") as f:
            img = Image.open(f)
            try:
                from PIL import ImageOps

                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001  (fast-reid ignores bad EXIF too)
                pass
            img = to_rgb(img)
            img.load()
        return img

    data_utils.read_image = read_image
    common.read_image = read_image  # CommDataset imported it by name


@fix
def reader_names_checked():
    # fastreid/data/datasets/market1501.py, dukemtmcreid.py: process_dir reads camera c10 as
    # camera 1 (pattern ``_c(\d)``) and fails on a bad name without naming it; their names are
    # now read by the plugin's one Market-style name reader (data.names.parse_market_name):
    # any number of camera digits, a camera or identity out of the set's range named with its file.
    from ..data.names import use_market_name_parser

    use_market_name_parser()
