"""Ranked-list pictures: each query and its top-k gallery images, green / red frames.

Shape letters: Q queries, G gallery images, F feature dim, k ranks shown.

The ranking follows the evaluation protocol (fast-reid's ``eval_market1501``): gallery images of
the query's identity taken by the query's camera are removed before ranking.  Distances are
fast-reid's ``build_dist`` (cosine: 1 - cos on L2-normalised features).
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["FRAME_COLOURS", "draw_rank_grid", "extract_query_gallery", "rank_lists",
           "select_queries"]

FRAME_COLOURS = {"query": (40, 90, 220), True: (20, 170, 40), False: (220, 30, 30)}


def extract_query_gallery(model, loader, num_query: int, flip_test: bool = False):
    """Features and meta data of a test loader (query first, as fast-reid orders it).

    Returns {"q_feat": Q x F, "g_feat": G x F, "q_pids", "g_pids", "q_camids", "g_camids",
    "q_paths", "g_paths"} (features as float tensors, ids as numpy arrays).
    """
    from ..evaluation.index import extract_features

    feats, paths, pids, camids = extract_features(model, loader, flip_test=flip_test,
                                                  progress=False)
    q = slice(0, num_query)
    g = slice(num_query, None)
    return {"q_feat": feats[q], "g_feat": feats[g], "q_pids": pids[q], "g_pids": pids[g],
            "q_camids": camids[q], "g_camids": camids[g], "q_paths": paths[q],
            "g_paths": paths[g]}


def rank_lists(q_feat: torch.Tensor, g_feat: torch.Tensor, q_pids, g_pids, q_camids, g_camids,
               topk: int = 5, metric: str = "cosine") -> List[Dict]:
    """Per query: {"gallery": k gallery indices, "dist": k distances, "match": k bools,
    "ap": average precision of the whole list (nan without a valid match)}."""
    from fastreid.utils.compute_dist import build_dist

    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}.")
    dist = build_dist(q_feat.float(), g_feat.float(), metric)  # Q x G
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    out = []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        order = order[keep]
        match = g_pids[order] == q_pids[i]
        if match.any():
            hits = np.cumsum(match)
            ap = float((hits[match] / (np.flatnonzero(match) + 1)).mean())
        else:
            ap = float("nan")
        top = order[:topk]
        out.append({"query": i, "gallery": top.tolist(), "dist": dist[i, top].tolist(),
                    "match": match[:topk].tolist(), "ap": ap})
    return out


def select_queries(ranks: Sequence[Dict], num: int, how: str = "first", seed: int = 0):
    """Indices into ``ranks``: "first" N, "random" N, "worst" / "best" N by AP."""
    n = min(num, len(ranks))
    if how == "first":
        return list(range(n))
    if how == "random":
        return sorted(np.random.default_rng(seed).choice(len(ranks), n, replace=False).tolist())
    if how in ("worst", "best"):
        ap = np.array([r["ap"] if r["ap"] == r["ap"] else np.inf for r in ranks])
        order = np.argsort(ap if how == "worst" else -np.where(np.isinf(ap), -1, ap),
                           kind="stable")
        return order[:n].tolist()
    raise ValueError(f"query selection {how!r}: use 'first', 'random', 'worst' or 'best'.")


def _cell(path: str, size, colour, frame: int):
    from PIL import Image, ImageOps

    from ..data.images import to_rgb

    h, w = size
    img = to_rgb(Image.open(path)).resize((w - 2 * frame, h - 2 * frame))
    return ImageOps.expand(img, border=frame, fill=colour)


def draw_rank_grid(ranks: Sequence[Dict], rows: Sequence[int], q_paths: Sequence[str],
                   g_paths: Sequence[str], out_path: str, q_pids=None, g_pids=None,
                   cell_size=(128, 64), frame: int = 4, gap: int = 6,
                   title: Optional[str] = None) -> str:
    """One row per selected query: query (blue frame) | gap | top-k (green right id, red wrong).

    Each cell is captioned with its rank and distance (and identity when ``*_pids`` given);
    the row caption gives the query's AP.  Saved as PNG at ``out_path``; returns the path.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows:
        raise ValueError("no query to draw (rows is empty).")
    font = ImageFont.load_default()
    h, w = cell_size
    k = max(len(ranks[r]["gallery"]) for r in rows)
    text_h = 24
    top = 18 if title else 0
    width = w * (k + 1) + gap * (k + 1) + 3 * gap
    row_h = h + text_h + gap
    canvas = Image.new("RGB", (width, top + row_h * len(rows) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 3), title, fill=(0, 0, 0), font=font)
    for j, r in enumerate(rows):
        rk = ranks[r]
        y = top + gap + j * row_h
        qi = rk["query"]
        canvas.paste(_cell(q_paths[qi], cell_size, FRAME_COLOURS["query"], frame), (gap, y))
        ap = "AP -" if rk["ap"] != rk["ap"] else f"AP {rk['ap']:.2f}"
        label = ap if q_pids is None else f"id {q_pids[qi]}\n{ap}"
        draw.text((gap, y + h + 1), label, fill=(0, 0, 0), font=font)
        for c, (gi, d, m) in enumerate(zip(rk["gallery"], rk["dist"], rk["match"])):
            x = gap + (c + 1) * (w + gap) + 2 * gap
            canvas.paste(_cell(g_paths[gi], cell_size, FRAME_COLOURS[bool(m)], frame), (x, y))
            label = f"{c + 1}: {d:.3g}"
            if g_pids is not None:
                label += f"\nid {g_pids[gi]}"
            draw.text((x, y + h + 1), label, fill=FRAME_COLOURS[bool(m)], font=font)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path, format="PNG")
    logger.info("Ranked lists of %d queries saved to %s", len(rows), out_path)
    return out_path


def fastreid_visualizer(test_set, data: Dict, out_dir: str, num_vis: int = 5, max_rank: int = 5,
                        metric: str = "cosine"):
    """fast-reid's own ``Visualizer`` (rank lists as JPEGs + ROC curve) on these features.

    ``test_set`` is the loader's dataset (query + gallery, fast-reid ``CommDataset``); AP comes
    from fast-reid's ``evaluate_rank``.  Returns the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from fastreid.evaluation.rank import evaluate_rank
    from fastreid.utils.compute_dist import build_dist
    from fastreid.utils.visualizer import Visualizer

    dist = build_dist(data["q_feat"], data["g_feat"], metric)
    args = (data["q_pids"], data["g_pids"], data["q_camids"], data["g_camids"])
    _, all_ap, _ = evaluate_rank(dist, *args, max_rank=min(50, dist.shape[1]), use_cython=False)
    vis = Visualizer(test_set)
    vis.get_model_output(all_ap, dist, *args)
    os.makedirs(out_dir, exist_ok=True)
    vis.vis_rank_list(out_dir, vis_label=False, num_vis=num_vis, max_rank=max_rank)
    vis.vis_roc_curve(out_dir)
    return sorted(os.path.join(out_dir, f) for f in os.listdir(out_dir))
