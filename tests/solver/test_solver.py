"""The learning-rate schedule (gltrans_plugin/solver.py) and the first SGD step of the
released-code preset, against the released rule as read from the authors' code.

The released rule, written here from AWangYQ/GLTrans (train.py, processor/processor.py,
configs/MSMT17/GLTrans.yml, config/defaults.py) and the TransReID solver it keeps
(solver/make_optimizer.py, solver/scheduler_factory.py, solver/cosine_lr.py):
- every trainable parameter is its own group: lr = BASE_LR x BIAS_LR_FACTOR and weight decay
  WEIGHT_DECAY_BIAS when "bias" is in its name, else BASE_LR and WEIGHT_DECAY; SGD, momentum 0.9;
- ``scheduler.step(epoch)`` at the start of every epoch, ``epoch`` = 1 .. MAX_EPOCHS, on a cosine
  with t_initial = MAX_EPOCHS, lr_min = 0.002 x BASE_LR, warmup_lr_init = 0.01 x BASE_LR,
  warmup_t = WARMUP_EPOCHS, cycle_limit 1: epoch e trains at ``init + e (lr_g - init) / W``
  when e < W, else ``lr_min + (lr_g - lr_min)(1 + cos(pi e / T)) / 2`` (lr_min once e = T);
  init and lr_min are absolute, the same for every group.

The schedules are driven by fast-reid's own training loop (``TrainerBase.train``) and its
``LRScheduler`` hook, with the trainer's ``warmup_iters`` from ``solver.hook_warmup_iters``.
"""
import io
import math
import os
import warnings

import pytest
import torch
from fastreid.engine import hooks
from fastreid.engine.train_loop import SimpleTrainer, TrainerBase
from fastreid.modeling.meta_arch import build_model
from fastreid.solver import build_lr_scheduler as fastreid_build_lr_scheduler

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin import solver
from gltrans_plugin.config import setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASED = os.path.join(ROOT, "configs", "GLTrans", "msmt17_released_code.yml")
PAPER = os.path.join(ROOT, "configs", "GLTrans", "msmt17.yml")

# The authors' values: configs/MSMT17/GLTrans.yml (BASE_LR, BIAS_LR_FACTOR, the decays,
# MAX_EPOCHS), config/defaults.py (WARMUP_EPOCHS 5, MOMENTUM 0.9), scheduler_factory.py (the
# 0.01 / 0.002 factors).
LR, BIAS_FACTOR, WD, WD_BIAS, MOMENTUM = 0.008, 2.0, 1e-4, 1e-4, 0.9
EPOCHS, WARMUP = 200, 5
INIT, FLOOR = 0.01 * LR, 0.002 * LR

# A tiny real GLTrans (ViT tiny, 64 x 32 images, stride 16: a 4 x 2 grid) on the preset, with
# nothing random in its forward pass.
TINY = ["MODEL.BACKBONE.DEPTH", "tiny", "MODEL.BACKBONE.FEAT_DIM", "192",
        "MODEL.BACKBONE.STRIDE_SIZE", "(16, 16)", "MODEL.BACKBONE.NUM_CAMERAS", "3",
        "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.DROP_PATH_RATIO", "0.0",
        "MODEL.BACKBONE.DROP_RATIO", "0.0", "MODEL.BACKBONE.ATT_DROP_RATE", "0.0",
        "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
        "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "False"]


def released_group_lr(name):
    return LR * BIAS_FACTOR if "bias" in name else LR


def released_lr(group_lr, epoch):
    """The learning rate of a group whose base lr is ``group_lr`` in epoch ``epoch`` (from 1)."""
    if epoch < WARMUP:
        return INIT + epoch * (group_lr - INIT) / WARMUP
    if epoch >= EPOCHS:
        return FLOOR
    return FLOOR + 0.5 * (group_lr - FLOOR) * (1 + math.cos(math.pi * epoch / EPOCHS))


def drive(cfg, optimizer, scheduler, iters_per_epoch, warmup_iters, start_epoch=0):
    """fast-reid's loop with its LRScheduler hook only: the lr of every group at every
    iteration (one row per iteration, from ``start_epoch`` to SOLVER.MAX_EPOCH)."""
    rows = []

    class LRTrace(TrainerBase):
        def run_step(self):
            rows.append([g["lr"] for g in optimizer.param_groups])

    trainer = LRTrace()
    trainer.warmup_iters, trainer.delay_epochs = warmup_iters, cfg.SOLVER.DELAY_EPOCHS
    trainer.grad_scaler = None
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    with warnings.catch_warnings():  # torch: "lr_scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore", UserWarning)
        trainer.train(start_epoch, cfg.SOLVER.MAX_EPOCH, iters_per_epoch)
    return rows


def one_group_optimizer(cfg):
    p = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [p], "lr": cfg.SOLVER.BASE_LR}], lr=cfg.SOLVER.BASE_LR)


