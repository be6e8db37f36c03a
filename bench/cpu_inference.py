#!/usr/bin/env python
r"""CPU inference for trackers: images / s of torch eager, ONNX Runtime fp32 and int8 (and torch
bf16 autocast), with each variant's cosine to the fp32 features and its mAP on the built-in set.

    python bench/cpu_inference.py --config-file logs/synthetic_demo/gltrans/config.yaml \
        --weights logs/synthetic_demo/gltrans/model_final.pth \
        [--batches 1,8,32] [--repeats 20] [--threads 2] [--eval-root datasets] \
        [--work-dir logs/bench/cpu_inference] [--json out.json] [KEY VALUE ...]

Variants: ``torch fp32`` (the model's test forward), ``torch bf16`` (CPU autocast),
``onnxruntime fp32`` (``tools/export_onnx.py``'s graph, RGB 0..255 input, camera ids as a
second input) and ``onnxruntime int8`` (that graph through onnxruntime's dynamic quantisation:
int8 weights of the MatMul / Gemm layers, activations quantised at run time).  Speed: images
/ s per batch size, the median of --repeats timed runs after 3 warm-ups, on random 0..255
images, --threads threads (torch.set_num_threads and onnxruntime's intra-op threads).
Accuracy: on the built-in set's test split under --eval-root (``query`` + ``bounding_box_test``
of the synthetic set the config names; written there first if absent), every variant's
features with the camera ids from the names: the mean and minimum cosine to torch fp32 and the
mAP / Rank-1 (fast-reid's ``evaluate_rank``, cosine distance, same-camera matches removed).
Timings are only worth quoting on a quiet machine.  Without --config-file a tiny untrained
GLTrans (ViT-tiny, 64 x 32) is used, for trying the script.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))


class TorchRunner:
    def __init__(self, model, bf16=False):
        import torch

        from gltrans_plugin.export import InferenceWrapper

        self.model, self.bf16, self.torch = InferenceWrapper(model).eval(), bf16, torch

    def __call__(self, images, camids):
        torch = self.torch
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(torch.from_numpy(images), torch.from_numpy(camids))
        return out.float().numpy()


class OrtRunner:
    def __init__(self, path, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def __call__(self, images, camids):
        return self.sess.run(["feature"], {"images": images, "camids": camids})[0]


def images_per_second(run, batch, size, repeats, num_cameras):
    rng = np.random.default_rng(0)
    x = (rng.random((batch, 3, *size)) * 255).astype(np.float32)
    cams = (np.arange(batch) % max(1, num_cameras)).astype(np.int64)
    for _ in range(3):
        run(x, cams)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x, cams)
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def test_split(cfg, root):
    """(paths, pids, camids, is_query) of the built-in set's query + gallery under ``root``
    (the sizes of the config's DATASETS.SYNTHETIC; generated when absent)."""
    from gltrans_plugin.data.datasets import SyntheticReID, synthetic_kwargs

    ds = SyntheticReID(root, **synthetic_kwargs(cfg))
    items = list(ds.query) + list(ds.gallery)
    paths = [it[0] for it in items]
    pids = np.array([int(it[1]) for it in items])
    cams = np.array([int(it[2]) for it in items])
    return paths, pids, cams, np.arange(len(items)) < len(ds.query)


def evaluate(feats, pids, cams, query):
    from fastreid.evaluation.rank import evaluate_rank

    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    dist = 1 - f[query] @ f[~query].T
    cmc, all_ap, _ = evaluate_rank(dist, pids[query], pids[~query], cams[query], cams[~query],
                                   max_rank=10, use_metric_cuhk03=False, use_cython=False)
    return float(np.mean(all_ap)), float(cmc[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="")
    p.add_argument("--weights", default="")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-root", default="", help="built-in set root for the mAP (optional)")
    p.add_argument("--work-dir", default="logs/bench/cpu_inference")
    p.add_argument("--json", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    import torch

    import gltrans_plugin  # noqa: F401
    from gltrans_plugin import FeatureExtractor
    from gltrans_plugin.export import ExportContract, export_model
    from gltrans_plugin.loading import load_model

    torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    config, weights = args.config_file, args.weights
    if not config:
        from boxmot_check import _tiny_model

        config, weights = _tiny_model(args.work_dir)
    cfg, model = load_model(config, weights or None, args.opts, "cpu")
    fp32 = os.path.join(args.work_dir, "fp32.onnx")
    export_model(model, cfg, fp32, ExportContract(input="raw", camera="input"))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = os.path.join(args.work_dir, "int8.onnx")
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    variants = {"torch fp32": TorchRunner(model), "torch bf16": TorchRunner(model, bf16=True),
                "onnxruntime fp32": OrtRunner(fp32, args.threads),
                "onnxruntime int8": OrtRunner(int8, args.threads)}
    size = tuple(int(v) for v in cfg.INPUT.SIZE_TEST[:2])
    ncam = int(cfg.MODEL.BACKBONE.NUM_CAMERAS)
    rows = {name: {"images_per_s": {}} for name in variants}
    for name, run in variants.items():
        for b in (int(v) for v in args.batches.split(",")):
            rows[name]["images_per_s"][b] = images_per_second(run, b, size, args.repeats, ncam)
        print(name, json.dumps(rows[name]["images_per_s"]))
    if args.eval_root:
        paths, pids, cams, query = test_split(cfg, args.eval_root)
        ext = FeatureExtractor.from_model(cfg, model)
        images = torch.stack([ext.preprocess(pth) for pth in paths]).numpy()
        feats = {}
        for name, run in variants.items():
            feats[name] = np.concatenate([run(images[i:i + 64], cams[i:i + 64])
                                          for i in range(0, len(images), 64)])
        ref = feats["torch fp32"] / np.linalg.norm(feats["torch fp32"], axis=1, keepdims=True)
        for name, f in feats.items():
            cos = np.sum(ref * f / np.linalg.norm(f, axis=1, keepdims=True), 1)
            m_ap, r1 = evaluate(f, pids, cams, query)
            rows[name].update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                              mAP=100 * m_ap, rank1=100 * r1)
    batches = list(rows["torch fp32"]["images_per_s"])
    head = "| variant | " + " | ".join(f"img/s @ {b}" for b in batches)
    head += " | cosine to fp32 (mean / min) | mAP | Rank-1 |" if args.eval_root else " |"
    lines = [head, "|---" * (len(batches) + (4 if args.eval_root else 1)) + "|"]
    for name, r in rows.items():
        line = f"| {name} | " + " | ".join(f"{r['images_per_s'][b]:.1f}" for b in batches)
        if "mAP" in r:
            line += (f" | {r['cosine_mean']:.5f} / {r['cosine_min']:.5f} | {r['mAP']:.2f} | "
                     f"{r['rank1']:.2f}")
        lines.append(line + " |")
    print("\n".join(lines))
    info = {"config_file": config, "weights": weights, "threads": args.threads,
            "input_size": list(size), "variants": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return info


if __name__ == "__main__":
    main()
