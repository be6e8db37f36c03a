"""Runtime patches of fast-reid's engine: AMP and DDP on the CPU, the launcher on gloo without a
GPU, a finished run resumed, non-finite losses stopping every rank, the CPU where there is no
GPU, and fast-reid's DefaultTrainer filling the camera count from the data."""
import functools
import logging
import sys

from ..compat import fix
from ..devices import cuda_available

logger = logging.getLogger(__name__)


@fix
def amp_on_cpu():
    # fastreid/engine/train_loop.py: AMPTrainer.run_step asserts CUDA and uses the deprecated
    # torch.cuda.amp API.  Use torch.autocast on the model's device with the dtype of
    # SOLVER.AMP.DTYPE (``devices.amp_dtype``: "auto" = bf16 where the device supports it, else
    # fp16), which fast-reid's DefaultTrainer now gives its AMPTrainer; a GradScaler made for the
    # model's device, used for fp16 only.
    import time
    import torch
    from fastreid.engine import train_loop
    from fastreid.engine.defaults import DefaultTrainer

    from ..devices import amp_dtype

    def run_step(self):
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        device = next(self.model.parameters()).device
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        dtype = amp_dtype(self.amp_dtype, device)
        with torch.autocast(device_type=device.type, dtype=dtype):
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

    def __init__(self, model, data_loader, optimizer, param_wrapper, grad_scaler=None,
                 amp_dtype="auto"):
        if grad_scaler is None:  # torch.cuda.amp.GradScaler is deprecated and warns on CPU
            device = next(model.parameters()).device.type  # (DDP forwards .parameters())
            grad_scaler = torch.amp.GradScaler(device, enabled=device in ("cuda", "cpu"))
        orig_init(self, model, data_loader, optimizer, param_wrapper, grad_scaler)
        self.amp_dtype = amp_dtype  # SOLVER.AMP.DTYPE

    trainer_init = DefaultTrainer.__init__

    def trainer_with_amp_dtype(self, cfg):
        trainer_init(self, cfg)
        if isinstance(self._trainer, train_loop.AMPTrainer):
            self._trainer.amp_dtype = cfg.SOLVER.AMP.DTYPE

    train_loop.AMPTrainer.run_step = run_step
    train_loop.AMPTrainer.__init__ = __init__
    DefaultTrainer.__init__ = functools.wraps(trainer_init)(trainer_with_amp_dtype)


@fix
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


@fix
def launch_gloo_on_cpu():
    # fastreid/engine/launch.py: _distributed_worker asserts CUDA and hard-codes the NCCL
    # backend -> `--num-gpus 2` cannot run on CPU.  Same worker, gloo when there is no GPU.
    import importlib

    from ..distributed import distributed_worker

    # (`fastreid.engine.launch` the attribute is the function; the module is in sys.modules)
    importlib.import_module("fastreid.engine.launch")._distributed_worker = distributed_worker


@fix
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


@fix
def nonfinite_loss_stops():
    # fastreid/engine/train_loop.py: SimpleTrainer._write_metrics (called after backward, before
    # optimizer.step) checks the losses on rank 0 only, after averaging, and prints the whole
    # dict.  Now every rank checks its own losses first, the ranks agree (one all-reduce of a
    # flag), and all stop together with NonFiniteLossError naming the iteration, the bad loss
    # keys (one per branch) and the rank -- before the step, so the weights stay finite.
    import torch
    from fastreid.engine import train_loop
    from fastreid.utils import comm

    from ..errors import NonFiniteLossError, nan_advice

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
            facts = (f"Loss became NaN or infinite at iteration {getattr(self, 'iter', '?')}: "
                     f"{terms}" + (f" (finite: {finite})" if finite else "") + ". Training "
                     "stopped before the optimizer step, so the weights are still finite.")
            err = NonFiniteLossError(facts + " " + nan_advice(None))
            err.facts = facts  # the plugin's trainer adds advice from its OUTPUT_DIR's state
            raise err
        return original(self, loss_dict, data_time, *args, **kwargs)

    train_loop.SimpleTrainer._write_metrics = _write_metrics


@fix
def cpu_without_cuda():
    # fastreid/engine/defaults.py, modeling/meta_arch/build.py: MODEL.DEVICE defaults to "cuda"
    # and build_model moves the model there -> `RuntimeError: Found no NVIDIA driver` (or "Torch
    # not compiled with CUDA") for every fast-reid script on a machine without a GPU.
    # default_setup now sets MODEL.DEVICE cpu there (in place, before it logs and saves the
    # config), and build_model builds on the CPU (for scripts that skip default_setup: the
    # predictor, the ONNX export); each says so in one log line.
    import fastreid.engine.defaults as defaults
    from fastreid.modeling.meta_arch import build as meta_build

    from ..devices import fall_back_to_cpu

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
        if str(cfg.MODEL.DEVICE).startswith("cuda") and not cuda_available():
            cfg = cfg.clone()
            fall_back_to_cpu(cfg, log=fastreid_log)
        return orig_build(cfg)

    for name, mod in list(sys.modules.items()):  # every fastreid module that imported them
        if name.split(".")[0] in ("fastreid", __name__.split(".")[0]) and mod is not None:
            for attr, old, new in (("default_setup", orig_setup, default_setup),
                                   ("build_model", orig_build, build_model)):
                if getattr(mod, attr, None) is old:
                    setattr(mod, attr, new)


@fix
def default_trainer_fills_cameras():
    # fastreid/engine/defaults.py: DefaultTrainer.auto_scale_hyperparams fills only
    # MODEL.HEADS.NUM_CLASSES, so a GLTrans config's MODEL.BACKBONE.NUM_CAMERAS 0 ("from the
    # data") builds a model without camera rows and the first batch fails on its camera ids.
    # The camera count (and, for a model with view SIE, the view count) now comes from the
    # training data first (data.build.fill_num_cameras, data.veri.fill_num_views).
    from fastreid.engine.defaults import DefaultTrainer

    from ..data.build import fill_num_cameras
    from ..data.veri import fill_num_views

    original = DefaultTrainer.auto_scale_hyperparams

    def auto_scale_hyperparams(cfg, num_classes):
        return original(fill_num_views(fill_num_cameras(cfg)), num_classes)

    DefaultTrainer.auto_scale_hyperparams = staticmethod(auto_scale_hyperparams)
