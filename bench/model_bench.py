"""Model benchmark: GLTrans vs fast-reid's ViT baseline, side by side.

Contenders, at the same input size, batch and backbone size (stride-12 overlapping patches):

* ``vit``          fast-reid's ``Baseline`` + ``EmbeddingHead`` (BNNeck, linear classifier,
                   CE + soft-margin triplet) on our ViT (``build_gltrans_vit_backbone``: the same
                   blocks as GLTrans' backbone, last-layer class token).  Both models then share
                   one backbone implementation and differ only by GLTrans' heads.
* ``gltrans``      the GLTrans meta-architecture (``configs/GLTrans/Base-GLTrans.yml``: GAE, PTF,
                   GMA, 2 shared PTL layers, 5 branches, SIE on cameras).
* ``fastreid_vit`` (size ``base`` only) fast-reid's own ``build_vit_backbone('base')`` under the
                   same ``Baseline``: its attention is the unfused softmax(QK^T)V of 2021 timm.
                   fast-reid knows no ViT-tiny/small of these sizes ('small' is 8 x 768).

Reported for each: parameters; forward FLOPs per image (the project's counter,
``gltrans_plugin.analysis.flops``: fvcore with a handle for ``aten::scaled_dot_product_attention``,
which fvcore otherwise skips with a warning; per module; cross-checked against
``torch.utils.flop_counter.FlopCounterMode`` with attention run in the math backend, so that
counter sees plain matmuls and needs no attention formula at all); training-step FLOPs
(forward + backward, FlopCounterMode); training step time (forward,
backward and SGD step; median of N after warm-up, contenders interleaved A, B, A, B so load from
other processes hits both alike); inference images/s; peak memory (CPU: peak RSS of a
fresh subprocess per contender (VmHWM: ru_maxrss would inherit the parent's peak) and its
increase over the process before the model was built;
CUDA: ``torch.cuda.max_memory_allocated``); and GLTrans / baseline ratios, time against FLOPs.

FLOPs are counted as 2 per multiply-add (fvcore's MAC count x 2).

    python bench/model_bench.py                       # CPU: tiny, small, base; < 10 min, 2 cores
    python bench/model_bench.py --sizes tiny --amp bf16
    python bench/model_bench.py --device cuda         # ViT-B 256x128 batch 64 AMP, MFU
    python bench/model_bench.py --device cuda --amp fp16 --max-batch-gb 24

On CUDA the MFU is against the bf16 peak measured in the same run (a ``torch.mm`` of two
bf16 8192 x 8192 matrices, median of 10 after 3 warm-ups; ``--peak-tflops`` overrides), peak
memory is ``max_memory_allocated`` of each contender measured in-process after the timings
(its own model, optimizer and batch only), and ``--max-batch-gb G`` finds the largest training
batch of GLTrans whose peak stays within G GiB (fitted from batch 64 and 128, then run under
``set_per_process_memory_fraction``).  bench/gpu/check.py runs all of it on the GPU machine.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

import gltrans_plugin  # noqa: E402,F401  (compat first; registers the model)
from fastreid.config import get_cfg  # noqa: E402
from fastreid.modeling.meta_arch import build_model  # noqa: E402
from gltrans_plugin.analysis.flops import count_flops, counter_flops  # noqa: E402
from gltrans_plugin.config import add_gltrans_config  # noqa: E402

DIMS = {"tiny": 192, "small": 384, "base": 768}
NUM_CLASSES = 751  # Market-1501 training identities
NUM_CAMERAS = 6
MODULES = {  # report rows: label -> module name prefixes (fvcore / FlopCounterMode names)
    "gltrans": [("backbone", "backbone"), ("GAE", "heads.gae"), ("PTF", "heads.lmf.ptf"),
                ("GMA", "heads.lmf.gma"), ("PTL", "heads.lmf.ptl"), ("necks", "heads.necks")],
    "vit": [("backbone", "backbone"), ("necks", "heads")],
    "fastreid_vit": [("backbone", "backbone"), ("necks", "heads")],
}
# dense bf16 tensor-core peaks (FLOP/s), for MFU; --peak-tflops overrides.
GPU_PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12),
                 ("A100", 312e12), ("L40S", 362e12), ("RTX 4090", 165e12),
                 ("RTX 3090", 71e12), ("A10", 125e12)]


# ----------------------------------------------------------------------------- models
def make_cfg(name, size, img, compile_=False, grad_ckpt=False):
    cfg = add_gltrans_config(get_cfg())
    d = DIMS[size]
    if name == "gltrans":
        cfg.merge_from_file(os.path.join(REPO, "configs", "GLTrans", "Base-GLTrans.yml"))
        cfg.MODEL.BACKBONE.NUM_CAMERAS = NUM_CAMERAS
    else:
        cfg.MODEL.META_ARCHITECTURE = "Baseline"
        cfg.MODEL.BACKBONE.NAME = ("build_vit_backbone" if name == "fastreid_vit"
                                   else "build_gltrans_vit_backbone")
        cfg.MODEL.BACKBONE.SIE_CAMERA = False  # fast-reid's Baseline passes no camera ids
        cfg.MODEL.HEADS.NAME = "EmbeddingHead"
        cfg.MODEL.HEADS.POOL_LAYER = "Identity"  # the backbone returns B x D x 1 x 1
        cfg.MODEL.HEADS.WITH_BNNECK = True
        cfg.MODEL.HEADS.NECK_FEAT = "before"
        cfg.MODEL.HEADS.EMBEDDING_DIM = 0
        cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
        cfg.MODEL.LOSSES.TRI.MARGIN = 0.0  # soft margin, as GLTrans
        cfg.MODEL.LOSSES.TRI.HARD_MINING = True
        cfg.MODEL.LOSSES.CE.EPSILON = 0.0
        cfg.MODEL.PIXEL_MEAN = [127.5] * 3
        cfg.MODEL.PIXEL_STD = [127.5] * 3
        cfg.MODEL.BACKBONE.DROP_PATH_RATIO = 0.1
    cfg.MODEL.BACKBONE.DEPTH = size
    cfg.MODEL.BACKBONE.FEAT_DIM = d
    cfg.MODEL.BACKBONE.STRIDE_SIZE = (12, 12)
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.GRAD_CHECKPOINT = bool(grad_ckpt)
    cfg.MODEL.HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.SIZE_TRAIN = list(img)
    cfg.INPUT.SIZE_TEST = list(img)
    cfg.MODEL.DEVICE = "cpu"
    if compile_:
        cfg.MODEL.COMPILE = True  # read with cfg.MODEL.get("COMPILE", False)
    return cfg


def build(name, size, img, device, compile_=False, grad_ckpt=False):
    torch.manual_seed(0)
    model = build_model(make_cfg(name, size, img, compile_, grad_ckpt)).to(device)
    return model


def contenders_for(size, only=None):
    names = ["vit", "gltrans"] + (["fastreid_vit"] if size == "base" else [])
    return [n for n in names if not only or n in only]


def make_batch(batch, img, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *img, generator=g) * 255
    targets = torch.arange(batch) // 4  # P x K identity batches (K = 4)
    camids = torch.randint(0, NUM_CAMERAS, (batch,), generator=g)
    return images.to(device), targets.to(device), camids.to(device)


def inputs(images, targets, camids):
    # fast-reid's Baseline normalises the images in place: every call gets its own copy.
    return {"images": images.clone(), "targets": targets, "camids": camids}


def amp_dtype(amp):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


class Stepper:
    """One training step (forward, backward, SGD) and one inference batch of a model."""

    def __init__(self, model, device, amp):
        self.model, self.device, self.amp = model, device, amp
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16" and device == "cuda"))

    def autocast(self):
        return torch.autocast(self.device, dtype=amp_dtype(self.amp) or torch.float32,
                              enabled=self.amp in ("bf16", "fp16"))

    def train_step(self, batch):
        self.model.train()
        with self.autocast():
            losses = sum(self.model(inputs(*batch)).values())
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(losses).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return losses.detach()

    @torch.inference_mode()
    def infer(self, batch):
        self.model.eval()
        with self.autocast():
            return self.model(batch[0].clone())


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    """(wall seconds, process CPU seconds of all threads) of ``fn()``."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


