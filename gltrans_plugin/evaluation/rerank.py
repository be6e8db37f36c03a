"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) and average query expansion, on CPU, chunked.

Shape letters: Q queries, G gallery, N = Q + G, D feature size, C rows of one chunk,
K1 / K2 the re-ranking neighbourhood sizes, E entries of the sparse weight matrix V.

Both follow fast-reid's own code, which its ``ReidEvaluator`` uses
(``fastreid.utils.compute_dist.compute_jaccard_distance`` and
``fastreid.evaluation.query_expansion.aqe``), but neither needs CUDA nor an N x N matrix:

* neighbours come from a faiss-cpu ``IndexFlatL2`` search (as fast-reid's CPU option);
* the weights V (N x N) are a scipy CSR matrix with about N * K1 entries, not a dense array;
* the Jaccard distance is produced for a chunk of query rows at a time, by joining the chunk's
  entries of V with V's columns, and handed to the chunked ranking as a callable.

Values equal fast-reid's up to float32 summation order (tests: 1e-5).
"""
import logging
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .ranking import compute_distances, prepare_features

logger = logging.getLogger(__name__)

__all__ = ["aqe", "k_reciprocal_weights", "jaccard_rows", "k_reciprocal_distance"]


@torch.no_grad()
def aqe(query_feat: torch.Tensor, gallery_feat: torch.Tensor, qe_times: int = 1,
        qe_k: int = 10, alpha: float = 3.0, chunk_size: int = 1024):
    """Average query expansion as fast-reid's ``aqe``, in row chunks (no N x N similarity).

    Each feature becomes the mean over its ``qe_k`` most similar features (itself included)
    of ``feature * similarity ** alpha``; repeated ``qe_times`` times."""
    if qe_k < 1 or qe_times < 0:
        raise ValueError(f"AQE needs QE_K >= 1 and QE_TIME >= 0, got {qe_k}, {qe_times}")
    num_query = query_feat.shape[0]
    all_feat = torch.cat((query_feat, gallery_feat), dim=0).to(torch.float32)  # N x D
    n = all_feat.shape[0]
    if qe_k > n:
        raise ValueError(f"TEST.AQE.QE_K={qe_k} exceeds the {n} query + gallery features")
    norm_feat = F.normalize(all_feat, p=2, dim=1)
    for _ in range(qe_times):
        new_feat = torch.empty_like(all_feat)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            sims = torch.mm(norm_feat[s:e], norm_feat.t())  # C x N
            w, idx = torch.topk(sims, qe_k, dim=1)  # C x K
            del sims
            w = w.pow(alpha).unsqueeze(2)  # C x K x 1
            new_feat[s:e] = (all_feat[idx] * w).mean(dim=1)  # C x K x D -> C x D
        all_feat = new_feat
        norm_feat = F.normalize(all_feat, p=2, dim=1)
    return all_feat[:num_query], all_feat[num_query:]


def _knn(features: torch.Tensor, k: int) -> np.ndarray:
    """N x k indices of the k nearest (squared L2) neighbours, faiss-cpu (self included)."""
    import faiss

    x = np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, rank = index.search(x, k)
    return rank.astype(np.int64)


def _reciprocal(rank: np.ndarray, k: int, chunk: int = 8192) -> np.ndarray:
    """N x m (m = min(k + 1, K1)) forward neighbours of each row that also list the row in
    their own first ``k + 1``; the others are -1 (fast-reid's ``k_reciprocal_neigh``)."""
    n = rank.shape[0]
    fwd = rank[:, : k + 1]  # N x m
    out = np.full_like(fwd, -1)
    for s in range(0, n, chunk):
        f = fwd[s: s + chunk]
        back = rank[f][:, :, : k + 1]  # C x m x m
        ok = (back == np.arange(s, s + len(f))[:, None, None]).any(2)  # C x m
        out[s: s + chunk] = np.where(ok, f, -1)
    return out


@torch.no_grad()
def k_reciprocal_weights(features: torch.Tensor, k1: int = 20, k2: int = 6):
    """Sparse V (N x N CSR, float32) of k-reciprocal re-ranking, after k2 query expansion."""
    import scipy.sparse as sp

    features = features.to(torch.float32).contiguous()
    n = features.shape[0]
    if k1 < 1 or k2 < 1:
        raise ValueError(f"re-ranking needs K1, K2 >= 1, got {k1}, {k2}")
    if k1 > n:
        raise ValueError(f"TEST.RERANK.K1={k1} exceeds the {n} query + gallery features")
    rank = _knn(features, k1)  # N x K1
    nn_k1 = _reciprocal(rank, k1)  # N x K1
    nn_half = _reciprocal(rank, int(np.around(k1 / 2)))  # N x H

    # expansion: add a candidate's half-size set when 2/3 of it is in the row's set
    rows_l, cols_l = [], []
    for s in range(0, n, 4096):
        a = nn_k1[s: s + 4096]  # C x K1
        cand = nn_half[np.maximum(a, 0)]  # C x K1 x H
        cand = np.where((a >= 0)[:, :, None], cand, -1)
        size = (cand >= 0).sum(2)  # C x K1
        inter = ((cand[..., None] == a[:, None, None, :]) & (cand[..., None] >= 0)).any(3)
        sel = inter.sum(2) > 2.0 / 3 * size  # C x K1
        cand = np.where(sel[:, :, None], cand, -1).reshape(len(a), -1)  # C x (K1 * H)
        allc = np.sort(np.concatenate([a, cand], axis=1), axis=1)  # C x L
        keep = allc >= 0
        keep[:, 1:] &= allc[:, 1:] != allc[:, :-1]  # unique per row
        r, c = np.nonzero(keep)
        rows_l.append(r + s)
        cols_l.append(allc[r, c])
    rows = np.concatenate(rows_l)
    cols = np.concatenate(cols_l)  # E, grouped by row (ascending)

    # V[i, j] = softmax over the row's set of -|x_i - x_j|^2
    sq = features.pow(2).sum(1)
    d = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), 16384):
        r = torch.from_numpy(rows[s: s + 16384])
        c = torch.from_numpy(cols[s: s + 16384])
        dot = (features[r] * features[c]).sum(1)  # E'
        d[s: s + 16384] = (sq[r] + sq[c] - 2 * dot).numpy()
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    neg = -d
    neg -= np.repeat(np.maximum.reduceat(neg, starts), np.diff(np.r_[starts, len(rows)]))
    w = np.exp(neg)
    w /= np.repeat(np.add.reduceat(w, starts), np.diff(np.r_[starts, len(rows)]))
    V = sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n, n))

    if k2 != 1:  # V_qe[i] = mean of V over the row's first k2 neighbours
        kk = rank[:, :k2]
        A = sp.csr_matrix((np.full(kk.size, 1.0 / kk.shape[1], dtype=np.float32),
                           (np.repeat(np.arange(n), kk.shape[1]), kk.reshape(-1))),
                          shape=(n, n))
        V = (A @ V).tocsr()
    V.eliminate_zeros()
    return V


