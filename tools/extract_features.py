#!/usr/bin/env python
r"""Re-ID features of a folder of images (or a list file) from a trained checkpoint.

    python tools/extract_features.py --config-file logs/run/config.yaml \
        --weights logs/run/model_final.pth --input crops/ --output feats.npz \
        [--camid-from-name market | --camid N] [--device cpu] [KEY VALUE ...]
    python tools/extract_features.py --config-file CFG.yml --weights W.pth \
        --list images.txt --output-dir feats/

``--input DIR``: every .jpg / .jpeg / .png / .bmp under DIR (recursively, sorted).
``--list FILE``: one image path per line (relative paths: from the list file's folder),
optionally followed by a space or tab and the image's 0-based camera id.
Camera ids (used by models with a camera embedding, SIE): the list's column where a line has
one, else ``--camid N`` for every image, else ``--camid-from-name market`` (Market-1501 /
DukeMTMC names ``<pid>_c<cam>...``: camera 3 -> id 2), else none (the model's
MODEL.BACKBONE.SIE_UNSEEN policy applies).
``--output X.npz``: one file with ``feats`` (N x D float32), ``paths`` (absolute) and
``camids`` (-1 = not known); ``--output-dir DIR``: ``feats.npy``, ``paths.txt`` and
``camids.npy``.  Preprocessing is the test loader's, so features equal the evaluator's.
The output options are checked before any feature is computed; the files are written whole
(a temporary file renamed) and as a set (all three written before the first rename), and
``paths.txt`` keeps file names that are not UTF-8 as their original bytes (one per line).
Prints a JSON summary.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from gltrans_plugin.cli import model_arg_parser

    p = model_arg_parser(__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="DIR", help="image folder (searched recursively)")
    src.add_argument("--list", metavar="FILE",
                     help="list file: one image path per line, optional camera-id column")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", metavar="X.npz", help="one .npz with feats, paths, camids")
    out.add_argument("--output-dir", metavar="DIR",
                     help="folder for feats.npy, paths.txt and camids.npy")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--camid", type=int, default=None,
                     help="0-based camera id of every image (lines of --list with a camera "
                          "id keep theirs)")
    cam.add_argument("--camid-from-name", choices=("market",), default=None,
                     help="parse camera ids from Market-1501 / DukeMTMC file names")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--flip-test", action="store_true", help="average with flipped images")
    p.add_argument("--amp", action="store_true", help="autocast on CUDA (ignored on CPU)")
    p.add_argument("--no-normalize", action="store_true",
                   help="keep the raw features (default: L2-normalised)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def check_output(output=None, output_dir=None):
    """The output options, checked before any work: ``--output`` ends in .npz, and no regular
    file stands where a folder is needed."""
    from gltrans_plugin.errors import UserError

    if output and not output.endswith(".npz"):
        raise ValueError(f"--output {output}: give a file name ending in .npz (or use "
                         f"--output-dir for feats.npy + paths.txt).")
    folder = os.path.abspath(output_dir if output_dir else os.path.dirname(
        os.path.abspath(output)))
    option = "--output-dir" if output_dir else "--output"
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        raise UserError(f"{option}: a file is in the way where a folder is needed", probe,
                        "move or remove the file, or choose another output folder")
    if output and os.path.isdir(output):
        raise UserError("--output names a folder", os.path.abspath(output),
                        "give a file name ending in .npz, or use --output-dir")


def write_features(feats, paths, camids, output=None, output_dir=None):
    """Write the features; returns the files written.  Each file goes through a temporary file
    renamed over it, and the renames follow only once every file is written (no feats.npy
    without its paths.txt); paths that are not UTF-8 are written as their original bytes."""
    import contextlib
    import io

    import numpy as np

    from gltrans_plugin.checkpoint import atomic_open

    check_output(output, output_dir)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    cams = np.asarray([-1 if c is None else int(c) for c in camids] if camids is not None
                      else [-1] * len(paths), dtype=np.int64)
    contents = {}
    if output:
        buf = io.BytesIO()
        np.savez(buf, feats=feats, paths=np.asarray(paths, dtype=str), camids=cams)
        contents[os.path.abspath(output)] = buf.getvalue()
    else:
        for name, data in (("feats.npy", feats), ("paths.txt", paths), ("camids.npy", cams)):
            if name == "paths.txt":
                data = b"".join(os.fsencode(p) + b"\n" for p in paths)
            else:
                buf = io.BytesIO()
                np.save(buf, data)
                data = buf.getvalue()
            contents[os.path.abspath(os.path.join(output_dir, name))] = data
    os.makedirs(os.path.dirname(next(iter(contents))), exist_ok=True)
    with contextlib.ExitStack() as stack:  # every file written and synced, then the renames
        for path, data in contents.items():
            f = stack.enter_context(atomic_open(path, "wb"))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return list(contents)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import gltrans_plugin  # noqa: F401  (compat + registrations)
    from gltrans_plugin.data.listing import image_camids, list_images, read_image_list
    from gltrans_plugin.extractor import FeatureExtractor

    check_output(args.output, args.output_dir)  # before any work
    if args.input:
        paths, list_cams = list_images(args.input), None
        if not paths:
            raise ValueError(f"--input {args.input}: no .jpg / .jpeg / .png / .bmp images in "
                             f"the folder (or its sub-folders).")
    else:
        paths, list_cams = read_image_list(args.list)
    camids = image_camids(paths, list_cams, args.camid, args.camid_from_name)
    extractor = FeatureExtractor(args.config_file, args.weights, device=args.device,
                                 batch_size=args.batch_size, amp=args.amp,
                                 flip_test=args.flip_test, normalize=not args.no_normalize,
                                 opts=args.opts)
    feats = extractor(paths, camids=camids, progress=not args.no_progress)
    files = write_features(feats.numpy(), paths, camids, args.output, args.output_dir)
    result = {"images": len(paths), "dim": int(feats.shape[1]), "files": files,
              "camids_known": sum(c is not None and c >= 0 for c in camids) if camids else 0,
              "normalized": extractor.normalize, "flip_test": extractor.flip_test,
              "device": str(extractor.device),
              "model": extractor.cfg.MODEL.META_ARCHITECTURE}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    run_main(main)