# ----------------------------------------------------------------------------- FLOPs
def fvcore_flops(model, images):
    """Forward FLOPs (2 x MACs) of the eval forward (``analysis.flops.count_flops``): total,
    by module name (without the wrapper's ``model.``) and the ops fvcore skipped."""
    fca = count_flops(model, images)
    by_module = {k[len("model."):] if k.startswith("model.") else k: 2 * v
                 for k, v in fca.by_module().items()}
    return 2 * fca.total(), by_module, dict(fca.unsupported_ops())


def module_rows(name, by_module, prefix_root=""):
    """Sum module FLOPs into the report rows of ``MODULES[name]`` (names without a root)."""
    out = {}
    for label, prefix in MODULES[name]:
        key = prefix_root + prefix
        out[label] = by_module.get(key, 0)
    return out


def flop_report(name, model, batch_data, device, no_fvcore=False):
    """FLOPs per image; counted on the first (up to) 8 images: FLOPs per image do not depend
    on the batch size except in the losses' B x B distance matrices (negligible)."""
    batch_data = tuple(t[:8] for t in batch_data)
    images = batch_data[0]
    b = images.shape[0]
    if no_fvcore:
        fv_total, fv_mod, unsupported = float("nan"), {}, {}
    else:
        fv_total, fv_mod, unsupported = fvcore_flops(model, images)
    model.eval()
    with torch.no_grad():
        ct_fwd, _ = counter_flops(lambda: model(images.clone()))
    model.train()
    # per module in training mode (necks and classifiers run): forward only, since the
    # counter's module attribution of backward ops is unreliable; total fwd + bwd separately
    with torch.no_grad():
        _, ct_mod = counter_flops(lambda: model(inputs(*batch_data)))

    def train_fwd_bwd():
        losses = sum(model(inputs(*batch_data)).values())
        losses.backward()

    ct_train, _ = counter_flops(train_fwd_bwd)
    model.zero_grad(set_to_none=True)
    root = type(model).__name__ + "."
    return {
        "fwd_gflops_img_fvcore": fv_total / b / 1e9,
        "fwd_gflops_img_counter": ct_fwd / b / 1e9,
        "train_gflops_img": ct_train / b / 1e9,
        "fwd_by_module_gflops_img": {k: v / b / 1e9 for k, v in module_rows(name, fv_mod).items()},
        "train_fwd_by_module_gflops_img": {k: v / b / 1e9
                                           for k, v in module_rows(name, ct_mod, root).items()},
        "fvcore_unsupported": {k: v for k, v in unsupported.items()
                               if "attention" in k or "conv" in k or "mm" in k},
    }


