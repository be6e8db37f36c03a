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

Contenders run interleaved in rounds (order rotating), each in a fresh subprocess; medians
(and the fastest round) are reported.  Memory: "working memory" = peak RSS during the timed
work (VmHWM reset after loading) minus the RSS after imports + features; "total peak" = the
process's lifetime peak RSS (imports ~0.8 GB, features included).  See docs/evaluation.md.

    python bench/eval_bench.py                 # Market-1501-sized, all contenders, ~3 min
    python bench/eval_bench.py --num-query 11659 --num-gallery 82161 --skip fastreid_py
    python bench/eval_bench.py --full          # MSMT17 scale (ours + matmul; fastreid where
                                               # --fastreid-max-pairs allows), ~6-8 min
    python bench/eval_bench.py --full --device cuda   # the same on the GPU (matmul + ours)

``--device cuda``: features are generated on the GPU (same seed, other numbers than on CPU)
and both contenders start from GPU-resident features after a warm-up (cuBLAS start-up, the
first chunk): ``matmul`` is then the bare fp32 product (TF32 off, as the evaluator's), ``ours``
``evaluate_ranking(device="cuda")``; times are wall times with ``torch.cuda.synchronize``;
memory is ``max_memory_allocated`` during the timed work (GPU) beside the RSS (host).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSMT17 = dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15)
MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6)


# ----------------------------------------------------------------------------- workers
def _status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _rss_mb():
    return _status_mb("VmRSS")


