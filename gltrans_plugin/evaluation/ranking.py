"""Exact Re-ID ranking metrics (CMC, mAP, mINP) in query chunks, without a Q x G matrix or a sort.

Shape letters: Q queries, G gallery items, D feature size, C queries in one chunk, P same-identity
gallery items of the chunk's queries (all rows together), M candidate gallery items of a chunk.

What is computed is exactly what ``fastreid.evaluation.rank.evaluate_rank`` (market1501 rule)
reports:

* a gallery item with the query's identity *and* camera is junk: removed from that query's list;
* a query whose remaining list holds no item of its identity is skipped (not counted);
* CMC@k = share of counted queries whose first true match is within the first k;
  AP = mean over true matches of (matches so far / position); INP = matches / position of the
  last match; mAP and mINP are means over counted queries.

A query's metrics only need the position of each of its true matches among the valid (non-junk)
items.  Position of a match = number of valid items ranked before it, so per chunk we

1. compute the chunk's distances (``torch.mm``, the same formula as fastreid's ``build_dist``);
2. gather the distances of the chunk's same-identity items (few per query);
3. keep only the valid items at or below each query's largest true-match distance
   (one comparison pass + ``nonzero``; for a useful model most of the row is farther away);
4. place each kept negative among its query's sorted true matches with one ``searchsorted`` on
   exact int64 keys ``(row, distance bits, gallery index)``; a ``bincount`` + ``cumsum`` turns
   that into the number of negatives ranked before every true match.

Ties.  fastreid ranks a row with ``np.argsort`` (quicksort), so the order of items at exactly
equal distance is implementation-defined there.  Here ties are broken by gallery index (the
lower index ranks first): the result is exactly that of fastreid's code with
``np.argsort(..., kind="stable")``, and equals fastreid's whenever its argsort keeps equal
distances in index order (always when no two valid items of a row share a distance).
``-0.0`` and ``0.0`` are equal distances; non-finite features raise ``ValueError``.

Memory: features + O(C x G) per chunk (distances, a mask, the candidates), never Q x G.
"""
import logging
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["RankMetrics", "compute_distances", "evaluate_ranking", "rank_metrics_from_distmat"]

_METRICS = ("cosine", "euclidean")


class RankMetrics(dict):
    """Plain dict with keys ``cmc`` (float32 array of ``max_rank``), ``all_AP``, ``all_INP``
    (float64 arrays over counted queries, in query order), ``num_valid`` (int) and
    ``valid_query`` (bool array of Q)."""