def tiny_model(seed=0):
    cfg = setup_cfg(RELEASED, TINY)
    torch.manual_seed(seed)
    return cfg, build_model(cfg)


def plugin_optimizer(cfg, model):
    from gltrans_plugin.engine import Trainer

    optimizer, _ = Trainer.build_optimizer(cfg, model)
    return optimizer


@pytest.fixture(scope="module")
def released_model():
    return tiny_model()


@pytest.fixture
def one_thread():
    """One intra-op thread: the same float32 sums every run, and no thread hand-offs for the
    many small element-wise checks (measured 1.2 s of CPU with one thread, 14 s with two on a
    busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_released_preset_has_the_authors_solver():
    s = setup_cfg(RELEASED, []).SOLVER
    assert s.SCHED_STYLE == "released" and setup_cfg(PAPER, []).SOLVER.SCHED_STYLE == "paper"
    assert (s.OPT, s.BASE_LR, s.BIAS_LR_FACTOR, s.MOMENTUM, s.NESTEROV) == (
        "SGD", LR, BIAS_FACTOR, MOMENTUM, False)
    assert (s.MAX_EPOCH, s.WARMUP_EPOCHS, s.DELAY_EPOCHS) == (EPOCHS, WARMUP, 0)
    assert s.WARMUP_FACTOR * s.BASE_LR == pytest.approx(INIT, rel=1e-12)
    assert s.ETA_MIN_LR == pytest.approx(FLOOR, rel=1e-12)


# ----------------------------------------------------------------------------- 1. schedule
def test_released_schedule_every_group_every_epoch(released_model):
    """Every parameter group of the tiny GLTrans, every iteration of a 200-epoch run (2 per
    epoch): the group's released-rule lr of the epoch, constant within the epoch."""
    cfg, model = released_model
    optimizer = plugin_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    group_lrs = [released_group_lr(names[id(g["params"][0])]) for g in optimizer.param_groups]
    assert {LR, LR * BIAS_FACTOR} == set(group_lrs)
    ipe = 2
    scheduler = solver.build_lr_scheduler(cfg, optimizer, ipe)
    assert set(scheduler) == {"lr_sched"}
    rows = drive(cfg, optimizer, scheduler, ipe, solver.hook_warmup_iters(cfg, ipe))
    assert len(rows) == EPOCHS * ipe
    for i, row in enumerate(rows):
        epoch = i // ipe + 1
        want = [released_lr(lr, epoch) for lr in group_lrs]
        err = max(abs(a - b) / b for a, b in zip(row, want))
        assert err < 1e-12, f"epoch {epoch}: {row} != {want}"
    # the numbers the authors' log shows: epoch 1 at 0.208 x lr (biases 0.408 x lr), the last
    # epoch at the floor
    w, b = group_lrs.index(LR), group_lrs.index(LR * BIAS_FACTOR)
    assert rows[0][w] == pytest.approx(0.208 * LR) and rows[0][b] == pytest.approx(0.408 * LR)
    assert rows[-1][w] == rows[-1][b] == pytest.approx(FLOOR)


