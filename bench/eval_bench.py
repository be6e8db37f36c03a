"""Re-ID evaluation benchmark: our chunked exact ranking vs fast-reid's ``evaluate_rank``.

Structured synthetic features (identity centres + camera offsets + noise, float32, D = 3840 by
default) are generated from a seed inside each contender's own subprocess, so every contender
sees bit-identical features and its peak RSS is its own.  Contenders:

* ``matmul``      bare fp32 ``torch.mm(q, g.T)`` of the same shapes (the floor);
* ``ours``        ``gltrans_plugin.evaluation.ranking.evaluate_ranking`` (distances + metrics);
* ``fastreid_py`` fastreid ``build_dist`` + ``evaluate_rank(use_cython=False)``;
* ``fastreid_cy`` the same with fastreid's ``rank_cy.pyx`` compiled in ``--scratch``
  (needs Cython importable, e.g. ``pip install --target SCRATCH/pylib cython``).

Metrics of every fastreid contender are asserted equal to ours (CMC exactly, mAP / mINP to
1e-6; the Cython path accumulates AP in float32, so it is held to 1e-5 and its gap printed).

    python bench/eval_bench.py                 # Market-1501-sized, a few minutes on 2 cores
    python bench/eval_bench.py --num-query 11659 --num-gallery 82161 --skip fastreid_py
    python bench/eval_bench.py --full          # MSMT17 scale (ours + matmul; fastreid where
                                               # --fastreid-max-pairs allows)
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSMT17 = dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15)
MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6)


# ----------------------------------------------------------------------------- workers
def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make_features(args):
    """Deterministic structured features: pid centre + camera offset + noise (float32)."""
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    D = args.dim
    centres = torch.randn(args.num_ids, D, generator=gen)
    cams = torch.randn(args.num_cams, D, generator=gen) * args.cam_scale

    def split(n):
        pids = torch.arange(n) % args.num_ids
        pids = pids[torch.randperm(n, generator=gen)]
        camids = torch.randint(0, args.num_cams, (n,), generator=gen)
        feats = torch.empty(n, D)
        for s in range(0, n, 4096):
            e = min(s + 4096, n)
            feats[s:e] = centres[pids[s:e]] + cams[camids[s:e]]
            feats[s:e].add_(torch.randn(e - s, D, generator=gen), alpha=args.noise)
        return feats, pids.numpy(), camids.numpy()

    q = split(args.num_query)
    g = split(args.num_gallery)
    return q, g


def _build_cython(scratch):
    """Compile fastreid's rank_cy.pyx in ``scratch`` (never in site-packages)."""
    import fastreid.evaluation.rank_cylib as cylib

    src = os.path.join(os.path.dirname(cylib.__file__), "rank_cy.pyx")
    build = os.path.join(scratch, "rank_cy_build")
    os.makedirs(build, exist_ok=True)
    pylib = os.path.join(scratch, "pylib")
    if os.path.isdir(pylib):
        sys.path.insert(0, pylib)
    sys.path.insert(0, build)
    try:
        import rank_cy  # noqa: F401

        return rank_cy.evaluate_cy
    except ImportError:
        pass
    shutil.copy(src, build)
    setup = (
        "from setuptools import setup, Extension\n"
        "import numpy as np\nfrom Cython.Build import cythonize\n"
        "setup(name='rank_cy', ext_modules=cythonize([Extension('rank_cy', ['rank_cy.pyx'],"
        " include_dirs=[np.get_include()])], language_level=3))\n")
    with open(os.path.join(build, "setup.py"), "w") as f:
        f.write(setup)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([pylib, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=build,
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("building rank_cy failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    import rank_cy

    return rank_cy.evaluate_cy


def worker(args):
    import warnings

    import numpy as np
    import torch

    sys.path.insert(0, REPO)
    warnings.simplefilter("ignore")
    import gltrans_plugin  # noqa: F401  (fastreid compat)

    torch.set_num_threads(args.threads)
    evaluate_cy = _build_cython(args.scratch) if args.worker == "fastreid_cy" else None
    (qf, qp, qc), (gf, gp, gc) = make_features(args)
    rss_before = _rss_mb()
    out = {}
    t0 = time.perf_counter()
    if args.worker == "matmul":
        import torch.nn.functional as F

        if args.metric == "cosine":
            qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
        t0 = time.perf_counter()  # bare product only
        d = torch.mm(qf, gf.t())
        out["checksum"] = float(d[0, 0])
        del d
    elif args.worker == "ours":
        from gltrans_plugin.evaluation.ranking import evaluate_ranking

        m = evaluate_ranking(qf, gf, qp, gp, qc, gc, metric=args.metric, max_rank=50,
                             chunk_size=args.chunk_size, inplace=True)
        out.update(cmc=m["cmc"].tolist(), mAP=float(np.mean(m["all_AP"])),
                   mINP=float(np.mean(m["all_INP"])), num_valid=m["num_valid"])
    else:
        from fastreid.evaluation.rank import evaluate_rank
        from fastreid.utils.compute_dist import build_dist

        dist = build_dist(qf, gf, args.metric)
        if args.stable_ref:  # fastreid's code with a stable argsort: ties in index order
            import fastreid.evaluation.rank as fr_rank

            class _StableNP:
                def __getattr__(self, k):
                    return getattr(np, k)

                @staticmethod
                def argsort(a, axis=-1):
                    return np.argsort(a, axis=axis, kind="stable")

            fr_rank.np = _StableNP()
        if evaluate_cy is not None:
            cmc, ap, inp = evaluate_cy(dist, qp, gp, qc, gc, 50, False)
        else:
            cmc, ap, inp = evaluate_rank(dist, qp, gp, qc, gc, max_rank=50, use_cython=False)
        out.update(cmc=np.asarray(cmc).tolist(), mAP=float(np.mean(ap)),
                   mINP=float(np.mean(inp)), num_valid=len(ap))
    out["time_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["rss_before_mb"] = rss_before
    print("@@RESULT " + json.dumps(out))


# ----------------------------------------------------------------------------- driver
def run_contender(name, args, passthrough):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name] + passthrough
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    for line in r.stdout.splitlines():
        if line.startswith("@@RESULT "):
            res = json.loads(line[len("@@RESULT "):])
            res["process_wall_s"] = wall
            return res
    tail = (r.stdout + r.stderr)[-1500:]
    return {"error": f"exit {r.returncode}: {tail}"}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-query", type=int, default=MARKET["num_query"])
    p.add_argument("--num-gallery", type=int, default=MARKET["num_gallery"])
    p.add_argument("--num-ids", type=int, default=MARKET["num_ids"])
    p.add_argument("--num-cams", type=int, default=MARKET["num_cams"])
    p.add_argument("--dim", type=int, default=3840)
    p.add_argument("--noise", type=float, default=4.0,
                   help="noise std per dim relative to unit identity centres (sets difficulty)")
    p.add_argument("--cam-scale", type=float, default=0.5, help="camera offset std")
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    p.add_argument("--chunk-size", type=int, default=512, help="our query chunk (TEST.CHUNK_SIZE)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every contender")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="MSMT17 scale: 11659 x 82161, 3060 ids, "
                   "15 cameras (fastreid contenders only if --fastreid-max-pairs allows)")
    p.add_argument("--fastreid-max-pairs", type=float, default=4e8,
                   help="skip fastreid contenders above this many query x gallery pairs "
                        "(their dist + argsort need ~12 bytes per pair, plus numpy temporaries)")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["matmul", "ours", "fastreid_py", "fastreid_cy"])
    p.add_argument("--scratch", default="/tmp/eval_bench_scratch",
                   help="folder for the Cython build (and an optional pylib/ with Cython)")
    p.add_argument("--stable-ref", action="store_true",
                   help="fastreid_py ranks with a stable argsort (its default quicksort orders "
                        "equal float32 distances arbitrarily; ours breaks ties by index)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.full:
        for k, v in MSMT17.items():
            setattr(args, k, v)
    if args.worker:
        return worker(args)

    passthrough = ["--num-query", str(args.num_query), "--num-gallery", str(args.num_gallery),
                   "--num-ids", str(args.num_ids), "--num-cams", str(args.num_cams),
                   "--dim", str(args.dim), "--noise", str(args.noise),
                   "--cam-scale", str(args.cam_scale), "--metric", args.metric,
                   "--chunk-size", str(args.chunk_size), "--threads", str(args.threads),
                   "--seed", str(args.seed), "--scratch", args.scratch] + (
                       ["--stable-ref"] if args.stable_ref else [])
    pairs = args.num_query * args.num_gallery
    print(f"eval_bench: Q={args.num_query} G={args.num_gallery} D={args.dim} "
          f"ids={args.num_ids} cams={args.num_cams} metric={args.metric} "
          f"chunk={args.chunk_size} threads={args.threads} "
          f"({2 * pairs * args.dim / 1e12:.2f} TFLOP)")
    os.makedirs(args.scratch, exist_ok=True)
    names = [n for n in ("matmul", "ours", "fastreid_py", "fastreid_cy") if n not in args.skip]
    results = {}
    for n in names:
        if n.startswith("fastreid") and pairs > args.fastreid_max_pairs:
            results[n] = {"error": f"skipped: {pairs:.2e} pairs > --fastreid-max-pairs"}
        else:
            results[n] = run_contender(n, args, passthrough)
        r = results[n]
        if "error" in r:
            print(f"  {n:12s} {r['error']}")
        else:
            print(f"  {n:12s} time {r['time_s']:8.2f} s   peak RSS {r['peak_rss_mb']:8.0f} MB "
                  f"(features loaded: {r['rss_before_mb']:.0f} MB)", flush=True)

    ours = results.get("ours", {})
    failures = []
    if "mAP" in ours:
        print(f"  ours: Rank-1 {ours['cmc'][0] * 100:.4f}  Rank-5 {ours['cmc'][4] * 100:.4f}  "
              f"Rank-10 {ours['cmc'][9] * 100:.4f}  mAP {ours['mAP'] * 100:.4f}  "
              f"mINP {ours['mINP'] * 100:.4f}  valid queries {ours['num_valid']}")
        mm = results.get("matmul", {})
        if "time_s" in mm:
            print(f"  ours / bare matmul time: {ours['time_s'] / mm['time_s']:.3f}x "
                  f"(target <= 1.3x)")
        for n in ("fastreid_py", "fastreid_cy"):
            r = results.get(n, {})
            if "mAP" not in r:
                continue
            tol = 1e-6 if n == "fastreid_py" else 1e-5
            dc = max(abs(a - b) for a, b in zip(ours["cmc"], r["cmc"]))
            dm, di = abs(ours["mAP"] - r["mAP"]), abs(ours["mINP"] - r["mINP"])
            ok = dc <= tol and dm <= tol and di <= tol and ours["num_valid"] == r["num_valid"]
            print(f"  vs {n}: speed-up {r['time_s'] / ours['time_s']:.1f}x, peak RSS "
                  f"{ours['peak_rss_mb'] / r['peak_rss_mb']:.3f} of theirs "
                  f"(above features: {ours['peak_rss_mb'] - ours['rss_before_mb']:.0f} vs "
                  f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB); max |diff| cmc {dc:.1e} "
                  f"mAP {dm:.1e} mINP {di:.1e} -> {'AGREE' if ok else 'DISAGREE'} (tol {tol})")
            if not ok:
                failures.append(n)
    if failures:
        raise SystemExit(f"metrics disagree with {failures}")


if __name__ == "__main__":
    main()
