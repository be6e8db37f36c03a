"""Chunked exact ranking vs fastreid's evaluate_rank; re-ranking / AQE vs fastreid; flip test;
evaluator API; retrieval index round trip."""
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import gltrans_plugin  # noqa: F401  (fastreid compat first)

warnings.simplefilter("ignore", UserWarning)
import fastreid.evaluation.rank as fr_rank  # noqa: E402
from fastreid.config import get_cfg  # noqa: E402
from fastreid.evaluation.query_expansion import aqe as fr_aqe  # noqa: E402
from fastreid.utils.compute_dist import build_dist, compute_jaccard_distance  # noqa: E402

from gltrans_plugin.config import add_gltrans_config  # noqa: E402
from gltrans_plugin.evaluation.evaluator import ChunkedReidEvaluator  # noqa: E402
from gltrans_plugin.evaluation.index import RetrievalIndex  # noqa: E402
from gltrans_plugin.evaluation.inference import flip_features, inference_on_dataset  # noqa: E402
from gltrans_plugin.evaluation.ranking import evaluate_ranking, rank_metrics_from_distmat  # noqa: E402
from gltrans_plugin.evaluation.rerank import (  # noqa: E402
    aqe,
    jaccard_rows,
    k_reciprocal_distance,
    k_reciprocal_weights,
)


class _StableNumpy(types.ModuleType):
    """numpy with a stable argsort: fastreid's own code made deterministic under ties."""

    def __getattr__(self, k):
        return getattr(np, k)

    @staticmethod
    def argsort(a, axis=-1):
        return np.argsort(a, axis=axis, kind="stable")


def reference(distmat, qp, gp, qc, gc, max_rank, stable):
    if stable:
        orig = fr_rank.np
        fr_rank.np = _StableNumpy("np")
        try:
            return fr_rank.evaluate_rank(distmat, qp, gp, qc, gc, max_rank, use_cython=False)
        finally:
            fr_rank.np = orig
    return fr_rank.evaluate_rank(distmat, qp, gp, qc, gc, max_rank, use_cython=False)


def assert_same(ours, ref):
    cmc, ap, inp = ref
    np.testing.assert_array_equal(ours["cmc"], np.asarray(cmc, dtype=np.float32))
    np.testing.assert_allclose(ours["all_AP"], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["all_INP"], inp, rtol=0, atol=1e-12)


def _case(rng, ties):
    Q, G, D = int(rng.integers(1, 40)), int(rng.integers(12, 150)), 16
    npid, ncam = int(rng.integers(2, 10)), int(rng.integers(1, 4))
    ids = (rng.integers(0, npid, Q), rng.integers(0, npid, G), rng.integers(0, ncam, Q),
           rng.integers(0, ncam, G))
    if ties:  # 4 entries of +-1: cosine and euclidean distances are exact, many ties
        def f(n):
            x = np.zeros((n, D), np.float32)
            for i in range(n):
                x[i, rng.choice(D, 4, replace=False)] = rng.choice([-1, 1], 4)
            return torch.from_numpy(x)
        return f(Q), f(G), ids
    return torch.randn(Q, D), torch.randn(G, D), ids


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("ties", [False, True])
def test_equals_fastreid_evaluate_rank(metric, ties):
    rng = np.random.default_rng(0 if ties else 1)
    checked = 0
    for _ in range(40):
        q, g, (qp, gp, qc, gc) = _case(rng, ties)
        dm = build_dist(q, g, metric)
        try:
            ref = reference(dm, qp, gp, qc, gc, 10, stable=ties)
        except AssertionError:  # fastreid: no query has a valid match
            with pytest.raises(ValueError, match="no query has a valid match"):
                evaluate_ranking(q, g, qp, gp, qc, gc, metric=metric, max_rank=10)
            continue
        except ValueError:  # fastreid: a row with < max_rank valid items makes ragged CMC
            continue
        for cs in (1, 7, 1000):
            assert_same(evaluate_ranking(q, g, qp, gp, qc, gc, metric=metric, max_rank=10,
                                         chunk_size=cs), ref)
        assert_same(rank_metrics_from_distmat(dm, qp, gp, qc, gc, max_rank=10, chunk_size=5),
                    ref)
        checked += 1
    assert checked > 15