def test_released_schedule_resumes_from_a_checkpoint_state():
    """The scheduler's state goes through a weights-only checkpoint file; a run resumed at
    epoch 37 with a fresh optimizer continues with the same learning rates."""
    cfg, ipe = setup_cfg(RELEASED, []), 3
    opt = one_group_optimizer(cfg)
    full = drive(cfg, opt, solver.build_lr_scheduler(cfg, opt, ipe), ipe, 0)
    cut = setup_cfg(RELEASED, ["SOLVER.MAX_EPOCH", "37"])
    opt = one_group_optimizer(cfg)
    sched = solver.build_lr_scheduler(cfg, opt, ipe)
    drive(cut, opt, sched, ipe, 0)
    buf = io.BytesIO()
    torch.save(sched["lr_sched"].state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt = one_group_optimizer(cfg)
    resumed = solver.build_lr_scheduler(cfg, opt, ipe)
    resumed["lr_sched"].load_state_dict(state)
    assert drive(cfg, opt, resumed, ipe, 0, start_epoch=37) == full[37 * ipe:]
    # a checkpoint of the paper style (fast-reid's CosineAnnealingLR) cannot continue it
    paper = solver.build_lr_scheduler(setup_cfg(PAPER, []), one_group_optimizer(cfg), ipe)
    with pytest.raises(solver.SolverConfigError, match="resume with the SOLVER.SCHED_STYLE"):
        resumed["lr_sched"].load_state_dict(paper["lr_sched"].state_dict())


def test_paper_style_is_fast_reids_schedule_with_the_warmup_in_iterations():
    """The default style = fast-reid's build_lr_scheduler with WARMUP_ITERS = WARMUP_EPOCHS x
    iterations per epoch, stepped by its hook with that many warm-up iterations."""
    cfg, ipe = setup_cfg(PAPER, ["SOLVER.MAX_EPOCH", "40"]), 7
    assert solver.warmup_iters(cfg, ipe) == solver.hook_warmup_iters(cfg, ipe) == 35
    opt = one_group_optimizer(cfg)
    ours = drive(cfg, opt, solver.build_lr_scheduler(cfg, opt, ipe), ipe,
                 solver.hook_warmup_iters(cfg, ipe))
    ref_cfg = cfg.clone()
    ref_cfg.SOLVER.WARMUP_ITERS = 35
    opt = one_group_optimizer(cfg)
    ref = drive(ref_cfg, opt, fastreid_build_lr_scheduler(ref_cfg, opt, ipe), ipe, 35)
    assert ours == ref
    assert ours[0][0] == pytest.approx(0.01 * LR)  # per-iteration warm-up over 35 iterations
    assert ours[34][0] == pytest.approx(LR * (0.01 + 0.99 * 34 / 35))


def test_warmup_iterations():
    cfg = setup_cfg(PAPER, [])
    assert solver.warmup_iters(cfg, 509) == 2545
    cfg.SOLVER.WARMUP_EPOCHS = 0.01
    assert solver.warmup_iters(cfg, 10) == 1  # at least one iteration
    cfg.SOLVER.WARMUP_EPOCHS, cfg.SOLVER.WARMUP_ITERS = 0, 123
    assert solver.warmup_iters(cfg, 10) == solver.hook_warmup_iters(cfg, 10) == 123
    assert solver.hook_warmup_iters(setup_cfg(RELEASED, []), 509) == 0  # per-epoch warm-up


def test_largest_difference_between_the_styles():
    """The two styles over the preset's 200 epochs at MSMT17 train+val's 509 iterations per
    epoch (32,621 images / 64), as fractions of BASE_LR (numbers quoted in docs/training.md)."""
    ipe, trace = 509, {}
    for path in (PAPER, RELEASED):
        cfg = setup_cfg(path, [])
        opt = one_group_optimizer(cfg)
        rows = drive(cfg, opt, solver.build_lr_scheduler(cfg, opt, ipe), ipe,
                     solver.hook_warmup_iters(cfg, ipe))
        trace[path] = [r[0] / LR for r in rows]
    paper, released = trace[PAPER], trace[RELEASED]
    diff = [abs(a - b) for a, b in zip(paper, released)]
    assert max(diff) == pytest.approx(0.198) and diff.index(max(diff)) == 0  # first iteration
    mean = [[sum(t[e * ipe:(e + 1) * ipe]) / ipe for e in range(EPOCHS)]
            for t in (paper, released)]
    epoch_diff = [abs(a - b) for a, b in zip(*mean)]
    assert max(epoch_diff[:4]) == pytest.approx(0.0992, abs=1e-4)  # epochs 1-4 (epoch means)
    assert max(epoch_diff[5:]) == pytest.approx(0.0230, abs=1e-4)  # after the warm-up
    assert epoch_diff.index(max(epoch_diff[5:])) + 1 == 72
    assert sum(paper) / sum(released) == pytest.approx(1.0204, abs=1e-4)


def test_released_style_errors():
    cfg = setup_cfg(RELEASED, [])
    opt = one_group_optimizer(cfg)
    for key, value, match in (
        ("SCHED_STYLE", "cosine", r"unknown learning-rate schedule style 'cosine' "
                                  r"\(SOLVER.SCHED_STYLE\): use 'paper' or 'released'"),
        ("SCHED", "MultiStepLR", r"SOLVER.SCHED 'MultiStepLR' .*SOLVER.SCHED_STYLE paper"),
        ("DELAY_EPOCHS", 3, r"SOLVER.DELAY_EPOCHS 3 .* set SOLVER.DELAY_EPOCHS 0"),
        ("WARMUP_METHOD", "exp", r"WARMUP_METHOD 'exp' .* set SOLVER.WARMUP_METHOD linear"),
    ):
        bad = cfg.clone()
        bad.SOLVER[key] = value
        with pytest.raises(solver.SolverConfigError, match=match):
            solver.build_lr_scheduler(bad, opt, 10)


# ----------------------------------------------------------------------------- 2. groups
def test_optimizer_groups_follow_the_released_rule(released_model):
    """fast-reid's optimizer built for the released preset: every trainable parameter in one
    group whose lr and weight decay are TransReID make_optimizer's for that parameter name."""
    cfg, model = released_model
    optimizer = plugin_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for g in optimizer.param_groups:
        assert len(g["params"]) == 1
        name = names[id(g["params"][0])]
        seen.append(name)
        bias = "bias" in name
        assert g["lr"] == pytest.approx(LR * BIAS_FACTOR if bias else LR, rel=1e-12), name
        assert g["weight_decay"] == pytest.approx(WD_BIAS if bias else WD, rel=1e-12), name
        assert (g["momentum"], g["dampening"], g["nesterov"]) == (MOMENTUM, 0, False), name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)
    assert any("bias" in n for n in seen) and any("bias" not in n for n in seen)


