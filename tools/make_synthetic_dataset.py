#!/usr/bin/env python
"""Write the built-in synthetic Re-ID set (Market-1501 layout) ahead of training.

The dataset ``SyntheticReID`` generates itself on first use; this tool does the same up front,
or into another folder, with the sizes of ``DATASETS.SYNTHETIC.*``:

    python tools/make_synthetic_dataset.py --root datasets            # -> datasets/synthetic_reid
    python tools/make_synthetic_dataset.py --out /tmp/syn --num-train-ids 16 --seed 3
"""
import argparse
import logging
import os
import os.path as osp
import sys
import time

try:
    import gltrans_plugin  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from gltrans_plugin.data.synthetic import DEFAULTS, generate_synthetic_reid  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Generate the synthetic Re-ID data set (Market-1501 folder and file names: "
                    "bounding_box_train/, query/, bounding_box_test/, manifest.json). Same "
                    "parameters -> byte-identical files; an existing set with the same "
                    "parameters is kept, one with other parameters is replaced.")
    parser.add_argument("--root", default=os.getenv("FASTREID_DATASETS", "datasets"),
                        help="dataset root; the set goes to <root>/synthetic_reid, where the "
                             "SyntheticReID dataset reads it (default: $FASTREID_DATASETS or "
                             "'datasets')")
    parser.add_argument("--out", default=None,
                        help="write the set into exactly this folder instead of "
                             "<root>/synthetic_reid")
    parser.add_argument("--num-train-ids", type=int, default=DEFAULTS["num_train_ids"])
    parser.add_argument("--num-test-ids", type=int, default=DEFAULTS["num_test_ids"])
    parser.add_argument("--num-cameras", type=int, default=DEFAULTS["num_cameras"],
                        help="2..6 (Market-1501 names hold one camera digit)")
    parser.add_argument("--images-per-id-cam", type=int, default=DEFAULTS["images_per_id_cam"])
    parser.add_argument("--height", type=int, default=DEFAULTS["height"])
    parser.add_argument("--width", type=int, default=DEFAULTS["width"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--num-distractors", type=int, default=None,
                        help="pid-0 distractor images in the gallery (default: num_test_ids // 2)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even when a matching set is already there")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or osp.join(args.root, "synthetic_reid")
    t0 = time.perf_counter()
    manifest = generate_synthetic_reid(
        out, num_train_ids=args.num_train_ids, num_test_ids=args.num_test_ids,
        num_cameras=args.num_cameras, images_per_id_cam=args.images_per_id_cam,
        height=args.height, width=args.width, seed=args.seed,
        num_distractors=args.num_distractors, force=args.force)
    print(f"{osp.abspath(out)}: {manifest['counts']} images, ids {manifest['num_ids']} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    from gltrans_plugin.errors import run_main  # one-line errors, exit code 2

    sys.exit(run_main(main))