# ----------------------------------------------------------------------------- memory child
def _status_mb(key):
    """A /proc/self/status field in MB: VmRSS (now) or VmHWM (peak RSS of this process image;
    unlike ru_maxrss it does not inherit the forking parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _saved_bytes(model, batch_data, amp, device):
    """Bytes of the distinct storages autograd saves for backward in one training forward."""
    seen = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[(st.data_ptr(), t.device.type)] = st.nbytes()
        except Exception:  # noqa: BLE001  (e.g. sparse / meta tensors: not counted)
            pass
        return t

    model.train()
    stepper = Stepper(model, device, amp)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), stepper.autocast():
        losses = sum(model(inputs(*batch_data)).values())
    del losses
    return sum(seen.values())


def memory_child(args):
    """Runs in a fresh process: peak RSS (CPU) or max allocated (CUDA) of training steps."""
    torch.set_num_threads(args.threads)
    img = tuple(args.img)
    rss_before = _status_mb("VmRSS")
    model = build(args.contender, args.size, img, args.device, args.compile, args.grad_ckpt)
    batch = make_batch(args.batch, img, args.device)
    params = sum(p.numel() for p in model.parameters())
    saved = _saved_bytes(model, batch, args.amp, args.device)
    stepper = Stepper(model, args.device, args.amp)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        stepper.train_step(batch)
    sync(args.device)
    out = {"params": params, "saved_activation_mb": saved / 2**20,
           "rss_before_build_mb": rss_before,
           "peak_rss_mb": _status_mb("VmHWM")}
    out["peak_increase_mb"] = out["peak_rss_mb"] - rss_before
    if args.device == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    print("MEMJSON " + json.dumps(out))


def cuda_memory(name, size, batch, args, fraction=None):
    """Peak CUDA memory of two training steps of one contender, measured in this process with
    nothing else of the bench allocated; ``fraction``: cap the process at that share of the
    card (``set_per_process_memory_fraction``) so a batch that would not fit a smaller card
    fails with an out-of-memory error, reported as ``{"oom": True}``."""
    import gc

    img = tuple(args.img)
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    if fraction:
        torch.cuda.set_per_process_memory_fraction(fraction)
    model = stepper = data = None
    try:
        model = build(name, size, img, "cuda", args.compile, args.grad_ckpt)
        data = make_batch(batch, img, "cuda")
        stepper = Stepper(model, "cuda", args.amp)
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            stepper.train_step(data)
        sync("cuda")
        out = {"params": sum(p.numel() for p in model.parameters()),
               "cuda_max_allocated_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
               "cuda_max_reserved_mb": torch.cuda.max_memory_reserved() / 2**20, "batch": batch}
    except torch.cuda.OutOfMemoryError:
        out = {"oom": True, "batch": batch}
    finally:
        del model, stepper, data
        gc.collect()
        torch.cuda.empty_cache()
        if fraction:
            torch.cuda.set_per_process_memory_fraction(1.0)
    return out


def max_batch_within(name, size, args, gib):
    """Largest training batch (a multiple of 4, P x K with K = 4) of ``name`` whose CUDA peak
    stays within ``gib`` GiB: a line through the peaks at batch 64 and 128, then checked by
    running it with the process capped at ``gib`` GiB (stepping down by 4 on OOM)."""
    limit_mb = gib * 1024.0
    m64, m128 = cuda_memory(name, size, 64, args), cuda_memory(name, size, 128, args)
    if m64.get("oom") or m128.get("oom"):
        return {"error": "batch 64 or 128 did not fit the whole card", "b64": m64, "b128": m128}
    per_img = (m128["cuda_max_allocated_mb"] - m64["cuda_max_allocated_mb"]) / 64
    fixed = m64["cuda_max_allocated_mb"] - 64 * per_img
    predicted = int((limit_mb - fixed) / per_img) // 4 * 4
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, gib * 2**30 / total)
    tries = []
    b = predicted
    while b >= 4 and len(tries) < 4:
        r = cuda_memory(name, size, b, args, fraction)
        tries.append(r)
        if not r.get("oom") and r["cuda_max_allocated_mb"] <= limit_mb:
            break
        b -= 4
    ok = bool(tries) and not tries[-1].get("oom") and \
        tries[-1]["cuda_max_allocated_mb"] <= limit_mb
    return {"limit_gib": gib, "mb_per_img": per_img, "fixed_mb": fixed, "predicted": predicted,
            "largest_batch": b if ok else None, "tries": tries}


def run_memory(name, size, batch, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", "--contender", name,
           "--size", size, "--batch", str(batch), "--img", *map(str, args.img),
           "--device", args.device, "--amp", args.amp, "--threads", str(args.threads)]
    if args.compile:
        cmd.append("--compile")
    if args.grad_ckpt:
        cmd.append("--grad-ckpt")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    for line in res.stdout.splitlines():
        if line.startswith("MEMJSON "):
            return json.loads(line[8:])
    return {"error": (res.stderr or res.stdout)[-800:]}


# ----------------------------------------------------------------------------- timing
def time_size(size, batch, args):
    """Interleaved training-step and inference timings of the contenders of one size."""
    img, device = tuple(args.img), args.device
    names = contenders_for(size, args.only)
    models = {n: build(n, size, img, device, args.compile, args.grad_ckpt) for n in names}
    data = make_batch(batch, img, device)
    steppers = {n: Stepper(m, device, args.amp) for n, m in models.items()}
    res = {n: {"params_m": sum(p.numel() for p in m.parameters()) / 1e6} for n, m in models.items()}
    if not args.no_flops:
        for n, m in models.items():
            res[n].update(flop_report(n, m, data, device, args.no_fvcore))
    train_t = {n: [] for n in names}
    infer_t = {n: [] for n in names}
    steps, warm = args.steps, args.warmup
    ibatch = args.infer_batch or batch
    idata = make_batch(ibatch, img, device, seed=1)
    for i in range(warm + steps):  # A, B, A, B ...: load from other processes hits both alike
        for n in names:
            t = timed(lambda: steppers[n].train_step(data), device)
            if i >= warm:
                train_t[n].append(t)
        for n in names:
            t = timed(lambda: steppers[n].infer(idata), device)
            if i >= warm:
                infer_t[n].append(t)
    for n in names:
        res[n]["train_step_s"] = statistics.median(t[0] for t in train_t[n])
        res[n]["train_step_cpu_s"] = statistics.median(t[1] for t in train_t[n])
        res[n]["train_step_s_all"] = [round(t[0], 4) for t in train_t[n]]
        res[n]["train_img_s"] = batch / res[n]["train_step_s"]
        res[n]["infer_img_s"] = ibatch / statistics.median(t[0] for t in infer_t[n])
        res[n]["infer_img_cpu_s"] = ibatch / statistics.median(t[1] for t in infer_t[n])
        res[n]["infer_batch_s_all"] = [round(t[0], 4) for t in infer_t[n]]
        if "train_gflops_img" in res[n]:
            res[n]["train_tflops_s"] = (res[n]["train_gflops_img"] * batch
                                        / res[n]["train_step_s"] / 1e3)
    return res


def measure_matmul_peak(device, n=8192, warmup=3, iters=10):
    """Achieved FLOP/s of a bf16 ``torch.mm`` of two n x n matrices (median of ``iters``)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    times = []
    for i in range(warmup + iters):
        t, _ = timed(lambda: torch.mm(a, b), device)
        if i >= warmup:
            times.append(t)
    t = statistics.median(times)
    return {"n": n, "median_s": t, "flops": 2 * n ** 3 / t, "all_s": [round(x, 6) for x in times]}