def test_adversarial_cases():
    # all gallery items at the same distance: ties broken by gallery index (stable argsort)
    q = torch.ones(3, 4)
    g = torch.ones(9, 4)
    qp, qc = np.array([0, 1, 2]), np.array([0, 0, 1])
    gp, gc = np.array([5, 0, 0, 1, 5, 1, 2, 2, 0]), np.array([0, 0, 1, 1, 1, 0, 1, 0, 2])
    dm = build_dist(q, g, "euclidean")
    ref = reference(dm, qp, gp, qc, gc, 5, stable=True)
    ours = evaluate_ranking(q, g, qp, gp, qc, gc, metric="euclidean", max_rank=5, chunk_size=2)
    assert_same(ours, ref)
    # query 1 (pid 1, cam 0): index 5 is junk (same camera), its one match (index 3) is 4th
    np.testing.assert_allclose(ours["all_AP"][1], 1 / 4)
    np.testing.assert_allclose(ours["all_INP"][1], 1 / 4)
    # a query whose matches are all junk (same camera) and a query with no match are skipped
    qp2, qc2 = np.array([0, 7, 1]), np.array([0, 0, 1])
    gp2, gc2 = np.array([0, 0, 1, 3]), np.array([0, 0, 0, 1])
    q2, g2 = torch.randn(3, 4), torch.randn(4, 4)
    dm2 = build_dist(q2, g2, "cosine")
    ours = evaluate_ranking(q2, g2, qp2, gp2, qc2, gc2, max_rank=3)
    assert_same(ours, reference(dm2, qp2, gp2, qc2, gc2, 3, stable=False))
    assert ours["num_valid"] == 1 and list(ours["valid_query"]) == [False, False, True]
    # single gallery item
    ours = evaluate_ranking(torch.randn(2, 4), torch.randn(1, 4), [0, 0], [0], [1, 0], [1],
                            max_rank=50)
    assert ours["num_valid"] == 1 and ours["cmc"].tolist() == [1.0]
    # -0.0 and 0.0 are the same distance
    d = torch.tensor([[0.0, -0.0, 1.0]])
    m = rank_metrics_from_distmat(d, [0], [1, 0, 0], [0], [1, 1, 1], max_rank=3)
    np.testing.assert_allclose(m["all_AP"], [(1 / 2 + 2 / 3) / 2])


