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

1. compute the chunk's distances (``torch.mm``, the same formula as fastreid's ``build_dist``;
   for cosine the similarities, ``1 - s`` is formed only where it is needed, same bits);
2. gather the distances of the chunk's same-identity items (few per query): matches, junk;
3. order every item by the exact int64 key ``(row, distance bits, gallery index)``; S holds,
   row after row, the sorted keys of the row's matches and a sentinel above the row's keys;
4. scan the chunk in blocks of rows (in threads on CPU): keep the items at or below their row's
   farthest match (one comparison + ``nonzero``; for a useful model most of a row is farther
   away), ``searchsorted`` each kept key into S and ``bincount`` the bins: no sort of the kept
   items and no identity lookup for them;
5. a match's position = kept items in its row's bins up to it (they include the matches before
   it) minus the junk there (junk keys are binned the same way).

Ties.  fastreid ranks a row with ``np.argsort`` (quicksort), so the order of items at exactly
equal distance is implementation-defined there.  Here ties are broken by gallery index (the
lower index ranks first): the result is exactly that of fastreid's code with
``np.argsort(..., kind="stable")``, and equals fastreid's whenever its argsort keeps equal
distances in index order (always when no two valid items of a row share a distance).
``-0.0`` and ``0.0`` are equal distances; non-finite features raise ``ValueError``.

Every step is torch on the chunk's device: on a GPU the ranking stays there (ids, keys,
positions, AP, INP, CMC) and the host receives only the final per-query arrays; on CPU the
same code runs, blocks of rows in threads.  One implementation for both.

Memory: features + one C x G float32 chunk (two with ``overlap``) + per-block buffers bounded
by ``_BLOCK_ELEMS`` rows x G entries, never Q x G.
"""
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
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
    with full_fp32_matmul(q.device):
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


@contextlib.contextmanager
def full_fp32_matmul(device):
    """CUDA products in full fp32 inside the block, whatever the caller set: TF32 (10-bit
    mantissa) would change distances by ~1e-3 and with them the ranking.  The caller's
    setting is restored after; a no-op on CPU.  Through ``fp32_precision`` where torch has it
    (2.9+: once the caller used that API, the legacy ``allow_tf32`` can no longer be read), the
    legacy flag before."""
    if torch.device(device).type != "cuda":
        yield
        return
    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):
        old = mm.fp32_precision
        mm.fp32_precision = "ieee"
        try:
            yield
        finally:
            mm.fp32_precision = old
        return
    try:
        old = mm.allow_tf32
        mm.allow_tf32 = False
    except (AttributeError, RuntimeError):  # a torch whose TF32 switch cannot be read here
        yield
        return
    try:
        yield
    finally:
        mm.allow_tf32 = old


def _ordered_bits(d):
    """float32 -> int64 in [0, 2^32) with the same order (and -0.0 == 0.0); a tensor (on any
    device) or a numpy array, returned as the same kind."""
    if isinstance(d, np.ndarray) or not torch.is_tensor(d):
        return _ordered_bits(torch.from_numpy(np.asarray(d, dtype=np.float32))).numpy()
    i = (d.to(torch.float32) + 0.0).view(torch.int32)  # -0.0 + 0.0 = +0.0
    i = i ^ ((i >> 31) & 0x7FFFFFFF)  # negative floats: reverse their order (signed int32)
    return i.to(torch.int64) + (1 << 31)


class _SamePidIndex:
    """Gallery items grouped by identity, to list a query's same-pid items without a scan."""

    def __init__(self, g_pids: torch.Tensor):
        self.sorted_pids, self.order = torch.sort(g_pids, stable=True)  # G, by pid then index

    def lookup(self, q_pids: torch.Tensor):
        """(row, gallery index) of every same-pid pair, grouped by row (P each)."""
        lo = torch.searchsorted(self.sorted_pids, q_pids, right=False)
        counts = torch.searchsorted(self.sorted_pids, q_pids, right=True) - lo
        rows = torch.repeat_interleave(torch.arange(len(q_pids), device=q_pids.device), counts)
        starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
        return rows, self.order[torch.arange(len(rows), device=q_pids.device) + starts]


