"""Every runtime patch of PyPI's fastreid 1.4.0: it runs on today's stack (Python 3.11, torch 2.x,
numpy 2, Pillow 11+), its runs fail clearly instead of hanging or corrupting files, and its own
scripts (``tools/train_net.py``: get_cfg, default_setup, DefaultTrainer) run GLTrans configs.

``import gltrans_plugin`` runs this module before anything imports fastreid: the import-time
shims first, then ``apply()`` patches fastreid's modules in memory.  Each fix is one small block
registered with ``@_fix``, whose comment names the fastreid file and the failure it removes;
``APPLIED`` lists the fixes by name, env ``GLTRANS_COMPAT_SKIP=name,...`` skips some, and
``tests/test_compat.py`` (or ``tests/test_fastreid_scripts.py``) has a test for each that fails
without it.  Fixes that use higher layers live beside the code they use and register with
``compat.fix``: ``images_read_as_rgb`` (``data/images.py``), ``reader_names_checked``
(``data/datasets.py``) and the three ``default_trainer_*`` fixes of fast-reid's plain
DefaultTrainer (``engine.py``).  Nothing in site-packages is edited and no fastreid code is
copied: every patch wraps or replaces one call.
"""
import collections
import collections.abc
import functools
import logging
import os
import sys
import types

logger = logging.getLogger(__name__)

APPLIED = []  # names of the fixes applied, in order


_FIXES = []


def _fix(fn):
    """Register a fix of fastreid (a function that patches it in memory, named after what it
    makes work); ``apply()`` runs each once, unless named in env ``GLTRANS_COMPAT_SKIP``.
    The plugin's data modules register theirs with it too (``compat.fix``)."""
    _FIXES.append(fn)
    return fn


fix = _fix  # public name, for fixes that live beside the code they use (data/)


# --------------------------------------------------------------------------- import-time shims
def _preimport_shims():
    # fastreid/evaluation/testing.py and data/build.py: `from collections import Mapping`
    # (removed in Python 3.10) -> ImportError on `import fastreid.data` / `.evaluation`.
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    # fastreid/data/build.py: `from torch._six import string_classes` (torch._six removed in 2.0).
    import torch

    if "torch._six" not in sys.modules and not hasattr(torch, "_six"):
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        sys.modules["torch._six"] = six
        torch._six = six


_preimport_shims()


def require_fastreid():
    """Import fastreid or fail with one message that says how to install it."""
    try:
        import fastreid  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "fastreid":
            raise
        raise ImportError(
            "gltrans_plugin needs fast-reid, which is not installed. Install it without its "
            "torch-1.13 pins:  pip install --no-deps fastreid==1.4.0  (README, 'Set-up')."
        ) from None


def _cuda():
    import torch

    return torch.cuda.is_available()


# Where fast-reid's data loaders put batches: cfg.MODEL.DEVICE, set by the plugin's Trainer
# before it builds a loader (``set_data_device``); None = fast-reid's rule (CUDA when present).
_DATA_DEVICE = [None]


def set_data_device(device):
    """Batches of loaders built from now on go to ``device`` (cfg.MODEL.DEVICE): CUDA copies
    (pinned memory, a copy stream, ``non_blocking``) only for a CUDA device."""
    _DATA_DEVICE[0] = None if device is None else str(device)


def _loader_cuda():
    device = _DATA_DEVICE[0]
    return _cuda() and (device is None or device.startswith("cuda"))


# --------------------------------------------------------------------------- config
@_fix
def gltrans_keys_in_defaults():
    # fastreid/config/defaults.py: get_cfg() copies fast-reid's defaults, which lack this
    # plugin's keys -> `KeyError: 'Non-existent config key: DATALOADER.EPOCH_SAMPLER'` when a
    # fast-reid script (tools/train_net.py's get_cfg + merge_from_file) reads a GLTrans config.
    # The keys (add_gltrans_config) are added to those defaults once, so get_cfg() has them.
    from fastreid.config import defaults

    from .config import add_gltrans_config

    add_gltrans_config(defaults._C)


