"""Shared test helpers (fixtures live in conftest.py): a tiny Market-1501 folder, config key
setters, and the config builders, one per meaning:

* ``gltrans_cfg``: the shipped GLTrans recipe (Base-GLTrans.yml) with a ViT-tiny backbone,
  for building a model in a test (no data, no training);
* ``gltrans_small_cfg``: the synthetic demo config shrunk, for a training or a trainer set-up
  (any dataset: pass DATASETS.NAMES for the tiny Market-1501 folder);
* ``resnet_cfg``: fast-reid's Baseline (ResNet-18) on the tiny Market-1501 folder.
"""
import os

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml")
BASE_CONFIG = os.path.join(REPO, "configs", "GLTrans", "Base-GLTrans.yml")


def write_tiny_market(root, *, train_ids=8, test_ids=6, cams=3, size=(64, 32), seed=0):
    """A tiny Market-1501 layout of coloured-noise images (identity = base colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base_dir = os.path.join(root, "Market-1501-v15.09.15")
    splits = [("bounding_box_train", range(1, train_ids + 1)),
              ("query", range(100, 100 + test_ids)),
              ("bounding_box_test", range(100, 100 + test_ids))]
    colours = {}
    for split, ids in splits:
        os.makedirs(os.path.join(base_dir, split), exist_ok=True)
        for pid in ids:
            colour = colours.setdefault(pid, rng.integers(0, 255, 3))
            for cam in range(1, cams + 1):
                if (split == "query") != (cam == 1):
                    continue  # query: camera 1 only; gallery: the other cameras
                for k in range(1 if split == "query" else 2):
                    img = np.clip(colour + rng.normal(0, 40, (*size, 3)), 0, 255).astype(np.uint8)
                    name = f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg"
                    Image.fromarray(img).save(os.path.join(base_dir, split, name))
    return root


def opts_list(opts):
    """{"KEY": value} -> fast-reid's command-line form ["KEY", "value", ...]."""
    flat = []
    for k, v in opts.items():
        flat += [k, v if isinstance(v, str) else repr(v)]
    return flat


def set_keys(cfg, opts):
    """Set dotted config keys ({"MODEL.BACKBONE.DEPTH": "tiny"}) on ``cfg`` as given (no
    yacs type coercion); returns ``cfg``."""
    for k, v in opts.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def gltrans_cfg(device="cpu", size=(128, 64), num_classes=8, **opts):
    """The shipped GLTrans recipe (Base-GLTrans.yml) with a ViT-tiny backbone (D = 192, random
    init, no drop path, 3 cameras) on ``device`` at input ``size``; ``opts``: dotted keys set as
    given (``set_keys``)."""
    from fastreid.config import get_cfg

    from gltrans_plugin.config import add_gltrans_config

    cfg = add_gltrans_config(get_cfg())
    cfg.merge_from_file(BASE_CONFIG)
    cfg.MODEL.BACKBONE.DEPTH = "tiny"
    cfg.MODEL.BACKBONE.FEAT_DIM = 192
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.NUM_CAMERAS = 3
    cfg.MODEL.BACKBONE.DROP_PATH_RATIO = 0.0
    cfg.MODEL.HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = device
    cfg.INPUT.SIZE_TRAIN = list(size)
    cfg.INPUT.SIZE_TEST = list(size)
    return set_keys(cfg, opts)


def resnet_cfg(root, output_dir, **overrides):
    """A small fast-reid Baseline (ResNet-18) config on the tiny Market-1501 layout."""
    from gltrans_plugin.config import setup_cfg

    opts = {
        "MODEL.META_ARCHITECTURE": "Baseline",
        "MODEL.BACKBONE.NAME": "build_resnet_backbone", "MODEL.BACKBONE.DEPTH": "18x",
        "MODEL.BACKBONE.FEAT_DIM": 512, "MODEL.BACKBONE.PRETRAIN": False,
        "MODEL.HEADS.NAME": "EmbeddingHead", "MODEL.HEADS.WITH_BNNECK": True,
        "MODEL.HEADS.POOL_LAYER": "GlobalAvgPool", "MODEL.HEADS.NECK_FEAT": "before",
        "MODEL.LOSSES.NAME": ("CrossEntropyLoss",),
        "INPUT.SIZE_TRAIN": [64, 32], "INPUT.SIZE_TEST": [64, 32],
        "DATASETS.NAMES": ("Market1501",), "DATASETS.TESTS": ("Market1501",),
        "DATASETS.ROOT": root, "DATALOADER.SAMPLER_TRAIN": "NaiveIdentitySampler",
        "DATALOADER.NUM_INSTANCE": 2, "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.OPT": "SGD", "SOLVER.BASE_LR": 0.05, "SOLVER.MAX_EPOCH": 2,
        "SOLVER.IMS_PER_BATCH": 8, "SOLVER.SCHED": "CosineAnnealingLR",
        "SOLVER.WARMUP_ITERS": 0, "SOLVER.CHECKPOINT_PERIOD": 1, "SOLVER.LOG_PERIOD": 1,
        "TEST.EVAL_PERIOD": 2, "TEST.IMS_PER_BATCH": 16, "TEST.EVALUATOR": "fastreid",
        "OUTPUT_DIR": output_dir, "SEED": 0,
    }
    opts.update(overrides)
    return setup_cfg("", opts_list(opts))