# Bound on the rounding of ``1 - s`` for |1 - s| <= 2: a few ulps of 2.0 (float32).
_SIM_MARGIN = float(4 * np.spacing(np.float32(2.0)))
# Distances scanned together on CPU (rows of a chunk per block): the block's mask stays in
# cache and its candidate arrays stay small even when every item of a row is a candidate.  On
# a GPU a block is the whole chunk (few large kernels, few host synchronisations).
_BLOCK_ELEMS = 1 << 21
_DEVICE_BLOCK_ELEMS = 1 << 30


def _gather(chunk: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, sim: bool):
    """float32 distances at (rows, cols) of a chunk (``1 - s`` when ``sim``)."""
    d = chunk[rows, cols]
    return 1.0 - d if sim else d


def _block_bins(chunk: torch.Tensor, r0: int, r1: int, thr: torch.Tensor, sim: bool,
                S: torch.Tensor, seg_start: torch.Tensor, seg_end: torch.Tensor, shift: int,
                gbits: int):
    """Bin counts of the candidates of rows ``r0:r1`` of a C x G chunk.

    A candidate is an entry at or below its row's threshold ``thr`` (with ``sim``, a
    similarity at or above ``1 - thr``, less a rounding margin: a few entries just above
    ``thr`` may be kept; they land in the row's sentinel bin).  Its bin is the first key of S
    above its key.  Returns (s0, s1, counts of S[s0:s1]) or None when nothing is kept."""
    G = chunk.shape[1]
    blk = chunk[r0:r1]  # rows x G
    t = thr[r0:r1]
    mask = blk >= (1.0 - t - _SIM_MARGIN)[:, None] if sim else blk <= t[:, None]
    idx = mask.view(-1).nonzero().squeeze(1)  # M, row by row
    if idx.numel() == 0:
        return None
    d = blk.reshape(-1)[idx]
    if sim:
        d = 1.0 - d  # the same bits as fastreid's 1 - (q @ g.T)
    r = torch.div(idx, G, rounding_mode="floor") + r0
    keys = (r << shift) | (_ordered_bits(d) << gbits) | (idx - (r - r0) * G)
    s0, s1 = int(seg_start[r0]), int(seg_end[r1 - 1])  # the block's rows in S
    b = torch.searchsorted(S[s0:s1], keys, right=True)
    return s0, s1, torch.bincount(b, minlength=s1 - s0)