def jaccard_rows(V, start: int, end: int, col_start: int = 0, csc=None) -> torch.Tensor:
    """Jaccard distance of rows ``start:end`` against columns ``col_start:`` (C x (N - col_start))
    from the sparse V: ``1 - m / (2 - m)``, m = sum_k min(V[i, k], V[j, k]), clipped at 0."""
    n = V.shape[0]
    csc = V.tocsc() if csc is None else csc  # pass it in to convert once
    sub = V[start:end].tocoo()
    i, k, v = sub.row, sub.col, sub.data  # chunk entries
    cnt = np.diff(csc.indptr)[k]
    rep_i = np.repeat(i, cnt)
    rep_v = np.repeat(v, cnt)
    pos = np.repeat(csc.indptr[k] - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
    j = csc.indices[pos]
    m = np.minimum(rep_v, csc.data[pos])
    keep = j >= col_start
    width = n - col_start
    acc = torch.zeros((end - start) * width, dtype=torch.float32)  # C x (N - col_start)
    acc.index_add_(0, torch.from_numpy(rep_i[keep].astype(np.int64) * width
                                       + (j[keep] - col_start)), torch.from_numpy(m[keep]))
    acc = acc.view(end - start, width)
    jac = 1 - acc / (2 - acc)
    return jac.clamp_(min=0.0)


@torch.no_grad()
def k_reciprocal_distance(q_feat: torch.Tensor, g_feat: torch.Tensor, k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3, metric: str = "cosine") -> Callable:
    """fast-reid's re-ranked distance, ``jaccard * (1 - lambda) + dist * lambda``, as a callable
    ``(start, end) -> (end - start) x G`` tensor for the chunked ranking.

    ``dist`` is ``metric``'s distance of the given features; the Jaccard part uses the features
    L2-normalised when ``metric`` is cosine (as fast-reid's evaluator)."""
    qp, gp = prepare_features(q_feat, metric), prepare_features(g_feat, metric)
    jf = torch.cat([qp, gp], 0) if metric == "cosine" else torch.cat([q_feat, g_feat], 0)
    logger.info("k-reciprocal re-ranking: %d features, k1=%d k2=%d", len(jf), k1, k2)
    V = k_reciprocal_weights(jf.to(torch.float32), k1, k2)
    csc = V.tocsc()
    nq = len(qp)
    g_sq = gp.pow(2).sum(1) if metric == "euclidean" else None

    def dist_fn(s, e):
        jac = jaccard_rows(V, s, e, col_start=nq, csc=csc)  # C x G
        d = compute_distances(qp[s:e], gp, metric, g_sq)
        return jac.mul_(1 - lambda_value).add_(d, alpha=lambda_value)

    return dist_fn
