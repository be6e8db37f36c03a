"""Device choices follow cfg.MODEL.DEVICE, visible on CPU: where loaders put batches (pinned
memory, copy stream and non_blocking copies only for a CUDA model), the launch backend, the
GradScaler per model device, cudnn.benchmark, the evaluator's full-fp32 products, the flip test,
and the torch versions the package admits (2.11 on the GPU machines, 2.14.1 here)."""
import argparse
import configparser
import os

import pytest
import torch

from gltrans_plugin import devices

from helpers import resnet_cfg
from helpers import check_amp_steps, check_flip

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_loader_on_cpu_model_stays_on_cpu_where_cuda_exists(monkeypatch):
    from fastreid.data.data_utils import DataLoaderX

    monkeypatch.setattr(devices, "cuda_available", lambda: True)  # a machine with a GPU ...
    with devices.loader_device("cpu"):  # ... and a MODEL.DEVICE cpu model
        assert not devices.loader_uses_cuda()
        loader = DataLoaderX(0, dataset=[{"x": torch.ones(2)} for _ in range(4)], batch_size=2,
                             pin_memory=True)
    assert not loader.uses_cuda
    assert loader.stream is None and not loader.pin_memory  # no copy stream, nothing pinned
    monkeypatch.setattr(devices, "cuda_available", lambda: torch.cuda.is_available())
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["x"].device.type == "cpu"
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    with devices.loader_device("cuda"):
        assert devices.loader_uses_cuda()
    assert devices.loader_uses_cuda()  # outside any block: fast-reid's rule, CUDA where there is
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    with devices.loader_device("cuda"):
        assert not devices.loader_uses_cuda()


def test_trainer_loaders_follow_the_model_device(tiny_market, tmp_path, monkeypatch):
    from gltrans_plugin.engine import Trainer

    cfg = resnet_cfg(tiny_market, str(tmp_path))
    assert cfg.MODEL.DEVICE == "cpu" or torch.cuda.is_available()
    monkeypatch.setattr(devices, "cuda_available", lambda: True)  # a GPU machine, a CPU model
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    loader, _ = Trainer.build_test_loader(cfg, "Market1501")
    assert not loader.uses_cuda and loader.stream is None


def test_trainer_honours_cudnn_benchmark(tiny_market, tmp_path):
    from gltrans_plugin.engine import Trainer

    old = torch.backends.cudnn.benchmark
    try:
        for flag in (True, False):
            cfg = resnet_cfg(tiny_market, str(tmp_path / str(flag)), CUDNN_BENCHMARK=flag)
            torch.backends.cudnn.benchmark = not flag
            trainer = Trainer(cfg)
            trainer.stop_train_stream()
            assert torch.backends.cudnn.benchmark is flag
    finally:
        torch.backends.cudnn.benchmark = old


def _ns(*opts):
    return argparse.Namespace(config_file="", opts=list(opts))


def test_launch_backend_follows_model_device(monkeypatch):
    import torch.distributed as dist

    from gltrans_plugin import distributed

    assert distributed.launch_device((_ns("MODEL.DEVICE", "cpu"),)) == "cpu"
    assert distributed.launch_device(()) is None
    assert distributed.launch_device((_ns("NO.SUCH.KEY", "1"),)) is None  # the worker reports it
    seen = []

    class Stop(Exception):
        pass

    def init_process_group(backend, **kw):
        seen.append(backend)
        raise Stop

    monkeypatch.setattr(distributed, "die_with_launcher", lambda: "")
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(devices, "cuda_available", lambda: True)  # a GPU machine ...
    monkeypatch.setattr(distributed, "launch_device", lambda args: "cpu")  # ... a CPU run: gloo
    with pytest.raises(Stop):
        distributed.distributed_worker(0, print, 2, 2, 0, "tcp://127.0.0.1:1", ())
    monkeypatch.setattr(distributed, "launch_device", lambda args: "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # (two GPUs) ...
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)  # ... pretended
    with pytest.raises(Stop):
        distributed.distributed_worker(0, print, 2, 2, 0, "tcp://127.0.0.1:1", ())
    assert seen == ["gloo", "nccl"]


@pytest.mark.parametrize("dtype", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_amp_step_and_grad_scaler_on_cpu(dtype):  # (fp16 autocast is slow on CPU: ~20 s)
    """The AMP trainer's step on CPU: the scaler is made for the model's device (CPU) and is
    used for fp16 (gradients scaled, no underflow) but not for bf16."""
    check_amp_steps("cpu", dtype, size=(64, 32), b=8)


def test_grad_scaler_device_is_the_models():
    from fastreid.engine.train_loop import AMPTrainer

    model = torch.nn.Linear(2, 2)
    trainer = AMPTrainer(model, [{}], torch.optim.SGD(model.parameters(), lr=0.1), None)
    assert trainer.grad_scaler._device == "cpu" and trainer.grad_scaler.is_enabled()


def test_flip_test_on_cpu():
    check_flip("cpu", size=(64, 32))


def test_evaluator_products_in_full_fp32():
    from gltrans_plugin.evaluation.ranking import full_fp32_matmul

    mm = torch.backends.cuda.matmul
    old = mm.fp32_precision
    try:
        mm.fp32_precision = "tf32"  # a caller that allows TF32 (the current API)
        with full_fp32_matmul("cpu"):
            assert mm.fp32_precision == "tf32"  # CPU: nothing to change
        with full_fp32_matmul("cuda"):
            assert mm.fp32_precision == "ieee"
        assert mm.fp32_precision == "tf32"  # the caller's setting is restored
    finally:
        mm.fp32_precision = old


def test_supported_torch_versions_include_the_gpu_machines():
    from packaging.requirements import Requirement
    from packaging.version import Version

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    reqs = [Requirement(line) for line in cfg["options"]["install_requires"].split("\n")
            if line.strip() and not line.strip().startswith("#")]
    torch_req = next(r for r in reqs if r.name == "torch")
    for v in ("2.11.0", "2.14.1", Version(torch.__version__).base_version):
        assert torch_req.specifier.contains(v), (v, str(torch_req.specifier))
    markers = cfg["tool:pytest"]["markers"]
    assert "cuda:" in markers