def test_errors():
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(torch.full((2, 3), float("nan")), torch.randn(3, 3), [0, 1], [0, 1, 1],
                         [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="TEST.CHUNK_SIZE"):
        evaluate_ranking(torch.randn(2, 3), torch.randn(3, 3), [0, 1], [0, 1, 1], [0, 0],
                         [1, 1, 1], chunk_size=0)
    with pytest.raises(ValueError, match="metric"):
        evaluate_ranking(torch.randn(2, 3), torch.randn(3, 3), [0, 1], [0, 1, 1], [0, 0],
                         [1, 1, 1], metric="jaccard")


def _tie_features(rng, n, D=16):
    """4 entries of +-1 per row: exact cosine / euclidean distances with many ties."""
    x = np.zeros((n, D), np.float32)
    for i in range(n):
        x[i, rng.choice(D, 4, replace=False)] = rng.choice([-1, 1], 4)
    return torch.from_numpy(x)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("ties", [False, True])
def test_threaded_and_overlapped_paths_identical(metric, ties, monkeypatch):
    import gltrans_plugin.evaluation.ranking as R

    rng = np.random.default_rng(7)
    Q, G = 70, 300
    q, g = (_tie_features(rng, Q), _tie_features(rng, G)) if ties else (torch.randn(Q, 16),
                                                                      torch.randn(G, 16))
    qp, gp = rng.integers(0, 9, Q), rng.integers(0, 9, G)
    qc, gc = rng.integers(0, 3, Q), rng.integers(0, 3, G)
    dm = build_dist(q, g, metric)
    ref = reference(dm, qp, gp, qc, gc, 20, stable=True)
    base = evaluate_ranking(q, g, qp, gp, qc, gc, metric=metric, max_rank=20, chunk_size=16,
                            threads=1)
    assert_same(base, ref)
    monkeypatch.setattr(R, "_BLOCK_ELEMS", 3 * G)  # 3 rows per block: many blocks per chunk
    runs = [evaluate_ranking(q, g, qp, gp, qc, gc, metric=metric, max_rank=20, chunk_size=16,
                             **kw)
            for kw in (dict(threads=1), dict(threads=2), dict(threads=3, overlap=True),
                       dict(threads=1, overlap=True))]
    runs.append(rank_metrics_from_distmat(lambda s, e: torch.from_numpy(dm[s:e].copy()), qp,
                                          gp, qc, gc, max_rank=20, chunk_size=9, overlap=True,
                                          threads=2))
    runs.append(evaluate_ranking(q, g, qp, gp, qc, gc, metric=metric, max_rank=20,
                                 chunk_size=16))  # default threads
    for m in runs:
        for k in ("cmc", "all_AP", "all_INP", "valid_query"):
            np.testing.assert_array_equal(m[k], base[k])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ranking_equals_fastreid():
    rng = np.random.default_rng(3)
    q, g = torch.randn(50, 32), torch.randn(400, 32)
    qp, gp = rng.integers(0, 10, 50), rng.integers(0, 10, 400)
    qc, gc = rng.integers(0, 3, 50), rng.integers(0, 3, 400)
    for metric in ("cosine", "euclidean"):
        ours = evaluate_ranking(q.cuda(), g.cuda(), qp, gp, qc, gc, metric=metric, max_rank=20,
                                chunk_size=16)
        ref = reference(build_dist(q.cuda(), g.cuda(), metric), qp, gp, qc, gc, 20, False)
        np.testing.assert_array_equal(ours["cmc"], np.asarray(ref[0], dtype=np.float32))
        np.testing.assert_allclose(ours["all_AP"], ref[1], rtol=0, atol=1e-12)


def test_ordered_bits_sort_like_floats():
    import gltrans_plugin.evaluation.ranking as R

    x = np.array([-np.inf, -3e38, -2.0, -1.0, -1e-40, -0.0, 0.0, 1e-45, 1e-40, 0.5, 1.0,
                  2.0, 3e38, np.inf], dtype=np.float32)
    b = R._ordered_bits(x)
    assert b.dtype == np.int64 and (b >= 0).all() and (b < 1 << 32).all()
    assert (np.diff(b[[0, 1, 2, 3, 4, 5]]) > 0).all() and b[5] == b[6]  # -0.0 == 0.0
    assert (np.diff(b[6:]) > 0).all()
    y = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(np.argsort(R._ordered_bits(y), kind="stable"),
                                  np.argsort(y, kind="stable"))


@pytest.mark.parametrize("k1,k2", [(20, 6), (5, 1), (8, 3)])
def test_k_reciprocal_equals_fastreid(k1, k2):
    torch.manual_seed(k1)
    x = torch.randn(60, 16)
    ref = compute_jaccard_distance(x, k1=k1, k2=k2, search_option=3)  # fastreid, CPU faiss
    V = k_reciprocal_weights(x, k1, k2)
    np.testing.assert_allclose(jaccard_rows(V, 0, 60).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(jaccard_rows(V, 10, 25, col_start=30).numpy(), ref[10:25, 30:],
                               atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rerank_distance_equals_fastreid_evaluator_formula(metric):
    torch.manual_seed(0)
    q, g = torch.randn(20, 16), torch.randn(45, 16)
    qq, gg = q, g
    if metric == "cosine":
        qq, gg = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    jac = compute_jaccard_distance(torch.cat([qq, gg]), k1=8, k2=3, search_option=3)[:20, 20:]
    ref = jac * 0.7 + build_dist(q, g, metric) * 0.3
    fn = k_reciprocal_distance(q, g, 8, 3, 0.3, metric)
    ours = torch.cat([fn(0, 7), fn(7, 20)]).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_aqe_equals_fastreid():
    torch.manual_seed(0)
    q, g = torch.randn(30, 16), torch.randn(50, 16)
    a, b = fr_aqe(q, g, 2, 5, 3.0)
    c, d = aqe(q, g, 2, 5, 3.0, chunk_size=7)
    np.testing.assert_allclose(c.numpy(), a.numpy(), atol=1e-6)
    np.testing.assert_allclose(d.numpy(), b.numpy(), atol=1e-6)


class InPlaceNormModel(nn.Module):
    """Like fastreid's Baseline: normalises batched_inputs["images"] IN PLACE, then pools."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([2.0, 4.0, 8.0]).view(1, 3, 1, 1))
        self.w = nn.Parameter(torch.randn(3 * 4, 5))

    def forward(self, batched_inputs):
        images = batched_inputs["images"]
        images.sub_(self.mean).div_(self.std)  # in place, as Baseline.preprocess_image
        x = torch.nn.functional.adaptive_avg_pool2d(images, (2, 2)) * torch.arange(
            1.0, 5.0).view(1, 1, 2, 2)  # not flip invariant
        return x.flatten(1) @ self.w


def test_flip_test_does_not_normalise_twice():
    torch.manual_seed(0)
    model = InPlaceNormModel().eval()
    raw = torch.rand(2, 3, 8, 4) * 50
    inputs = {"images": raw.clone(), "targets": torch.tensor([0, 1]),
              "camids": torch.tensor([0, 1])}
    out = flip_features(model, inputs, flip_test=True)
    expected = (model({"images": raw.clone()}) + model({"images": raw.flip(dims=[3])})) / 2
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(inputs["images"], raw)  # caller's batch untouched
    # fastreid's way (same dict, flipped in place after the first call) differs
    fr_inputs = {"images": raw.clone()}
    o1 = model(fr_inputs)
    fr_inputs["images"] = fr_inputs["images"].flip(dims=[3])
    assert not torch.allclose((o1 + model(fr_inputs)) / 2, expected, atol=1e-3)


def _cfg(**test):
    cfg = add_gltrans_config(get_cfg())
    cfg.TEST.CHUNK_SIZE = 3  # noqa (key requested from the lead; set here explicitly)
    for k, v in test.items():
        setattr(cfg.TEST, k, v)
    return cfg


def test_evaluator_api_and_inference():
    torch.manual_seed(0)
    nq, ng, D = 6, 20, 5
    feats = torch.randn(nq + ng, D)
    pids = torch.cat([torch.arange(nq) % 4, torch.arange(ng) % 4])
    camids = torch.cat([torch.zeros(nq, dtype=torch.long), torch.arange(ng) % 3])
    batches = [{"images": feats[i:i + 4].view(-1, D, 1, 1).expand(-1, D, 2, 2).clone(),
                "targets": pids[i:i + 4], "camids": camids[i:i + 4]}
               for i in range(0, nq + ng, 4)]

    class Pool(nn.Module):
        def forward(self, x):
            return x["images"].mean(dim=(2, 3))

    ev = ChunkedReidEvaluator(_cfg(), nq)
    res = inference_on_dataset(Pool(), batches, ev, flip_test=True, progress=False)
    assert list(res) == ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"]
    cmc, ap, inp = fr_rank.evaluate_rank(build_dist(feats[:nq], feats[nq:], "cosine"),
                                         pids[:nq].numpy(), pids[nq:].numpy(),
                                         camids[:nq].numpy(), camids[nq:].numpy(),
                                         max_rank=10, use_cython=False)
    assert res["Rank-1"] == pytest.approx(cmc[0] * 100, abs=1e-4)
    assert res["mAP"] == pytest.approx(np.mean(ap) * 100, abs=1e-9)
    assert res["mINP"] == pytest.approx(np.mean(inp) * 100, abs=1e-9)
    assert res["metric"] == pytest.approx((np.mean(ap) + cmc[0]) / 2 * 100, abs=1e-4)
    # AQE + re-ranking through the evaluator run on CPU and return the same keys
    cfg = _cfg()
    cfg.TEST.AQE.ENABLED = True
    cfg.TEST.AQE.QE_K = 3
    cfg.TEST.RERANK.ENABLED = True
    cfg.TEST.RERANK.K1 = 5
    cfg.TEST.RERANK.K2 = 2
    ev = ChunkedReidEvaluator(cfg, nq)
    for b in batches:
        ev.process(b, b["images"].mean(dim=(2, 3)))
    assert set(ev.evaluate()) == set(res)
    with pytest.raises(ValueError, match="before any process"):
        ev.evaluate()


def test_index_round_trip(tmp_path):
    torch.manual_seed(0)
    g = torch.randn(30, 8)
    idx = RetrievalIndex(8, "cosine").add(g, [f"g{i}.jpg" for i in range(30)], list(range(30)),
                                          [0] * 30)
    idx.save(str(tmp_path / "ix"))
    loaded = RetrievalIndex.load(str(tmp_path / "ix"))
    q = g[[4, 17]] + 0.01 * torch.randn(2, 8)
    hits = loaded.search(q, k=3)
    assert [h[0]["path"] for h in hits] == ["g4.jpg", "g17.jpg"]
    ref = build_dist(q, g, "cosine")
    for r, h in enumerate(hits):
        order = np.argsort(ref[r])[:3]
        assert [x["index"] for x in h] == order.tolist()
        np.testing.assert_allclose([x["distance"] for x in h], ref[r][order], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="tools/search.py index"):
        RetrievalIndex.load(str(tmp_path / "missing"))