def prepare_features(feats: torch.Tensor, metric: str, inplace: bool = False) -> torch.Tensor:
    """Float32 features ready for :func:`compute_distances` (L2-normalised for cosine).

    ``inplace``: normalise a float32 ``feats`` in place (no N x D copy; same bits as
    ``F.normalize``).  Raises ValueError on non-finite values."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}; set TEST.METRIC.")
    if feats.dim() != 2:
        raise ValueError(f"features must be N x D, got shape {tuple(feats.shape)}")
    feats = feats.to(torch.float32)
    norms = torch.linalg.vector_norm(feats, dim=1)  # N; NaN / Inf in a row shows here
    if not bool(torch.isfinite(norms).all()):
        raise ValueError("features contain NaN or Inf (or overflow float32); check the model "
                         "/ checkpoint.")
    if metric == "cosine":
        if inplace and feats.is_contiguous():  # F.normalize's division, without the copy
            feats.div_(norms.clamp_min(1e-12).unsqueeze(1))
        else:
            feats = F.normalize(feats, p=2, dim=1)  # fastreid's formula, bit for bit
    return feats.contiguous()


def compute_distances(q: torch.Tensor, g: torch.Tensor, metric: str,
                      g_sqnorm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """C x G distances with fastreid's ``build_dist`` formula on prepared features.

    cosine: ``1 - q @ g.T`` (q, g already normalised); euclidean: ``|q|^2 + |g|^2 - 2 q @ g.T``
    (squared, not clamped, as fastreid)."""
    scores, sim = _chunk_scores(q, g, metric, g_sqnorm)
    return scores.neg_().add_(1.0) if sim else scores


def _chunk_scores(q: torch.Tensor, g: torch.Tensor, metric: str,
                  g_sqnorm: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
    """(C x G tensor, is_similarity): cosine similarities ``q @ g.T`` (the distance ``1 - s``
    is formed later, only where needed) or euclidean distances as fastreid's ``build_dist``.
    ``out``: an optional C x G float32 buffer to reuse (saves page faults per chunk)."""
    if out is None:
        out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=q.device)
    if metric == "cosine":
        return torch.mm(q, g.t(), out=out), True  # C x G
    if g_sqnorm is None:
        g_sqnorm = g.pow(2).sum(dim=1)
    q_sq = q.pow(2).sum(dim=1)
    if q.device.type == "cpu":  # numpy: one thread, no OpenMP barrier for a cheap pass
        np.add(q_sq.numpy()[:, None], g_sqnorm.numpy()[None, :], out=out.numpy())
    else:
        torch.add(q_sq.unsqueeze(1), g_sqnorm.unsqueeze(0), out=out)  # C x G
    return out.addmm_(q, g.t(), beta=1, alpha=-2), False


def _ordered_bits(d: np.ndarray) -> np.ndarray:
    """float32 -> int64 in [0, 2^32) with the same order (and -0.0 == 0.0)."""
    d = np.ascontiguousarray(d, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 = +0.0
    i = d.view(np.int32).astype(np.int64)
    i = np.where(i < 0, i ^ 0x7FFFFFFF, i)  # negative floats: reverse their order
    return i + (1 << 31)


class _SamePidIndex:
    """Gallery items grouped by identity, to list a query's same-pid items without a scan."""

    def __init__(self, g_pids: np.ndarray):
        self.order = np.argsort(g_pids, kind="stable")  # G, ascending pid, then index
        self.sorted_pids = g_pids[self.order]

    def lookup(self, q_pids: np.ndarray):
        """(row, gallery index) of every same-pid pair, grouped by row."""
        lo = np.searchsorted(self.sorted_pids, q_pids, side="left")
        hi = np.searchsorted(self.sorted_pids, q_pids, side="right")
        counts = hi - lo
        rows = np.repeat(np.arange(len(q_pids)), counts)  # P
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        return rows, self.order[np.arange(int(counts.sum())) + starts]


# Bound on the rounding of ``1 - s`` for |1 - s| <= 2: a few ulps of 2.0 (float32).
_SIM_MARGIN = np.float32(4 * np.spacing(np.float32(2.0)))


def _candidates(chunk, thr, sim: bool):
    """Flat indices and distances of the entries at or below each row's threshold.

    ``chunk`` is a C x G tensor of distances, or of similarities when ``sim`` (cosine: the
    distance ``1 - s`` is formed for the kept entries only, bit-identical to forming it
    everywhere).  Runs on the chunk's device; returns numpy arrays."""
    if chunk.device.type == "cpu":
        a = chunk.numpy()
        if sim:
            idx = np.flatnonzero(a >= (np.float32(1.0) - thr - _SIM_MARGIN)[:, None])
            return idx, np.float32(1.0) - a.reshape(-1)[idx]
        idx = np.flatnonzero(a <= thr[:, None])
        return idx, a.reshape(-1)[idx]
    t = torch.from_numpy(thr).to(chunk.device)
    if sim:
        idx = (chunk >= (1.0 - t - float(_SIM_MARGIN)).unsqueeze(1)).view(-1).nonzero()
        idx = idx.squeeze(1)
        return idx.cpu().numpy(), (1.0 - chunk.view(-1)[idx]).cpu().numpy()
    idx = (chunk <= t.unsqueeze(1)).view(-1).nonzero().squeeze(1)
    return idx.cpu().numpy(), chunk.view(-1)[idx].cpu().numpy()