def gpu_peak(args):
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "given"
    if getattr(args, "measured_peak", None):
        return args.measured_peak["flops"], f"measured bf16 mm {args.measured_peak['n']}^3"
    name = torch.cuda.get_device_name() if args.device == "cuda" else ""
    for key, peak in GPU_PEAK_BF16:
        if key in name:
            return peak, name
    return None, name


# ----------------------------------------------------------------------------- report
def fmt_ratio(a, b):
    return a / b if b else float("nan")


def report(results, args, meta):
    lines = []
    p = lines.append
    nan = float("nan")
    p(f"# model_bench  {meta['date']}  {meta['machine']}")
    p(f"# torch {meta['torch']}  device {args.device}  threads {args.threads}  amp {args.amp}  "
      f"compile {args.compile}  grad_ckpt {args.grad_ckpt}  input {args.img[0]}x{args.img[1]}  "
      f"median of {args.steps} after {args.warmup} warm-up, contenders interleaved")
    p("# GF = GFLOP (2 per multiply-add). step s: wall time of forward + backward + SGD step; "
      "cpu s: process CPU time of the same (all threads)")
    for size, r in results.items():
        batch = r["batch"]
        p("")
        p(f"## ViT-{size} (D={DIMS[size]}), train batch {batch}, inference batch "
          f"{args.infer_batch or batch}")
        p(f"{'model':<13}{'params M':>9}{'fwd GF/img':>11}{'counter':>8}{'train GF/img':>13}"
          f"{'step s':>8}{'cpu s':>7}{'train img/s':>12}{'infer img/s':>12}{'peak MB':>9}"
          f"{'+MB':>7}")
        for n, v in r["models"].items():
            mem = v.get("memory", {})
            peak = mem.get("cuda_max_allocated_mb", mem.get("peak_rss_mb", nan))
            p(f"{n:<13}{v['params_m']:>9.2f}{v.get('fwd_gflops_img_fvcore', nan):>11.2f}"
              f"{v.get('fwd_gflops_img_counter', nan):>8.2f}{v.get('train_gflops_img', nan):>13.2f}"
              f"{v['train_step_s']:>8.3f}{v['train_step_cpu_s']:>7.2f}{v['train_img_s']:>12.1f}"
              f"{v['infer_img_s']:>12.1f}{peak:>9.0f}{mem.get('peak_increase_mb', nan):>7.0f}")
        for n, v in r["models"].items():
            if "fwd_by_module_gflops_img" in v:
                fwd = ", ".join(f"{k} {x:.3f}" for k, x in v["fwd_by_module_gflops_img"].items())
                trn = ", ".join(f"{k} {x:.3f}"
                                for k, x in v["train_fwd_by_module_gflops_img"].items())
                p(f"  {n:<12} fwd GF/img by module, eval (fvcore):      {fwd}")
                p(f"  {n:<12} fwd GF/img by module, training (counter): {trn}")
            if v.get("fvcore_unsupported"):
                p(f"  {n} fvcore unsupported (not counted): {v['fvcore_unsupported']}")
            if "error" in v.get("memory", {}):
                p(f"  {n} memory child failed: {v['memory']['error']}")
            elif "saved_activation_mb" in v.get("memory", {}):
                p(f"  {n:<12} autograd-saved activations {v['memory']['saved_activation_mb']:.0f}"
                  f" MB; train step time per step {v['train_step_s_all']}")
        if "gltrans" in r["models"] and "vit" in r["models"]:
            g, b = r["models"]["gltrans"], r["models"]["vit"]
            fr = fmt_ratio(g.get("fwd_gflops_img_fvcore", nan), b.get("fwd_gflops_img_fvcore", nan))
            trf = fmt_ratio(g.get("train_gflops_img", nan), b.get("train_gflops_img", nan))
            tr = fmt_ratio(g["train_step_s"], b["train_step_s"])
            trc = fmt_ratio(g["train_step_cpu_s"], b["train_step_cpu_s"])
            ir = fmt_ratio(b["infer_img_s"], g["infer_img_s"])
            irc = fmt_ratio(b["infer_img_cpu_s"], g["infer_img_cpu_s"])
            p(f"  GLTrans / vit: params {fmt_ratio(g['params_m'], b['params_m']):.3f}x, "
              f"forward FLOPs {fr:.3f}x, training FLOPs {trf:.3f}x")
            p(f"  GLTrans / vit: train step time {tr:.3f}x wall, {trc:.3f}x cpu  -> "
              f"{tr / trf:.3f} / {trc / trf:.3f} x the FLOP ratio (target <= 1.05)")
            p(f"  GLTrans / vit: inference time  {ir:.3f}x wall, {irc:.3f}x cpu  -> "
              f"{ir / fr:.3f} / {irc / fr:.3f} x the FLOP ratio (target <= 1.05)")
            gm, bm = g.get("memory", {}), b.get("memory", {})
            if "peak_increase_mb" in gm and "peak_increase_mb" in bm:
                mr = fmt_ratio(gm["peak_increase_mb"], bm["peak_increase_mb"])
                sr = fmt_ratio(gm["saved_activation_mb"], bm["saved_activation_mb"])
                p(f"  GLTrans / vit: peak memory increase {mr:.2f}x, saved activations {sr:.2f}x")
        if "fastreid_vit" in r["models"] and "vit" in r["models"]:
            f, b = r["models"]["fastreid_vit"], r["models"]["vit"]
            p(f"  fastreid_vit / vit: train step time "
              f"{fmt_ratio(f['train_step_s'], b['train_step_s']):.3f}x, inference time "
              f"{fmt_ratio(b['infer_img_s'], f['infer_img_s']):.3f}x (same FLOPs "
              f"{fmt_ratio(f.get('train_gflops_img', nan), b.get('train_gflops_img', nan)):.3f}x)")
        if args.device == "cuda":
            peak, gname = gpu_peak(args)
            for n, v in r["models"].items():
                if peak and "train_tflops_s" in v:
                    p(f"  {n} MFU {100 * v['train_tflops_s'] * 1e12 / peak:.1f}% "
                      f"({v['train_tflops_s']:.1f} TFLOP/s of {peak / 1e12:.0f} bf16 peak, "
                      f"{gname})")
                elif not peak:
                    p(f"  {n}: unknown GPU {gname!r}: give --peak-tflops for MFU")
                mb = v.get("max_batch")
                if mb:
                    p(f"  {n} largest training batch within {mb.get('limit_gib')} GiB: "
                      f"{mb.get('largest_batch')} (line through batch 64 / 128: "
                      f"{mb.get('mb_per_img', nan):.1f} MB/img + {mb.get('fixed_mb', nan):.0f} MB"
                      f"; tried {[t.get('batch') for t in mb.get('tries', [])]})")
        else:
            ach = ", ".join(f"{n} {v['train_tflops_s'] * 1e3:.0f}"
                            for n, v in r["models"].items() if "train_tflops_s" in v)
            p(f"  achieved training GFLOP/s (wall): {ach} (CPU: no MFU reported)")
    return "\n".join(lines)