# --------------------------------------------------------------------------- evaluation
@_fix
def no_cython_compile_exit():
    # fastreid/evaluation/reid_evaluation.py: ReidEvaluator.__init__ runs `make` on the Cython
    # rank module the wheel does not ship (in site-packages) and calls sys.exit(1) when that
    # fails: training dies silently after the first epoch.  Use the python ranking instead.
    from fastreid.evaluation import reid_evaluation

    def _compile_dependencies(self):
        try:
            from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
        except ImportError:
            logger.info("fastreid's Cython rank module is not built; using its python ranking.")

    reid_evaluation.ReidEvaluator._compile_dependencies = _compile_dependencies


@_fix
def rerank_on_cpu():
    # fastreid/utils/compute_dist.py: compute_jaccard_distance() calls `features.cuda()` and
    # faiss-GPU for every search_option < 3 -> crashes on CPU.  Use the faiss-CPU path there.
    from fastreid.utils import compute_dist

    original = compute_dist.compute_jaccard_distance
    if getattr(original, "_gltrans_patched", False):
        return

    @functools.wraps(original)
    def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
        import faiss

        if not (_cuda() and features.is_cuda and faiss.get_num_gpus() > 0):
            search_option = 3
        return original(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)

    compute_jaccard_distance._gltrans_patched = True
    compute_dist.compute_jaccard_distance = compute_jaccard_distance


@_fix
def flip_test_single_normalisation():
    # fastreid/evaluation/evaluator.py: inference_on_dataset() flips inputs["images"] after the
    # model (Baseline.preprocess_image) has normalised that tensor in place, so the flipped
    # pass normalises twice and the flip-test features are wrong.  DefaultTrainer.test uses
    # ours (gltrans_plugin/evaluation/inference.py): each pass gets its own copy of the images.
    import fastreid.engine.defaults as defaults

    from .evaluation.inference import inference_on_dataset

    defaults.inference_on_dataset = inference_on_dataset


# --------------------------------------------------------------------------- data
@_fix
def dataloader_without_cuda():
    # fastreid/data/data_utils.py: DataLoaderX creates a CUDA stream in __init__, its prefetch
    # thread calls torch.cuda.set_device, and __next__ waits on CUDA streams -> every loader
    # fails on a machine without CUDA (and puts batches on the GPU for a MODEL.DEVICE cpu
    # model where there is one).  Keep the prefetch thread; the CUDA parts (pinned memory,
    # copy stream, non_blocking copies) only when the data device is CUDA (set_data_device).
    import torch
    from torch.utils.data import DataLoader
    from fastreid.data import data_utils

    X, BG = data_utils.DataLoaderX, data_utils.BackgroundGenerator
    orig_init, orig_preload, orig_next, orig_run = X.__init__, X.preload, X.__next__, BG.run

    def __init__(self, local_rank, **kwargs):
        if _loader_cuda():
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

    def run(self):
        if _loader_cuda():
            return orig_run(self)
        for item in self.generator:
            if self.exit_event.is_set():
                break
            self.queue.put(item)
        self.queue.put(None)

    X.__init__, X.preload, X.__next__, BG.run = __init__, preload, __next__, run
    del torch


@_fix
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


@_fix
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


@_fix
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


@_fix
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


# --------------------------------------------------------------------------- solver
@_fix
def optimizer_without_contiguous_params():
    # fastreid/solver/build.py: build_optimizer() wraps parameters in ContiguousParams
    # (utils/params.py); torch 2's zero_grad(set_to_none=True) drops its gradient views, so the
    # optimizer silently never updates a weight.  Always build on the plain parameters.
    import fastreid.solver
    import fastreid.solver.build as build
    import fastreid.engine.defaults as defaults

    original = build.build_optimizer
    if getattr(original, "_gltrans_patched", False):
        return

    @functools.wraps(original)
    def build_optimizer(cfg, model, contiguous=False):
        if contiguous:
            logger.warning("ContiguousParams does not update weights on torch 2; ignoring it.")
        return original(cfg, model, contiguous=False)

    build_optimizer._gltrans_patched = True
    build.build_optimizer = fastreid.solver.build_optimizer = build_optimizer
    defaults.build_optimizer = build_optimizer