def _chunk_metrics(chunk: torch.Tensor, sim: bool, rows: np.ndarray, cols: np.ndarray,
                   q_pids, q_camids, g_pids, g_camids, gbits: int):
    """Metrics of one chunk.

    chunk: C x G distances (or similarities when ``sim``); (rows, cols): the chunk's same-pid
    pairs (P).  Returns (valid C, first-match position C, AP C, INP C) as numpy arrays."""
    C, G = chunk.shape
    # junk (same pid, same camera) is dropped; what is left of the same-pid pairs are matches
    is_pos = g_camids[cols] != q_camids[rows]
    rows, cols = rows[is_pos], cols[is_pos]
    n_pos = np.bincount(rows, minlength=C)  # C
    valid = n_pos > 0
    first = np.zeros(C, dtype=np.int64)
    ap = np.zeros(C, dtype=np.float64)
    inp = np.zeros(C, dtype=np.float64)
    if rows.size == 0:
        return valid, first, ap, inp

    r_t, c_t = torch.from_numpy(rows).to(chunk.device), torch.from_numpy(cols).to(chunk.device)
    dpos = chunk[r_t, c_t].cpu().numpy()  # P
    if sim:
        dpos = np.float32(1.0) - dpos
    shift = 32 + gbits
    pos_keys = np.sort((rows << shift) | (_ordered_bits(dpos) << gbits) | cols)  # per row asc.
    row_start = np.cumsum(n_pos) - n_pos  # C
    p_rows = pos_keys >> shift
    k_in_row = np.arange(len(pos_keys)) - row_start[p_rows]

    # only valid negatives at or below a row's farthest match move any match down
    thr = np.full(C, -np.inf, dtype=np.float32)
    np.maximum.at(thr, rows, dpos)
    cand, cand_d = _candidates(chunk, thr, sim)  # M
    c_rows, c_cols = np.divmod(cand, G)
    neg = g_pids[c_cols] != q_pids[c_rows]  # same-pid items are matches or junk
    c_keys = np.sort((c_rows[neg] << shift) | (_ordered_bits(cand_d[neg]) << gbits)
                     | c_cols[neg])
    # negatives before each match = keys below it in its row (keys are unique: gallery index)
    before = np.searchsorted(c_keys, pos_keys) - np.searchsorted(c_keys, p_rows << shift)
    rank = (k_in_row + before).astype(np.float64)  # 0-based position among valid items

    np.add.at(ap, p_rows, (k_in_row + 1) / (rank + 1.0))  # precision at each match
    vi = np.flatnonzero(valid)
    ap[vi] /= n_pos[vi]
    first[vi] = rank[row_start[vi]].astype(np.int64)
    inp[vi] = n_pos[vi] / (rank[row_start[vi] + n_pos[vi] - 1] + 1.0)
    return valid, first, ap, inp