def gpu_estimate(args):
    """ViT-B GLTrans 256x128 batch 64 AMP memory estimate from CPU (no GPU here)."""
    rows = {}
    for b in args.estimate_batches:
        child = argparse.Namespace(**vars(args))
        child.amp = "bf16"
        rows[b] = run_memory("gltrans", "base", b, child)
    bs = sorted(rows)
    if any("error" in rows[b] for b in bs):
        return {"error": {b: rows[b].get("error") for b in bs}}
    lo, hi = bs[0], bs[-1]
    saved_per_img = (rows[hi]["saved_activation_mb"] - rows[lo]["saved_activation_mb"]) / (hi - lo)
    saved_fixed = rows[lo]["saved_activation_mb"] - saved_per_img * lo
    rss_per_img = (rows[hi]["peak_increase_mb"] - rows[lo]["peak_increase_mb"]) / (hi - lo)
    rss_fixed = rows[lo]["peak_increase_mb"] - rss_per_img * lo
    params = rows[lo]["params"]
    states_mb = params * (4 + 4 + 4 + 2) / 2**20  # fp32 weights, grads, momentum; fp16 copies
    saved64 = saved_fixed + 64 * saved_per_img
    return {"batches": rows, "saved_mb_per_img": saved_per_img, "rss_mb_per_img": rss_per_img,
            "rss_fixed_mb": rss_fixed, "weights_grads_momentum_fp16copy_mb": states_mb,
            "estimate_b64_saved_plus_states_mb": saved64 + states_mb,
            "estimate_b64_rss_extrapolated_mb": rss_fixed + 64 * rss_per_img}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default=None, help="comma list of tiny,small,base")
    ap.add_argument("--batch", default=None, help="train batch per size, e.g. 16,8,4")
    ap.add_argument("--infer-batch", type=int, default=0)
    ap.add_argument("--img", type=int, nargs=2, default=[256, 128])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--compile", action="store_true", help="MODEL.COMPILE True for all models")
    ap.add_argument("--grad-ckpt", action="store_true", help="MODEL.BACKBONE.GRAD_CHECKPOINT")
    ap.add_argument("--only", default="", help="comma list of contenders")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-estimate", action="store_true", help="skip the 24 GB estimate (CPU)")
    ap.add_argument("--estimate-batches", type=int, nargs=2, default=[2, 4])
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device bf16 peak for MFU")
    ap.add_argument("--no-fvcore", action="store_true",
                    help="skip fvcore's forward count (the training FLOPs are counted anyway)")
    ap.add_argument("--peak-n", type=int, default=8192,
                    help="matrix size of the measured bf16 peak (CUDA, or --measure-peak)")
    ap.add_argument("--measure-peak", action="store_true",
                    help="time the bf16 mm peak on CPU too (always on CUDA)")
    ap.add_argument("--max-batch-gb", type=float, default=0.0,
                    help="CUDA: also find GLTrans' largest training batch within this many GiB")
    ap.add_argument("--json", default="", help="also write all numbers to this file")
    # internal: memory child
    ap.add_argument("--_memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--contender", default="gltrans", help=argparse.SUPPRESS)
    ap.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from fastreid.utils.events import EventStorage  # fast-reid's Baseline logs accuracy there

    if args._memory_child:
        args.batch = int(args.batch)
        with EventStorage(0):
            return memory_child(args)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    sizes = (args.sizes or ("base" if cuda else "tiny,small,base")).split(",")
    default_batch = {"tiny": 16, "small": 8, "base": 2} if not cuda else {
        "tiny": 64, "small": 64, "base": 64}
    batches = ([int(b) for b in args.batch.split(",")] if args.batch
               else [default_batch[s] for s in sizes])
    if len(batches) == 1:
        batches = batches * len(sizes)
    args.steps = args.steps or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.amp = args.amp or ("bf16" if cuda else "off")
    args.only = [n for n in args.only.split(",") if n]
    torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    t_start = time.perf_counter()
    args.measured_peak = None
    if (cuda or args.measure_peak) and not args.peak_tflops:
        args.measured_peak = measure_matmul_peak(args.device, args.peak_n)
        print(f"[bf16 mm {args.peak_n}^3: {args.measured_peak['flops'] / 1e12:.1f} TFLOP/s]",
              file=sys.stderr, flush=True)
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": (torch.cuda.get_device_name() if cuda else
                        f"{platform.processor() or platform.machine()} "
                        f"{_cpu_model()} ({os.cpu_count()} cores visible)"),
            "torch": torch.__version__}
    results = {}
    for size, batch in zip(sizes, batches):
        t0 = time.perf_counter()
        with EventStorage(0):
            models = time_size(size, batch, args)
        if not args.no_memory:
            for n in models:
                models[n]["memory"] = (cuda_memory(n, size, batch, args) if cuda
                                       else run_memory(n, size, batch, args))
        if cuda and args.max_batch_gb and "gltrans" in models:
            models["gltrans"]["max_batch"] = max_batch_within("gltrans", size, args,
                                                              args.max_batch_gb)
        results[size] = {"batch": batch, "models": models,
                         "wall_s": time.perf_counter() - t0}
        print(f"[{size} done in {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    for r in results.values():
        r["summary"] = summarize(r, args)
    text = report(results, args, meta)
    est = None
    if not cuda and not args.no_estimate:
        est = gpu_estimate(args)
        text += "\n\n" + estimate_text(est)
    text += f"\n\n# total wall time {time.perf_counter() - t_start:.0f} s"
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "args": vars(args), "results": results, "estimate": est,
                       "measured_peak": args.measured_peak}, f, indent=1, default=str)
    return 0