# ----------------------------------------------------------------------------- 3. first step
EPS32, ULPS = torch.finfo(torch.float32).eps, 2


class _Record(hooks.HookBase):
    def before_train(self):
        self.before = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}

    def before_step(self):  # the learning rate each parameter's step uses
        self.lrs = {id(p): g["lr"] for g in self.trainer.optimizer.param_groups
                    for p in g["params"]}

    def after_step(self):  # the step's gradients (fast-reid zeroes them before the next one)
        self.grads = {n: p.grad.detach().clone() for n, p in self.trainer.model.named_parameters()
                      if p.grad is not None}


def test_first_sgd_step_follows_the_released_rule(one_thread):
    """Same weights, one fixed batch, no dropout / drop path / augmentation: the first step of
    fast-reid's SimpleTrainer with the plugin's optimizer and released scheduler moves every
    weight by -lr_g (grad + wd_g x w), the momentum buffer being grad + wd_g x w (the first
    step of torch's SGD, which the authors use).  Tolerance: float32 rounding, at most
    2 float32 epsilons of the terms' scale per element: |buf - d| <= 2 eps (|grad| + wd |w|),
    |w1 - want| <= 2 eps (|w| + lr (|grad| + wd |w|)); measured at most 0.83 eps."""
    cfg, model = tiny_model(seed=1)
    optimizer = plugin_optimizer(cfg, model)
    scheduler = solver.build_lr_scheduler(cfg, optimizer, 1)
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.rand(8, 3, 64, 32, generator=g) * 255,
             "targets": torch.arange(4).repeat_interleave(2), "camids": torch.arange(8) % 3}
    record = _Record()
    trainer = SimpleTrainer(model, [batch], optimizer, None)
    trainer.warmup_iters, trainer.delay_epochs = solver.hook_warmup_iters(cfg, 1), 0
    trainer.grad_scaler = None
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler), record])
    trainer.train(0, 1, 1)

    moved, worst = 0, 0.0  # worst: the largest weight error, in float32 epsilons of its scale
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bias = "bias" in name
        lr = released_lr(LR * BIAS_FACTOR if bias else LR, 1)  # epoch 1 of the released rule
        wd = WD_BIAS if bias else WD
        assert record.lrs[id(p)] == pytest.approx(lr, rel=1e-12), name
        w0, grad = record.before[name].double(), record.grads[name].double()
        d = grad + wd * w0  # decay added to the gradient; the first momentum buffer
        # float32 rounds d on its terms' scale and the new weight on w's
        scale_d = grad.abs() + wd * w0.abs()
        scale_w = w0.abs() + lr * scale_d
        buf = optimizer.state[p]["momentum_buffer"].double()
        err_d = float(((buf - d).abs() / scale_d.clamp_min(1e-30)).max())
        want = w0 - lr * d
        err_w = float(((p.detach().double() - want).abs() / scale_w.clamp_min(1e-30)).max())
        assert max(err_d, err_w) <= ULPS * EPS32, (name, err_d, err_w)
        worst = max(worst, err_w / EPS32)
        moved += int(not torch.equal(p.detach(), record.before[name]))
    assert moved == len(record.grads) > 200  # every parameter with a gradient moved
    assert worst <= ULPS  # measured: 0.83 eps