def _ranking_loop(num_q: int, score_fn: Callable[[int, int], tuple], q_pids, g_pids,
                  q_camids, g_camids, max_rank: int, chunk_size: int,
                  progress: bool) -> RankMetrics:
    q_pids, g_pids = _ids(q_pids), _ids(g_pids)
    q_camids, g_camids = _ids(q_camids), _ids(g_camids)
    num_g = len(g_pids)
    if len(q_pids) != num_q or len(q_camids) != num_q or len(g_camids) != num_g:
        raise ValueError(f"ids do not match the features: {num_q} queries / {len(q_pids)} pids / "
                         f"{len(q_camids)} camids, {num_g} gallery pids / {len(g_camids)} camids")
    if num_g == 0 or num_q == 0:
        raise ValueError("empty query or gallery set")
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}; set TEST.CHUNK_SIZE.")
    gbits = max(1, int(num_g - 1).bit_length())
    if gbits > 30:
        raise ValueError(f"gallery of {num_g} items is too large for exact int64 keys")
    # int64 key = row | distance bits (32) | gallery index (gbits): rows per chunk are bounded
    chunk_size = min(chunk_size, 1 << (63 - 32 - gbits))
    max_rank = min(max_rank, num_g)
    index = _SamePidIndex(g_pids)

    valid_l, first_l, ap_l, inp_l = [], [], [], []
    starts = range(0, num_q, chunk_size)
    it = starts
    if progress:
        from tqdm import tqdm

        it = tqdm(starts, desc="ranking", unit="chunk", leave=False)
    for s in it:
        e = min(s + chunk_size, num_q)
        scores, sim = score_fn(s, e)
        if tuple(scores.shape) != (e - s, num_g):
            raise ValueError(f"distance chunk has shape {tuple(scores.shape)}, "
                             f"expected {(e - s, num_g)}")
        rows, cols = index.lookup(q_pids[s:e])
        v, f, a, i = _chunk_metrics(scores.to(torch.float32).contiguous(), sim, rows, cols,
                                    q_pids[s:e], q_camids[s:e], g_pids, g_camids, gbits)
        del scores
        valid_l.append(v)
        first_l.append(f)
        ap_l.append(a)
        inp_l.append(i)
    valid = np.concatenate(valid_l)
    first = np.concatenate(first_l)[valid]
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a valid match in the gallery (every query identity is "
                         "missing or only seen by the query's own camera)")
    # fastreid: float32 0/1 CMC rows summed and divided by the float32 count of valid queries
    hits = np.bincount(np.minimum(first, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hits).astype(np.float32) / np.float32(num_valid)
    return RankMetrics(cmc=cmc, all_AP=np.concatenate(ap_l)[valid],
                       all_INP=np.concatenate(inp_l)[valid], num_valid=num_valid,
                       valid_query=valid)


def _ids(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.cpu().numpy()
    return np.asarray(x).astype(np.int64).reshape(-1)


@torch.no_grad()
def evaluate_ranking(q_feats: torch.Tensor, g_feats: torch.Tensor, q_pids, g_pids, q_camids,
                     g_camids, metric: str = "cosine", max_rank: int = 50,
                     chunk_size: int = 512, device=None, progress: bool = False,
                     prepared: bool = False, inplace: bool = False) -> RankMetrics:
    """Exact CMC / AP / INP of ``q_feats`` against ``g_feats`` in query chunks.

    Args:
        q_feats, g_feats: Q x D and G x D features (any float dtype; computed in float32).
        q_pids, g_pids, q_camids, g_camids: 1-D int arrays / tensors.
        metric: "cosine" (1 - cosine similarity) or "euclidean" (squared), as fastreid.
        chunk_size: queries per chunk; memory is about ``chunk_size * G * 9`` bytes.
        device: where distances are computed (default: the features' device).
        prepared: features already went through :func:`prepare_features` (skips a copy).
        inplace: cosine features may be normalised in place (saves a Q x D + G x D copy).
    Returns:
        :class:`RankMetrics` (same numbers as fastreid's ``evaluate_rank``).
    """
    device = torch.device(device) if device is not None else q_feats.device
    if not prepared:
        q_feats = prepare_features(q_feats, metric, inplace)
        g_feats = prepare_features(g_feats, metric, inplace)
    q_feats, g_feats = q_feats.to(device), g_feats.to(device)
    if q_feats.shape[1] != g_feats.shape[1]:
        raise ValueError(f"query features are {q_feats.shape[1]}-d, gallery {g_feats.shape[1]}-d")
    g_sq = g_feats.pow(2).sum(dim=1) if metric == "euclidean" else None
    buf = torch.empty(min(chunk_size, len(q_feats)) * len(g_feats), dtype=torch.float32,
                      device=device)  # reused by every chunk

    def score_fn(s, e):
        out = buf[: (e - s) * len(g_feats)].view(e - s, len(g_feats))  # C x G
        return _chunk_scores(q_feats[s:e], g_feats, metric, g_sq, out=out)

    return _ranking_loop(len(q_feats), score_fn, q_pids, g_pids, q_camids, g_camids,
                         max_rank, chunk_size, progress)


@torch.no_grad()
def rank_metrics_from_distmat(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                              chunk_size: int = 512, progress: bool = False) -> RankMetrics:
    """Same metrics from a given Q x G distance matrix (numpy or tensor), or from a callable
    ``(start, end) -> (end - start) x G tensor`` together with ``len(q_pids)`` queries."""
    if callable(distmat):
        fn, num_q = distmat, len(q_pids)
    else:
        dm = distmat if torch.is_tensor(distmat) else torch.from_numpy(np.asarray(distmat))
        num_q = dm.shape[0]

        def fn(s, e):
            return dm[s:e]

    def score_fn(s, e):
        return torch.as_tensor(fn(s, e)), False

    return _ranking_loop(num_q, score_fn, q_pids, g_pids, q_camids, g_camids, max_rank,
                         chunk_size, progress)


def summarize(metrics: RankMetrics, ranks=(1, 5, 10)) -> Dict[str, float]:
    """fastreid ``ReidEvaluator`` result keys, in percent."""
    cmc = metrics["cmc"]
    mAP = float(np.mean(metrics["all_AP"]))
    mINP = float(np.mean(metrics["all_INP"]))
    res = {}
    for r in ranks:
        res[f"Rank-{r}"] = float(cmc[min(r, len(cmc)) - 1]) * 100
    res["mAP"] = mAP * 100
    res["mINP"] = mINP * 100
    res["metric"] = (mAP + float(cmc[0])) / 2 * 100
    return res