@_fix
def cosine_with_zero_epochs():
    # fastreid/solver/build.py: build_lr_scheduler() gives CosineAnnealingLR
    # T_max = MAX_EPOCH - warm-up epochs, which is 0 for short runs -> ZeroDivisionError at the
    # first epoch end.  A cosine schedule over at least one epoch.
    import torch
    from fastreid.solver import lr_scheduler

    base = torch.optim.lr_scheduler.CosineAnnealingLR

    class CosineAnnealingLR(base):
        def __init__(self, optimizer, T_max, *args, **kwargs):
            super().__init__(optimizer, max(int(T_max), 1), *args, **kwargs)

    lr_scheduler.CosineAnnealingLR = CosineAnnealingLR


# --------------------------------------------------------------------------- engine
@_fix
def amp_on_cpu():
    # fastreid/engine/train_loop.py: AMPTrainer.run_step asserts CUDA and uses the deprecated
    # torch.cuda.amp API.  Use torch.autocast on the model's device: fp16 + GradScaler on CUDA,
    # bf16 (no scaler needed) on CPU; `trainer.amp_dtype` ("auto" | "bf16" | "fp16", set by
    # gltrans_plugin.engine.Trainer from SOLVER.AMP.DTYPE) overrides the choice.  The
    # GradScaler is made for the model's device and used for fp16 only (on CPU too).
    import time
    import torch
    from fastreid.engine import train_loop

    def run_step(self):
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        device = next(self.model.parameters()).device.type
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        choice = getattr(self, "amp_dtype", "auto")
        if choice == "auto":
            choice = "fp16" if device == "cuda" else "bf16"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[choice]
        with torch.autocast(device_type=device, dtype=dtype):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        use_scaler = dtype == torch.float16 and self.grad_scaler.is_enabled()
        (self.grad_scaler.scale(losses) if use_scaler else losses).backward()
        self._write_metrics(loss_dict, data_time)
        if use_scaler:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    orig_init = train_loop.AMPTrainer.__init__

    def __init__(self, model, data_loader, optimizer, param_wrapper, grad_scaler=None):
        if grad_scaler is None:  # torch.cuda.amp.GradScaler is deprecated and warns on CPU
            device = next(model.parameters()).device.type  # (DDP forwards .parameters())
            grad_scaler = torch.amp.GradScaler(device, enabled=device in ("cuda", "cpu"))
        orig_init(self, model, data_loader, optimizer, param_wrapper, grad_scaler)

    train_loop.AMPTrainer.run_step = run_step
    train_loop.AMPTrainer.__init__ = __init__


@_fix
def ddp_on_cpu():
    # fastreid/engine/defaults.py: DefaultTrainer wraps the model in
    # DistributedDataParallel(model, device_ids=[local_rank]); device_ids must be None for a
    # CPU model (gloo) -> ValueError on any multi-process CPU run.
    from torch.nn.parallel import DistributedDataParallel
    import fastreid.engine.defaults as defaults

    def ddp(model, device_ids=None, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            device_ids = None
        return DistributedDataParallel(model, device_ids=device_ids, **kwargs)

    defaults.DistributedDataParallel = ddp


def _launch_device(args):
    """cfg.MODEL.DEVICE of the run a launched worker is for (from its --config-file and opts),
    or None where that cannot be read here (the worker's own set-up then reports it)."""
    ns = args[0] if args else None
    if not hasattr(ns, "opts"):
        return None
    try:
        from .config import setup_cfg

        return str(setup_cfg(getattr(ns, "config_file", ""), list(ns.opts or [])).MODEL.DEVICE)
    except Exception:  # noqa: BLE001  (reported by the worker's setup, with its message)
        return None


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args):
    """fastreid's launch worker, with the backend chosen by device (see launch_gloo_on_cpu)."""
    import torch
    import torch.distributed as dist
    from fastreid.utils import comm

    from .distributed import die_with_launcher

    die_with_launcher()  # a killed launcher leaves no worker behind (distributed.py)
    device = _launch_device(args)  # NCCL and one GPU per worker only for a CUDA MODEL.DEVICE
    use_cuda = _cuda() and (device is None or device.startswith("cuda"))
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=dist_url,
                            world_size=world_size, rank=global_rank)
    if use_cuda:
        if num_gpus_per_machine > torch.cuda.device_count():
            raise RuntimeError(f"--num-gpus {num_gpus_per_machine} but only "
                               f"{torch.cuda.device_count()} GPUs are visible.")
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        pg = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    main_func(*args)
    # Clean shutdown: wait until every rank is done, then join the backend's threads.  A worker
    # exiting with its process group alive can abort in a C++ destructor ("terminate called
    # without an active exception", SIGABRT) while another rank still talks to it.
    comm.synchronize()
    dist.destroy_process_group()