def summarize(r, args):
    """The figures bench/gpu's report quotes, with their units in the names."""
    nan = float("nan")
    peak, _ = gpu_peak(args) if args.device == "cuda" or args.measured_peak else (None, "")
    out = {"batch": r["batch"], "amp": args.amp, "grad_ckpt": bool(args.grad_ckpt),
           "peak_tflops_s": peak / 1e12 if peak else None}
    for n, v in r["models"].items():
        row = {"train_step_ms": v["train_step_s"] * 1e3, "train_img_s": v["train_img_s"],
               "infer_img_s": v["infer_img_s"], "train_gflops_img": v.get("train_gflops_img"),
               "train_tflops_s": v.get("train_tflops_s")}
        if peak and v.get("train_tflops_s"):
            row["mfu_pct"] = 100 * v["train_tflops_s"] * 1e12 / peak
        mem = v.get("memory", {})
        if "cuda_max_allocated_mb" in mem:
            row["peak_mem_gib"] = mem["cuda_max_allocated_mb"] / 1024
        if "max_batch" in v:
            row["largest_batch_within_gib"] = {str(v["max_batch"].get("limit_gib")):
                                               v["max_batch"].get("largest_batch")}
        out[n] = row
    if "gltrans" in r["models"] and "vit" in r["models"]:
        g, b = r["models"]["gltrans"], r["models"]["vit"]
        tr = fmt_ratio(g["train_step_s"], b["train_step_s"])
        fr = fmt_ratio(g.get("train_gflops_img", nan), b.get("train_gflops_img", nan))
        out["gltrans_over_vit"] = {"time_x": tr, "train_flops_x": fr,
                                   "time_over_flop_ratio": tr / fr if fr == fr else None}
    return out