def _reset_peak():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_features(args, device="cpu"):
    """Deterministic structured features: pid centre + camera offset + noise (float32)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(args.seed)
    D = args.dim
    centres = torch.randn(args.num_ids, D, generator=gen, device=device)
    cams = torch.randn(args.num_cams, D, generator=gen, device=device) * args.cam_scale

    def split(n):
        pids = torch.arange(n, device=device) % args.num_ids
        pids = pids[torch.randperm(n, generator=gen, device=device)]
        camids = torch.randint(0, args.num_cams, (n,), generator=gen, device=device)
        feats = torch.empty(n, D, device=device)
        for s in range(0, n, 512):  # small blocks: few transient pages
            e = min(s + 512, n)
            feats[s:e] = centres[pids[s:e]] + cams[camids[s:e]]
            feats[s:e].add_(torch.randn(e - s, D, generator=gen, device=device),
                            alpha=args.noise)
        return feats, pids.cpu().numpy(), camids.cpu().numpy()

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
    cuda = args.device == "cuda"
    if cuda and args.worker.startswith("fastreid"):
        raise SystemExit("--device cuda: the fastreid contenders run on CPU only (use --skip)")
    (qf, qp, qc), (gf, gp, gc) = make_features(args, args.device)
    from gltrans_plugin.evaluation.ranking import evaluate_ranking, full_fp32_matmul

    if cuda:  # warm-up: cuBLAS start-up and a first chunk, outside the timings
        evaluate_ranking(qf[:256].clone(), gf, qp[:256], gp, qc[:256], gc, metric=args.metric,
                         chunk_size=args.chunk_size, device="cuda")
        with full_fp32_matmul("cuda"):
            torch.mm(qf[:256], gf.t())
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    rss_before = _rss_mb()
    hwm_reset = _reset_peak()  # from here VmHWM is the peak of the contender's own work
    out = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    if args.worker == "matmul":
        import torch.nn.functional as F

        if args.metric == "cosine":
            qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
        if cuda:
            torch.cuda.synchronize()
        c0 = time.process_time()
        t0 = time.perf_counter()  # bare product only
        with full_fp32_matmul(args.device):
            d = torch.mm(qf, gf.t())
        out["checksum"] = float(d[0, 0])  # (synchronises on CUDA)
        del d
    elif args.worker == "ours":
        m = evaluate_ranking(qf, gf, qp, gp, qc, gc, metric=args.metric, max_rank=50,
                             chunk_size=args.chunk_size, inplace=True, device=args.device)
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
    if cuda:
        torch.cuda.synchronize()
    out["time_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0  # all threads: robust to other load, not to spin
    if cuda:
        out["gpu_work_mb"] = (torch.cuda.max_memory_allocated() - gpu_before) / 2**20
    # lifetime peak (imports, feature generation and the contender's work)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["rss_before_mb"] = rss_before  # imports + features, before the timed work
    # peak during the timed work only (VmHWM reset after loading); lifetime peak otherwise
    out["work_peak_mb"] = _status_mb("VmHWM") if hwm_reset else out["peak_rss_mb"]
    out["work_mb"] = out["work_peak_mb"] - rss_before
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
    p.add_argument("--chunk-size", type=int, default=1024,
                   help="our query chunk (TEST.CHUNK_SIZE); 1024 amortises the product's "
                        "packing of the gallery (512 costs ~10%% more CPU in the products)")
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
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds of matmul and ours (interleaved; medians are reported)")
    p.add_argument("--fastreid-repeat", type=int, default=1,
                   help="rounds of the fastreid contenders (the python path takes ~1 min)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where features live and distances are computed (matmul and ours)")
    p.add_argument("--json", default="", help="also write the medians and ratios here")
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
                   "--seed", str(args.seed), "--scratch", args.scratch,
                   "--device", args.device] + (
                       ["--stable-ref"] if args.stable_ref else [])
    pairs = args.num_query * args.num_gallery
    print(f"eval_bench {time.strftime('%Y-%m-%d %H:%M')}: Q={args.num_query} "
          f"G={args.num_gallery} D={args.dim} ids={args.num_ids} cams={args.num_cams} "
          f"metric={args.metric} chunk={args.chunk_size} threads={args.threads} "
          f"device={args.device} "
          f"({2 * pairs * args.dim / 1e12:.2f} TFLOP); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    os.makedirs(args.scratch, exist_ok=True)
    skip = set(args.skip) | ({"fastreid_py", "fastreid_cy"} if args.device == "cuda" else set())
    names = [n for n in ("matmul", "ours", "fastreid_py", "fastreid_cy") if n not in skip]
    runs = {n: [] for n in names}
    errors = {}
    for n in names:
        if n.startswith("fastreid") and pairs > args.fastreid_max_pairs:
            errors[n] = f"skipped: {pairs:.2e} pairs > --fastreid-max-pairs"
    # interleaved rounds, each contender in its own subprocess; the order rotates every round
    for rnd in range(max(args.repeat, args.fastreid_repeat)):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for n in order:
            limit = args.fastreid_repeat if n.startswith("fastreid") else args.repeat
            if n in errors or rnd >= limit:
                continue
            r = run_contender(n, args, passthrough)
            if "error" in r:
                errors[n] = r["error"]
                print(f"  {n:12s} {r['error']}", flush=True)
                continue
            runs[n].append(r)
            print(f"  round {rnd + 1} {n:12s} time {r['time_s']:8.2f} s (CPU {r['cpu_s']:7.2f} s)"
                  f"   working memory "
                  f"{r['work_mb']:7.0f} MB   peak RSS {r['peak_rss_mb']:7.0f} MB "
                  f"(after loading features: {r['rss_before_mb']:.0f} MB)", flush=True)

    def med(n, k):
        return float(statistics.median(r[k] for r in runs[n]))

    print("medians (working memory = peak RSS during the timed work minus RSS after the "
          "imports and features were loaded; total = the process's lifetime peak RSS, which "
          "includes ~0.8 GB of imported libraries and the features):")
    for n in names:
        if runs[n]:
            print(f"  {n:12s} time {med(n, 'time_s'):8.2f} s (n={len(runs[n])}, CPU "
                  f"{med(n, 'cpu_s'):7.2f} s)   working "
                  f"memory {med(n, 'work_mb'):7.0f} MB   total peak {med(n, 'peak_rss_mb'):7.0f}"
                  f" MB")
        else:
            print(f"  {n:12s} {errors.get(n, 'not run')}")

    failures = []
    summary = {"device": args.device, "num_query": args.num_query,
               "num_gallery": args.num_gallery, "dim": args.dim, "errors": errors,
               "median_s": {n: med(n, "time_s") for n in names if runs[n]}}
    if args.device == "cuda" and runs.get("ours"):
        summary["ours_gpu_work_mb"] = med("ours", "gpu_work_mb")
        print(f"  ours on the GPU: working memory {summary['ours_gpu_work_mb']:.0f} MB "
              f"(max_memory_allocated during the timed work)")
    if runs.get("ours"):
        summary["metrics"] = {k: runs["ours"][0][k] for k in ("mAP", "mINP", "num_valid")}
        summary["metrics"]["rank1"] = runs["ours"][0]["cmc"][0]
    if runs.get("ours") and runs.get("matmul"):
        summary["ours_over_matmul_x"] = med("ours", "time_s") / med("matmul", "time_s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if runs.get("ours"):
        ours = runs["ours"][0]
        print(f"  ours: Rank-1 {ours['cmc'][0] * 100:.4f}  Rank-5 {ours['cmc'][4] * 100:.4f}  "
              f"Rank-10 {ours['cmc'][9] * 100:.4f}  mAP {ours['mAP'] * 100:.4f}  "
              f"mINP {ours['mINP'] * 100:.4f}  valid queries {ours['num_valid']}")
        t_ours = med("ours", "time_s")
        if runs.get("matmul"):
            t_mm = med("matmul", "time_s")
            ratio = t_ours / t_mm
            best = min(r["time_s"] for r in runs["ours"]) / min(
                r["time_s"] for r in runs["matmul"])
            print(f"  [target 1] ours / bare fp32 matmul: {ratio:.3f}x wall (target <= 1.3x: "
                  f"{'MET' if ratio <= 1.3 else 'NOT MET'}); CPU time "
                  f"{med('ours', 'cpu_s') / med('matmul', 'cpu_s'):.3f}x; fastest round of "
                  f"each {best:.3f}x (on a shared machine the CPU and fastest-round ratios are "
                  f"the stable ones)")
        if args.full:
            tot = med("ours", "peak_rss_mb")
            print(f"  [target 2] ours total peak RSS {tot / 1024:.2f} GB (target < 3 GB: "
                  f"{'MET' if tot < 3072 else 'NOT MET'}); working memory "
                  f"{med('ours', 'work_mb'):.0f} MB")
        for n in ("fastreid_py", "fastreid_cy"):
            if not runs.get(n):
                continue
            r = runs[n][0]
            tol = 1e-6 if n == "fastreid_py" else 1e-5
            for o in runs["ours"]:  # every run of ours must give the same numbers
                if (o["cmc"], o["mAP"], o["mINP"]) != (ours["cmc"], ours["mAP"], ours["mINP"]):
                    failures.append("ours (runs differ)")
            dc = max(abs(a - b) for a, b in zip(ours["cmc"], r["cmc"]))
            dm, di = abs(ours["mAP"] - r["mAP"]), abs(ours["mINP"] - r["mINP"])
            ok = dc <= tol and dm <= tol and di <= tol and ours["num_valid"] == r["num_valid"]
            speed = med(n, "time_s") / t_ours
            goal = 20.0 if n == "fastreid_py" else 2.0
            w_ours, w_theirs = med("ours", "work_mb"), med(n, "work_mb")
            t_ours_tot, t_theirs_tot = med("ours", "peak_rss_mb"), med(n, "peak_rss_mb")
            print(f"  [target 3] vs {n}: speed-up {speed:.1f}x (target >= {goal:g}x: "
                  f"{'MET' if speed >= goal else 'NOT MET'}); working memory {w_ours:.0f} vs "
                  f"{w_theirs:.0f} MB = {w_ours / w_theirs:.3f} of theirs (target <= 0.25: "
                  f"{'MET' if w_ours <= 0.25 * w_theirs else 'NOT MET'}); total peak "
                  f"{t_ours_tot:.0f} vs {t_theirs_tot:.0f} MB = "
                  f"{t_ours_tot / t_theirs_tot:.3f}")
            if runs.get("matmul"):
                print(f"      (ceiling for any evaluator that computes the fp32 product: "
                      f"{n} / bare matmul = {med(n, 'time_s') / med('matmul', 'time_s'):.1f}x)")
            print(f"      metrics: max |diff| cmc {dc:.1e} mAP {dm:.1e} mINP {di:.1e} -> "
                  f"{'AGREE' if ok else 'DISAGREE'} (tol {tol})")
            if not ok:
                failures.append(n)
    if failures:
        raise SystemExit(f"metrics disagree: {failures}")


if __name__ == "__main__":
    main()