@_fix
def launch_gloo_on_cpu():
    # fastreid/engine/launch.py: _distributed_worker asserts CUDA and hard-codes the NCCL
    # backend -> `--num-gpus 2` cannot run on CPU.  Same worker, gloo when there is no GPU.
    import importlib

    # (`fastreid.engine.launch` the attribute is the function; the module is in sys.modules)
    importlib.import_module("fastreid.engine.launch")._distributed_worker = _distributed_worker


@_fix
def checkpoint_weights_only():
    # fastreid/utils/checkpoint.py: Checkpointer._load_file is a bare torch.load call; since
    # torch 2.6 it defaults to weights_only=True and refuses fastreid's own checkpoints, which
    # hold numpy scalars (the metric saved by PeriodicCheckpointer).  Load through
    # checkpoint.load_file: weights-only with numpy scalars allowed, legacy pickles need
    # GLTRANS_ALLOW_PICKLE=1, a damaged file is named with the key that pointed at it.
    from fastreid.utils import checkpoint

    from .checkpoint import load_file

    def _load_file(self, f):
        # the key that named the file, for the messages (Trainer.resume_or_load sets it)
        return load_file(f, key=getattr(self, "source_key", "MODEL.WEIGHTS"))

    checkpoint.Checkpointer._load_file = _load_file


@_fix
def resume_finished_run():
    # fastreid/engine/train_loop.py + hooks.py: resuming from model_final makes
    # start_epoch == max_epoch, the epoch loop never runs, `self.epoch` is never set and the
    # after_train hooks raise AttributeError: ... no attribute 'epoch'.
    from fastreid.engine import train_loop

    original = train_loop.TrainerBase.train

    def train(self, start_epoch, max_epoch, iters_per_epoch):
        self.epoch = max(start_epoch - 1, 0) if start_epoch >= max_epoch else start_epoch
        return original(self, start_epoch, max_epoch, iters_per_epoch)

    train_loop.TrainerBase.train = train


@_fix
def atomic_checkpoints():
    # fastreid/utils/checkpoint.py writes model_*.pth and last_checkpoint in place
    # (PathManager.open(path, "wb")); a kill during the write leaves a truncated file, and
    # model_best / model_final are overwritten in place.  Every write of the checkpointer now
    # goes through checkpoint.atomic_open (a temporary file, fsync'ed and renamed over the
    # target), so a file is either the old one or the complete new one, and last_checkpoint
    # (written after the checkpoint) never names a partial file.
    from fastreid.utils import checkpoint

    from .checkpoint import AtomicPathManager

    # Checkpointer.save and tag_last_checkpoint write through this module-level name
    checkpoint.PathManager = AtomicPathManager(checkpoint.PathManager)