def _candidate_bins(chunk: torch.Tensor, thr: torch.Tensor, sim: bool, S: torch.Tensor,
                    seg_start: torch.Tensor, seg_end: torch.Tensor, shift: int, gbits: int,
                    counts: torch.Tensor, pool=None) -> None:
    """Add to ``counts`` (len(S)) the number of candidates of the chunk in each bin of S,
    block of rows after block of rows (in ``pool``'s threads when given: torch releases the
    GIL)."""
    C, G = chunk.shape
    live = (thr > -float("inf")).nonzero().squeeze(1)  # rows with no match keep nothing
    if live.numel() == 0:
        return
    lo_r, hi_r = int(live[0]), int(live[-1]) + 1
    step = max(1, (_BLOCK_ELEMS if chunk.device.type == "cpu" else _DEVICE_BLOCK_ELEMS) // G)
    args = [(chunk, r0, min(r0 + step, hi_r), thr, sim, S, seg_start, seg_end, shift, gbits)
            for r0 in range(lo_r, hi_r, step)]
    results = pool.map(lambda x: _block_bins(*x), args) if pool is not None and len(args) > 1 \
        else (_block_bins(*x) for x in args)
    for res in results:
        if res is not None:
            s0, s1, h = res
            counts[s0:s1] += h


def _chunk_metrics(chunk: torch.Tensor, sim: bool, rows: torch.Tensor, cols: torch.Tensor,
                   q_camids: torch.Tensor, g_camids: torch.Tensor, gbits: int, pool=None):
    """Metrics of one chunk, on the chunk's device.

    chunk: C x G distances (or similarities when ``sim``); (rows, cols): the chunk's same-pid
    pairs (P), grouped by row.  Returns (valid C, first-match position C, AP C, INP C).

    Every item is ordered by the exact int64 key ``(row, distance bits, gallery index)``.  S
    holds, row after row, the sorted keys of the row's true matches and one sentinel above
    every key of the row.  Each candidate (an entry at or below its row's farthest match) and
    each junk item falls into the bin of the first S key above it (one ``searchsorted`` into
    the small S, one ``bincount``; no sort of the candidates, no pid lookup per candidate);
    the position of a match among the valid items is then the running count of candidates
    minus junk in its row's bins up to it."""
    C, G = chunk.shape
    dev = chunk.device
    shift = 32 + gbits
    d_same = _gather(chunk, rows, cols, sim)  # P: matches and junk
    keys = (rows << shift) | (_ordered_bits(d_same) << gbits) | cols
    is_pos = g_camids[cols] != q_camids[rows]  # same camera: junk, dropped from the list
    n_pos = torch.bincount(rows[is_pos], minlength=C)  # C
    valid = n_pos > 0
    first = torch.zeros(C, dtype=torch.int64, device=dev)
    ap = torch.zeros(C, dtype=torch.float64, device=dev)
    inp = torch.zeros(C, dtype=torch.float64, device=dev)
    if not bool(valid.any()):
        return valid, first, ap, inp

    ar = torch.arange(C, dtype=torch.int64, device=dev)
    sentinel = ((ar + 1) << shift) - 1  # above every key of its row
    S = torch.sort(torch.cat([keys[is_pos], sentinel])).values  # P' + C, row by row
    seg_end = torch.cumsum(n_pos + 1, 0)  # C; a row's S entries: its matches, its sentinel
    seg_start = seg_end - n_pos - 1
    # junk ranked before a key is not counted (it is not in fastreid's list)
    counts = -torch.bincount(torch.searchsorted(S, keys[~is_pos], right=True),
                             minlength=len(S))
    thr = torch.full((C,), -float("inf"), dtype=torch.float32, device=dev)
    thr = thr.scatter_reduce(0, rows[is_pos], d_same[is_pos], reduce="amax")  # farthest match
    _candidate_bins(chunk, thr, sim, S, seg_start, seg_end, shift, gbits, counts, pool)
    cum = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])  # candidates - junk < i
    is_match = torch.ones(len(S), dtype=torch.bool, device=dev)
    is_match[seg_end - 1] = False
    pos_idx = is_match.nonzero().squeeze(1)  # P', the matches' places in S, row by row
    p_rows = torch.repeat_interleave(ar, n_pos)
    # position among valid items = candidates ranked before the match (they include the
    # matches before it and junk, which is subtracted) = cum[i + 1] - cum[row start]
    rank = (cum[pos_idx + 1] - cum[seg_start[p_rows]]).to(torch.float64)
    k_in_row = (pos_idx - seg_start[p_rows]).to(torch.float64)  # matches ranked before it
    ap.index_add_(0, p_rows, (k_in_row + 1) / (rank + 1.0))  # precision at each match
    vi = valid.nonzero().squeeze(1)
    ap[vi] /= n_pos[vi].to(torch.float64)
    row_first = torch.cumsum(n_pos[vi], 0) - n_pos[vi]  # offset of each valid row in pos_idx
    first[vi] = rank[row_first].to(torch.int64)
    inp[vi] = n_pos[vi].to(torch.float64) / (rank[row_first + n_pos[vi] - 1] + 1.0)
    return valid, first, ap, inp


