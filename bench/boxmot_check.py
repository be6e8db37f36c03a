#!/usr/bin/env python
r"""BoxMOT reads the exported files right: the real client, its own preprocessing, our features.

Exports a model with ``tools/export_onnx.py --preset boxmot`` (``gltrans.onnx`` and
``gltrans.torchscript`` + their ``.metadata.json`` sidecars), draws a camera frame with people
of several sizes (the built-in set's figures, ``bench/scenes.py``), and then, in a separate
Python that has BoxMOT installed, loads each file through BoxMOT's own ReID runtime
(``boxmot.reid.core.ReID(weights=...)``, which picks the backend from the suffix and reads the
sidecar) and calls the tracker's entry point ``get_features(xyxy, frame)``: BoxMOT cuts the
crops, stretches them to the graph's H x W with cv2 (bilinear), converts BGR to RGB, divides by
255 and applies ImageNet mean / std.  Its features are compared with
``FeatureExtractor(bgr=True)`` on the same crops (fast-reid's test transform: PIL bicubic
resize), cosine per crop:

* ``same pixels``: the extractor on BoxMOT's own resized crops (returned by the client), so
  the two differ only by the graph: the export contract.  Pass: every cosine >= 0.9999
  (--min-cosine).
* ``end-to-end``: the extractor on the crops as cut from the frame, so its own resize
  (PIL bicubic, antialiased) against BoxMOT's (cv2 bilinear).  Pass: every cosine >= 0.99
  (--min-cosine-end-to-end); the numbers per crop size are in the report: the resize filter,
  not the graph, is what is left between the two.
* a negative control: the graph of the plain ``--input raw`` contract (RGB 0..255) fed by
  BoxMOT must be wrong (some same-pixels cosine < --min-cosine), or the check could not fail.

    python bench/boxmot_check.py --make-venv /tmp/boxmot-venv      # once: plain venv + boxmot
    python bench/boxmot_check.py --boxmot-python /tmp/boxmot-venv/bin/python \
        [--config-file logs/run/config.yaml --weights logs/run/model_final.pth] \
        [--work-dir out/boxmot_check] [--json out/boxmot_check.json]

Without --config-file a tiny untrained GLTrans (ViT-tiny, 64 x 32) is built (seed 0).  The
venv: ``python -m venv DIR`` then ``pip install "boxmot>=25,<26"`` and the onnxruntime
BoxMOT pins for its ONNX backend (read from boxmot.reid.backends.dependencies), so BoxMOT does
not install it at run time.  Exit code 0 when every check passes, 1 otherwise.  ``--client DIR``
is the half that runs inside the BoxMOT venv (numpy + boxmot only).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOXMOT = "boxmot>=25,<26"  # the release the export contract was checked against
MIN_COSINE = 0.9999  # the graph against the extractor on the same pixels
MIN_COSINE_END_TO_END = 0.99  # ... on the crops as cut (two resize filters)
# (pid, cx, top, figure height, facing): sizes from below the graph's 64 x 32 up to 5x it,
# two people overlapping, one cut by the frame's right edge
PEOPLE = [(1, 80, 40, 300, 1), (2, 250, 120, 200, -1), (3, 330, 160, 150, 1),
          (5, 420, 250, 100, 1), (6, 470, 300, 60, -1), (7, 620, 60, 260, -1)]


# ---------------------------------------------------------------------- the BoxMOT side
def client(work):
    """Inside the BoxMOT venv: features of every artifact in ``work/artifacts.json`` through
    BoxMOT's ReID runtime; BoxMOT's resized crops; versions."""
    import boxmot
    from boxmot.reid.core import ReID
    from boxmot.reid.core.crops import extract_crops
    from boxmot.reid.core.preprocessing import get_preprocess_fn

    frame = np.load(os.path.join(work, "frame.npy"))
    boxes = np.load(os.path.join(work, "boxes.npy"))
    with open(os.path.join(work, "artifacts.json")) as f:
        artifacts = json.load(f)
    out = {"boxmot": boxmot.__version__, "artifacts": {}}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        out["onnxruntime"] = None
    for name, path in artifacts.items():
        t0 = time.perf_counter()
        backend = ReID(weights=path, device="cpu").model  # what a tracker holds
        t1 = time.perf_counter()
        feats = np.asarray(backend.get_features(boxes, frame), np.float32)
        t2 = time.perf_counter()
        np.save(os.path.join(work, f"{name}.boxmot.npy"), feats)
        shape = tuple(int(v) for v in backend.input_shape)
        crops = extract_crops(boxes, frame, shape)
        resized = [get_preprocess_fn(None)(c, shape) for c in crops]
        np.save(os.path.join(work, f"{name}.crops.npy"), np.stack(resized))
        out["artifacts"][name] = {"backend": type(backend).__name__, "input_shape": shape,
                                  "load_s": t1 - t0, "features_s": t2 - t1}
    with open(os.path.join(work, "client.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


# ---------------------------------------------------------------------- the project side
def make_venv(path):
    """A plain venv with boxmot and the onnxruntime it pins; returns (python, seconds)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    py = os.path.join(path, "bin", "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [BOXMOT], check=True)
    req = subprocess.run([py, "-c", "from boxmot.reid.backends.dependencies import "
                          "reid_backend_requirements as r; print(r('onnx', device='cpu')[0])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(pip + [req], check=True)
    return py, time.perf_counter() - t0


def _tiny_model(work):
    """A tiny untrained GLTrans saved as a run folder: (config file, weights)."""
    import torch
    from fastreid.modeling import build_model
    from fastreid.utils.checkpoint import Checkpointer

    from gltrans_plugin.config import setup_cfg

    cfg = setup_cfg(os.path.join(REPO, "configs/GLTrans/synthetic_demo.yml"), [
        "INPUT.SIZE_TEST", "[64, 32]", "INPUT.SIZE_TRAIN", "[64, 32]",
        "MODEL.HEADS.NUM_CLASSES", "8", "MODEL.BACKBONE.NUM_CAMERAS", "4",
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", work])
    torch.manual_seed(0)
    out = os.path.join(work, "model")
    os.makedirs(out, exist_ok=True)
    Checkpointer(build_model(cfg), out).save("model_final")
    config = os.path.join(out, "config.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    return config, os.path.join(out, "model_final.pth")


def _export(config, weights, output, *extra):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import export_onnx

    return export_onnx.main(["--config-file", config, "--weights", weights, "--output", output,
                             "--device", "cpu", *extra])


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, 1)


def run_check(boxmot_python, work, config=None, weights=None, min_cosine=MIN_COSINE,
              min_cosine_end_to_end=MIN_COSINE_END_TO_END):
    """Export, run the client, compare; returns the report dict ("passed": bool)."""
    import torch

    import gltrans_plugin  # noqa: F401
    from gltrans_plugin import FeatureExtractor
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from scenes import Scene

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(work, exist_ok=True)
    if not config:
        config, weights = _tiny_model(work)
    t0 = time.perf_counter()
    preset = _export(config, weights, os.path.join(work, "gltrans.onnx"), "--preset", "boxmot")
    control = _export(config, weights, os.path.join(work, "control_raw.onnx"),
                      "--input", "raw", "--camera", "mean")
    export_s = time.perf_counter() - t0
    artifacts = {os.path.basename(f["path"]).replace(".", "_"): os.path.abspath(f["path"])
                 for f in preset["files"] + [control]}
    with open(os.path.join(work, "artifacts.json"), "w") as f:
        json.dump(artifacts, f)

    frame, boxes = Scene(seed=0, height=480, width=640).frame(PEOPLE)
    np.save(os.path.join(work, "frame.npy"), frame)
    np.save(os.path.join(work, "boxes.npy"), boxes)

    t0 = time.perf_counter()
    proc = subprocess.run([boxmot_python, os.path.abspath(__file__), "--client", work],
                          capture_output=True, text=True)
    client_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the BoxMOT client failed ({boxmot_python}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(work, "client.json")) as f:
        info = json.load(f)

    extract = FeatureExtractor(config, weights, device="cpu", bgr=True)
    bb = getattr(extract.model, "backbone", None)
    if hasattr(bb, "sie_unseen"):
        bb.sie_unseen = "mean"  # the exports' camera policy
    # the crops as BoxMOT cuts them: rounded, clipped xyxy
    crops = []
    for x1, y1, x2, y2 in boxes.round().astype(int):
        crops.append(np.ascontiguousarray(frame[max(0, y1):y2, max(0, x1):x2]))
    ref = extract(crops).numpy()
    crop_sizes = [list(c.shape[:2]) for c in crops]
    report = {"boxmot": info["boxmot"], "onnxruntime": info["onnxruntime"],
              "config_file": config, "weights": weights, "crop_sizes_hw": crop_sizes,
              "min_cosine_required": min_cosine,
              "min_cosine_end_to_end_required": min_cosine_end_to_end,
              "export_s": export_s, "client_s": client_s,
              "between_people_max_cosine": float(np.max(ref @ ref.T - 2 * np.eye(len(ref)))),
              "artifacts": {}}
    passed = True
    for name, meta in info["artifacts"].items():
        got = np.load(os.path.join(work, f"{name}.boxmot.npy"))
        same = extract(list(np.load(os.path.join(work, f"{name}.crops.npy")))).numpy()
        e2e, pix = _cosines(got, ref), _cosines(got, same)
        control_run = name.startswith("control")
        ok = bool(pix.min() < min_cosine) if control_run else bool(
            pix.min() >= min_cosine and e2e.min() >= min_cosine_end_to_end)
        passed &= ok
        report["artifacts"][name] = dict(
            meta, end_to_end=e2e.round(6).tolist(), same_pixels=pix.round(6).tolist(),
            expected="wrong (negative control)" if control_run else
            f"same pixels >= {min_cosine}, end-to-end >= {min_cosine_end_to_end}", passed=ok)
    report["passed"] = passed
    return report


def _print(report):
    print(f"boxmot {report['boxmot']}, onnxruntime {report['onnxruntime']}; crops (h x w): "
          + ", ".join(f"{h}x{w}" for h, w in report["crop_sizes_hw"]))
    print(f"largest cosine between two different people's features: "
          f"{report['between_people_max_cosine']:.4f}")
    print("| file (BoxMOT backend) | same pixels, min cosine | end-to-end, per crop | expected "
          "| result |")
    print("|---|---|---|---|---|")
    for name, r in report["artifacts"].items():
        print(f"| {name} ({r['backend']}) | {min(r['same_pixels']):.6f} | "
              + " ".join(f"{c:.4f}" for c in r["end_to_end"])
              + f" | {r['expected']} | {'pass' if r['passed'] else 'FAIL'} |")
    print("passed" if report["passed"] else "FAILED")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--client", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--make-venv", metavar="DIR", help="create the BoxMOT venv DIR and exit")
    p.add_argument("--boxmot-python", default=os.environ.get("GLTRANS_BOXMOT_PYTHON", ""),
                   help="python of a venv with boxmot (env GLTRANS_BOXMOT_PYTHON)")
    p.add_argument("--config-file", default="", help="the model's yaml (default: a tiny one)")
    p.add_argument("--weights", default="", help="its checkpoint")
    p.add_argument("--work-dir", default="", help="where the files go (default: a temp dir)")
    p.add_argument("--min-cosine", type=float, default=MIN_COSINE,
                   help="least cosine on the same pixels (the graph)")
    p.add_argument("--min-cosine-end-to-end", type=float, default=MIN_COSINE_END_TO_END,
                   help="least cosine on the crops as cut (two resize filters)")
    p.add_argument("--json", default="", help="write the report here")
    args = p.parse_args(argv)
    if args.client:
        client(args.client)
        return 0
    if args.make_venv:
        py, secs = make_venv(args.make_venv)
        print(json.dumps({"python": py, "install_s": round(secs, 1)}))
        return 0
    if not args.boxmot_python:
        p.error("give --boxmot-python (or env GLTRANS_BOXMOT_PYTHON), or --make-venv DIR first")
    sys.path.insert(0, REPO)
    work = args.work_dir or tempfile.mkdtemp(prefix="boxmot_check_")
    report = run_check(args.boxmot_python, work, args.config_file or None,
                       args.weights or None, args.min_cosine, args.min_cosine_end_to_end)
    _print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