@_fix
def nonfinite_loss_stops():
    # fastreid/engine/train_loop.py: SimpleTrainer._write_metrics (called after backward, before
    # optimizer.step) checks the losses on rank 0 only, after averaging, and prints the whole
    # dict.  Now every rank checks its own losses first, the ranks agree (one all-reduce of a
    # flag), and all stop together with NonFiniteLossError naming the iteration, the bad loss
    # keys (one per branch) and the rank -- before the step, so the weights stay finite.
    import torch
    from fastreid.engine import train_loop
    from fastreid.utils import comm

    from .errors import NonFiniteLossError

    original = train_loop.SimpleTrainer._write_metrics

    def _write_metrics(self, loss_dict, data_time, *args, **kwargs):
        bad = {k: float(v.detach().float().cpu()) for k, v in loss_dict.items()
               if not bool(torch.isfinite(v.detach()).all())}
        if comm.get_world_size() > 1:  # all ranks stop together (no rank left in a collective)
            import torch.distributed as dist

            device = next(iter(loss_dict.values())).device
            flag = torch.tensor([1.0 if bad else 0.0], device=device)
            dist.all_reduce(flag)
            if flag.item() > 0:
                per_rank = comm.all_gather(bad)
                bad = {f"{k} (rank {r})": v for r, d in enumerate(per_rank) for k, v in d.items()}
        if bad:
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            finite = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items()
                               if not any(key.split(" (rank")[0] == k for key in bad))
            raise NonFiniteLossError(
                f"Loss became NaN or infinite at iteration {getattr(self, 'iter', '?')}: {terms}"
                + (f" (finite: {finite})" if finite else "") + ". Training stopped before the "
                "optimizer step, so the weights are still finite. --resume would restore the "
                "checkpoint's learning-rate schedule and diverge again: instead start a new run "
                "from the last checkpoint, MODEL.WEIGHTS <OUTPUT_DIR>/<the file last_checkpoint "
                "names> without --resume and with another OUTPUT_DIR, with a lower "
                "SOLVER.BASE_LR or a longer warm-up (SOLVER.WARMUP_EPOCHS); or check the inputs "
                "of that branch."
            )
        return original(self, loss_dict, data_time, *args, **kwargs)

    train_loop.SimpleTrainer._write_metrics = _write_metrics


@_fix
def cpu_without_cuda():
    # fastreid/engine/defaults.py, modeling/meta_arch/build.py: MODEL.DEVICE defaults to "cuda"
    # and build_model moves the model there -> `RuntimeError: Found no NVIDIA driver` (or "Torch
    # not compiled with CUDA") for every fast-reid script on a machine without a GPU.
    # default_setup now sets MODEL.DEVICE cpu there (in place, before it logs and saves the
    # config), and build_model builds on the CPU (for scripts that skip default_setup: the
    # predictor, the ONNX export); each says so in one log line.
    import fastreid.engine.defaults as defaults
    from fastreid.modeling.meta_arch import build as meta_build

    from .config import fall_back_to_cpu

    fastreid_log = logging.getLogger("fastreid")
    orig_setup, orig_build = defaults.default_setup, meta_build.build_model

    @functools.wraps(orig_setup)
    def default_setup(cfg, args):
        device = fall_back_to_cpu(cfg, log=False)
        out = orig_setup(cfg, args)  # sets up fast-reid's logger: the line goes to log.txt too
        if device is not None:
            fastreid_log.info(f"No CUDA GPU is visible to torch: MODEL.DEVICE {device} -> cpu.")
        return out

    @functools.wraps(orig_build)
    def build_model(cfg):
        if str(cfg.MODEL.DEVICE).startswith("cuda") and not _cuda():
            cfg = cfg.clone()
            fall_back_to_cpu(cfg, log=fastreid_log)
        return orig_build(cfg)

    for name, mod in list(sys.modules.items()):  # every fastreid module that imported them
        if name.split(".")[0] in ("fastreid", __name__.split(".")[0]) and mod is not None:
            for attr, old, new in (("default_setup", orig_setup, default_setup),
                                   ("build_model", orig_build, build_model)):
                if getattr(mod, attr, None) is old:
                    setattr(mod, attr, new)