def estimate_text(est):
    if "error" in est:
        return f"## ViT-B GLTrans batch-64 memory estimate failed: {est['error']}"
    b = est["batches"]
    rows = ", ".join(f"batch {k}: saved {v['saved_activation_mb']:.0f} MB, peak RSS +"
                     f"{v['peak_increase_mb']:.0f} MB" for k, v in b.items())
    return (
        "## ViT-B GLTrans 256x128, batch 64, AMP: GPU memory ESTIMATE (no GPU here)\n"
        f"  measured on CPU under bf16 autocast (2 bytes/element, as fp16): {rows}\n"
        f"  autograd-saved activations {est['saved_mb_per_img']:.1f} MB/img; weights + grads + "
        f"SGD momentum + fp16 weight copies {est['weights_grads_momentum_fp16copy_mb']:.0f} MB\n"
        f"  -> batch 64: {est['estimate_b64_saved_plus_states_mb'] / 1024:.1f} GiB "
        f"(saved activations + states; CUDA adds workspace and allocator slack, ~10-20%)\n"
        f"  -> batch 64 from the CPU peak-RSS slope ({est['rss_mb_per_img']:.1f} MB/img): "
        f"{est['estimate_b64_rss_extrapolated_mb'] / 1024:.1f} GiB (an upper bound: the CPU "
        f"peak also holds transient backward buffers and allocator caches)")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    sys.exit(main())