def gltrans_small_cfg(root, output_dir, **overrides):
    """The shipped synthetic demo config, shrunk: 64x32 images, a small synthetic set."""
    from gltrans_plugin.config import setup_cfg

    opts = {
        "DATASETS.ROOT": root, "OUTPUT_DIR": output_dir,
        "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 16, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 16,
        "DATASETS.SYNTHETIC.NUM_CAMERAS": 3, "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM": 3,
        "DATASETS.SYNTHETIC.HEIGHT": 64, "DATASETS.SYNTHETIC.WIDTH": 32,
        "INPUT.SIZE_TRAIN": [64, 32], "INPUT.SIZE_TEST": [64, 32], "INPUT.PADDING.SIZE": 2,
        "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 16, "SOLVER.LOG_PERIOD": 10,
        "TEST.EVAL_BEFORE_TRAIN": False, "SOLVER.MAX_EPOCH": 2, "TEST.EVAL_PERIOD": 2,
        "SOLVER.CHECKPOINT_PERIOD": 1,
        "SOLVER.WARMUP_EPOCHS": 1,  # the demo warms up for 5 of 24 epochs; these runs are short
    }
    opts.update(overrides)
    return setup_cfg(DEMO_CONFIG, opts_list(opts))


class NaNLossModel(torch.nn.Module):
    """Two branch losses; the second is NaN at call ``bad_at`` (0-based)."""

    def __init__(self, bad_at):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.calls, self.bad_at = 0, bad_at

    def forward(self, data):
        out = self.lin(data["x"]).float().mean()
        bad = torch.tensor(float("nan") if self.calls == self.bad_at else 0.0)
        self.calls += 1
        return {"loss_ce_global": out ** 2, "loss_triplet_local": out.abs() * 0 + bad}


# ------------------------------------------------ GLTrans steps on a device (CPU and CUDA tests)
def make_batch(device, b=16, size=(128, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"images": torch.rand(b, 3, *size, generator=g) * 255,
           "targets": torch.arange(b) // 4 % 8, "camids": torch.arange(b) % 3}
    return {k: v.to(device) for k, v in out.items()}


def amp_steps(device, dtype, steps=3, size=(128, 64), b=16):
    """``steps`` training steps of fast-reid's AMPTrainer (the plugin's run_step) with
    SOLVER.AMP.DTYPE ``dtype``; returns (total losses, max weight change, trainer, the
    GradScaler's scale after each step)."""
    from fastreid.engine.train_loop import AMPTrainer
    from fastreid.modeling.meta_arch import build_model
    from fastreid.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(gltrans_cfg(device, size)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [make_batch(device, b, size, seed=i) for i in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = AMPTrainer(model, batches, opt, None)
    trainer.amp_dtype = dtype
    losses, scales = [], [trainer.grad_scaler.get_scale()]
    with EventStorage(0) as storage:
        for i in range(steps):
            trainer.iter = storage.iter = i
            trainer.run_step()
            losses.append(storage.history("total_loss").latest())
            scales.append(trainer.grad_scaler.get_scale())
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    return losses, moved, trainer, scales


def check_amp_steps(device, dtype, **kw):
    losses, moved, trainer, scales = amp_steps(device, dtype, **kw)
    assert all(np.isfinite(losses)), losses
    assert moved > 0, "no weight moved"
    assert trainer.grad_scaler.is_enabled()
    return losses, scales


def check_flip(device, size=(128, 64)):
    """flip_features on ``device``: mean of the raw and the flipped pass, inputs untouched."""
    from fastreid.modeling.meta_arch import build_model

    from gltrans_plugin.evaluation.inference import flip_features

    torch.manual_seed(0)
    model = build_model(gltrans_cfg(device, size)).eval()
    inputs = make_batch(device, b=4, size=size)
    raw = inputs["images"].clone()
    with torch.no_grad():
        got = flip_features(model, inputs, flip_test=True)
        a = model({**inputs, "images": raw.clone()})
        b = model({**inputs, "images": raw.flip(dims=[3])})
    assert torch.equal(inputs["images"], raw), "the flip test changed its inputs"
    torch.testing.assert_close(got, (a + b) / 2, atol=1e-5, rtol=1e-5)
    return model, inputs, got