def per_dataset_results(results, test_sets):
    """An evaluation's results as ``{dataset: {metric: value}}`` whatever the number of test
    sets: fast-reid's ``DefaultTrainer.test`` returns one set's metrics directly
    (``{"Rank-1": ..}``) and several as ``{dataset: {metric: ..}}``.  ``test_sets``:
    cfg.DATASETS.TESTS.  Results it cannot name a set for are returned unchanged."""
    if not results or len(test_sets) != 1:
        return results
    if all(isinstance(v, collections.abc.Mapping) for v in results.values()):
        return results
    return {test_sets[0]: results}


def put_eval_results(storage, results, test_sets):
    """Put an evaluation's results into fast-reid's EventStorage at its current iteration, as
    ``<dataset>/<metric>`` scalars (``Market1501/Rank-1``), the keys EvalHook uses."""
    from fastreid.evaluation.testing import flatten_results_dict

    flat = flatten_results_dict(per_dataset_results(results, tuple(test_sets)) or {})
    storage.put_scalars(**{k: float(v) for k, v in flat.items()}, smoothing_hint=False)


@_fix
def eval_results_per_dataset():
    # fastreid/engine/hooks.py: EvalHook puts one test set's results as `Rank-1`, `mAP` ... and
    # several sets' as `Market1501/Rank-1` ..., so a curve's key changes with DATASETS.TESTS.
    # Every evaluation's scalars are now `<dataset>/<metric>`; PeriodicCheckpointer (model_best)
    # reads `<first test set>/metric` accordingly.
    from fastreid.engine import hooks

    orig_init = hooks.EvalHook.__init__

    def __init__(self, eval_period, eval_function):
        def per_dataset():
            cfg = getattr(getattr(self, "trainer", None), "cfg", None)
            tests = tuple(cfg.DATASETS.TESTS) if cfg is not None else ()
            return per_dataset_results(eval_function(), tests)

        orig_init(self, eval_period, per_dataset)  # (after_train deletes it: no cycle left)

    orig_before_train = hooks.PeriodicCheckpointer.before_train

    def before_train(self):
        orig_before_train(self)
        self.metric_name = f"{self.trainer.cfg.DATASETS.TESTS[0]}/metric"

    hooks.EvalHook.__init__ = __init__
    hooks.PeriodicCheckpointer.before_train = before_train


@_fix
def eval_results_written():
    # fastreid/engine/hooks.py: EvalHook puts its results in after_epoch, at the epoch's last
    # iteration, which PeriodicWriter has written in after_step already when its period divides
    # it (and always for the last iteration); JSONWriter and TensorboardXWriter skip scalars of
    # an iteration they have written -> the accuracy is missing from metrics.json and
    # TensorBoard.  The evaluation after_train runs (EVAL_PERIOD not dividing MAX_EPOCH) is never
    # written: PeriodicWriter.after_train only closes the writers.  An epoch's last iteration is
    # now written in after_epoch (after the evaluation, as the hooks are ordered), and
    # after_train writes once more before closing.
    from fastreid.engine import hooks

    writer = hooks.PeriodicWriter
    orig_after_step, orig_after_train = writer.after_step, writer.after_train

    def after_step(self):
        per_epoch = getattr(self.trainer, "iters_per_epoch", 0)
        if per_epoch and (self.trainer.iter + 1) % per_epoch == 0:
            return  # after_epoch writes this iteration, with the evaluation results
        orig_after_step(self)

    def after_train(self):
        try:
            for w in self._writers:
                w.write()
        except Exception:  # noqa: BLE001  (never mask the error that ended the training)
            logger.warning("Writing the last metrics failed.", exc_info=True)
        orig_after_train(self)

    writer.after_step, writer.after_train = after_step, after_train


class _LoaderError:
    def __init__(self, exc):
        self.exc = exc


@_fix
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


def apply():
    """Apply every fix once (idempotent). Called by ``import gltrans_plugin``."""
    require_fastreid()
    skip = set(filter(None, os.environ.get("GLTRANS_COMPAT_SKIP", "").split(",")))  # debugging
    for f in _FIXES:
        if f.__name__ not in APPLIED and f.__name__ not in skip:
            f()
            APPLIED.append(f.__name__)
    return list(APPLIED)