def _ranking_loop(num_q: int, score_fn: Callable[[int, int, int], tuple], q_pids, g_pids,
                  q_camids, g_camids, max_rank: int, chunk_size: int, progress: bool,
                  overlap: bool = False, threads: Optional[int] = None,
                  device=None) -> RankMetrics:
    """Score chunk by chunk with ``score_fn(start, end, slot)`` and gather the metrics, in
    torch on ``device`` (default: that of the first chunk): ids, keys, positions, AP, INP and
    CMC stay there, and only the final per-query arrays come to the host.

    overlap: the metrics of a chunk are computed in a worker thread while ``score_fn`` makes
    the next chunk (``slot`` alternates 0 / 1 so the two chunks can use separate buffers).
    threads: worker threads scanning blocks of a chunk's rows for candidates (torch releases
    the GIL in them; default: torch's intra-op thread count on CPU, where several of the
    operations run on one core each, 1 on a GPU).  Same numbers for any value."""
    ids = [_ids(x) for x in (q_pids, g_pids, q_camids, g_camids)]
    num_g = len(ids[1])
    if len(ids[0]) != num_q or len(ids[2]) != num_q or len(ids[3]) != num_g:
        raise ValueError(f"ids do not match the features: {num_q} queries / {len(ids[0])} pids / "
                         f"{len(ids[2])} camids, {num_g} gallery pids / {len(ids[3])} camids")
    if num_g == 0 or num_q == 0:
        raise ValueError("empty query or gallery set")
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}; set TEST.CHUNK_SIZE.")
    if threads is None:
        first_device = torch.device(device) if device is not None else None
        threads = 1 if first_device is not None and first_device.type != "cpu" \
            else torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    gbits = max(1, int(num_g - 1).bit_length())
    if gbits > 30:
        raise ValueError(f"gallery of {num_g} items is too large for exact int64 keys")
    # int64 key = row | distance bits (32) | gallery index (gbits): rows per chunk are bounded
    chunk_size = min(chunk_size, (1 << (63 - 32 - gbits)) - 1)  # sentinel of the last row too
    max_rank = min(max_rank, num_g)

    n_chunks = -(-num_q // chunk_size)  # equal chunks: no small, inefficient last product
    bounds = [num_q * i // n_chunks for i in range(n_chunks + 1)]
    it = range(n_chunks)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="ranking", unit="chunk", leave=False)
    block_pool = ThreadPoolExecutor(threads) if threads > 1 else None
    chunk_pool = ThreadPoolExecutor(1) if overlap else None
    state = {}
    valid_l, first_l, ap_l, inp_l = [], [], [], []

    def on(dev):
        """The ids on ``dev`` (moved once) and the gallery's identity index there."""
        if state.get("device") != dev:
            q_p, g_p, q_c, g_c = (x.to(dev) for x in ids)
            state.update(device=dev, q_p=q_p, q_c=q_c, g_c=g_c, index=_SamePidIndex(g_p))
        return state

    def metrics(scores, sim, s, e):
        st = on(scores.device)
        rows, cols = st["index"].lookup(st["q_p"][s:e])
        return _chunk_metrics(scores, sim, rows, cols, st["q_c"][s:e], st["g_c"], gbits,
                              block_pool)

    def collect(res):
        for lst, x in zip((valid_l, first_l, ap_l, inp_l), res):
            lst.append(x)

    pending = None
    try:
        for n in it:
            s, e = bounds[n], bounds[n + 1]
            scores, sim = score_fn(s, e, n % 2)
            if tuple(scores.shape) != (e - s, num_g):
                raise ValueError(f"distance chunk has shape {tuple(scores.shape)}, "
                                 f"expected {(e - s, num_g)}")
            scores = scores.to(device=device, dtype=torch.float32).contiguous()
            if chunk_pool is None:
                collect(metrics(scores, sim, s, e))
                continue
            if pending is not None:  # chunk n - 1 (its buffer is reused by chunk n + 1)
                collect(pending.result())
            pending = chunk_pool.submit(metrics, scores, sim, s, e)
            del scores
        if pending is not None:
            collect(pending.result())
    finally:
        for pool in (block_pool, chunk_pool):
            if pool is not None:
                pool.shutdown(wait=True)
    valid = torch.cat(valid_l)
    first = torch.cat(first_l)[valid]
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a valid match in the gallery (every query identity is "
                         "missing or only seen by the query's own camera)")
    # fastreid: float32 0/1 CMC rows summed and divided by the float32 count of valid queries
    hits = torch.bincount(first.clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = torch.cumsum(hits, 0).to(torch.float32) / torch.tensor(
        num_valid, dtype=torch.float32, device=hits.device)
    return RankMetrics(cmc=cmc.cpu().numpy(), all_AP=torch.cat(ap_l)[valid].cpu().numpy(),
                       all_INP=torch.cat(inp_l)[valid].cpu().numpy(), num_valid=num_valid,
                       valid_query=valid.cpu().numpy())


def _ids(x) -> torch.Tensor:
    if not torch.is_tensor(x):
        x = torch.from_numpy(np.asarray(x).astype(np.int64))
    return x.to(torch.int64).reshape(-1)


@torch.no_grad()
def evaluate_ranking(q_feats: torch.Tensor, g_feats: torch.Tensor, q_pids, g_pids, q_camids,
                     g_camids, metric: str = "cosine", max_rank: int = 50,
                     chunk_size: int = 512, device=None, progress: bool = False,
                     prepared: bool = False, inplace: bool = False, overlap: bool = False,
                     threads: Optional[int] = None) -> RankMetrics:
    """Exact CMC / AP / INP of ``q_feats`` against ``g_feats`` in query chunks.

    Args:
        q_feats, g_feats: Q x D and G x D features (any float dtype; computed in float32).
        q_pids, g_pids, q_camids, g_camids: 1-D int arrays / tensors.
        metric: "cosine" (1 - cosine similarity) or "euclidean" (squared), as fastreid.
        chunk_size: at most this many queries per chunk (chunks are made equal).  Working
            memory is about ``chunk_size * G * 4`` bytes (twice that with ``overlap``) plus a
            few tens of MB of per-block buffers; larger chunks amortise the product's packing
            of the gallery (1024 is within ~3% of one whole product on CPU).
        device: where distances are computed (default: the features' device).
        prepared: features already went through :func:`prepare_features` (skips a copy).
        inplace: cosine features may be normalised in place (saves a Q x D + G x D copy).
        overlap: rank chunk n in a worker thread while chunk n + 1's distances are computed
            (two chunk buffers instead of one).  Same numbers either way.
        threads: worker threads scanning a chunk's rows for candidates (default
            ``torch.get_num_threads()`` on CPU, 1 on a GPU).  Same numbers for any value.
    Returns:
        :class:`RankMetrics` (same numbers as fastreid's ``evaluate_rank``), computed on
        ``device`` in torch; only the final per-query arrays come to the host.
    """
    device = torch.device(device) if device is not None else q_feats.device
    if not prepared:
        q_feats = prepare_features(q_feats, metric, inplace)
        g_feats = prepare_features(g_feats, metric, inplace)
    q_feats, g_feats = q_feats.to(device), g_feats.to(device)
    if q_feats.shape[1] != g_feats.shape[1]:
        raise ValueError(f"query features are {q_feats.shape[1]}-d, gallery {g_feats.shape[1]}-d")
    g_sq = g_feats.pow(2).sum(dim=1) if metric == "euclidean" else None
    n_buf = 2 if overlap and len(q_feats) > chunk_size else 1
    bufs = [torch.empty(min(chunk_size, len(q_feats)) * len(g_feats), dtype=torch.float32,
                        device=device) for _ in range(n_buf)]  # reused chunk after chunk

    def score_fn(s, e, slot):
        out = bufs[slot % n_buf][: (e - s) * len(g_feats)].view(e - s, len(g_feats))  # C x G
        return _chunk_scores(q_feats[s:e], g_feats, metric, g_sq, out=out)

    return _ranking_loop(len(q_feats), score_fn, q_pids, g_pids, q_camids, g_camids,
                         max_rank, chunk_size, progress, overlap, threads, device)


@torch.no_grad()
def rank_metrics_from_distmat(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                              chunk_size: int = 512, progress: bool = False,
                              overlap: bool = False,
                              threads: Optional[int] = None) -> RankMetrics:
    """Same metrics from a given Q x G distance matrix (numpy or tensor), or from a callable
    ``(start, end) -> (end - start) x G tensor`` together with ``len(q_pids)`` queries.
    With ``overlap`` the callable runs for chunk n + 1 while chunk n is ranked in a thread, so
    it must not overwrite the tensor it returned for chunk n during that call."""
    if callable(distmat):
        fn, num_q = distmat, len(q_pids)
    else:
        dm = distmat if torch.is_tensor(distmat) else torch.from_numpy(np.asarray(distmat))
        num_q = dm.shape[0]

        def fn(s, e):
            return dm[s:e]

    def score_fn(s, e, slot):
        return torch.as_tensor(fn(s, e)), False

    return _ranking_loop(num_q, score_fn, q_pids, g_pids, q_camids, g_camids, max_rank,
                         chunk_size, progress, overlap, threads)


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
