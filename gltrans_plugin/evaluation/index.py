"""A retrieval index over gallery features (faiss-cpu): build, save, load, query top-k.

Model-agnostic: :func:`extract_features` runs any model that maps a fast-reid batch dict to
B x D features; :class:`RetrievalIndex` only sees features, paths and ids.  Distances are the
evaluator's (cosine: ``1 - cos``; euclidean: squared L2), smallest first.  A saved index keeps
its paths, identity and camera ids, and an ``info`` dict (how its features were made).
"""
import json
import logging
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .inference import flip_features

logger = logging.getLogger(__name__)

__all__ = ["RetrievalIndex", "extract_features"]


@torch.no_grad()
def extract_features(model, data_loader, flip_test: bool = False, progress: bool = True):
    """(N x D float32 features, paths, pids, camids) of every batch of ``data_loader``."""
    feats, paths, pids, camids = [], [], [], []
    was_training = model.training
    model.eval()
    it = data_loader
    if progress:
        from tqdm import tqdm

        it = tqdm(data_loader, desc="features", unit="batch", leave=False)
    try:
        for inputs in it:
            feats.append(flip_features(model, inputs, flip_test).float().cpu())
            paths += list(inputs.get("img_paths", [""] * len(feats[-1])))
            pids.append(torch.as_tensor(inputs.get("targets", torch.full((len(feats[-1]),), -1))))
            camids.append(torch.as_tensor(inputs.get("camids", torch.full((len(feats[-1]),), -1))))
    finally:
        model.train(was_training)
    return (torch.cat(feats), paths, torch.cat(pids).numpy(), torch.cat(camids).numpy())


class RetrievalIndex:
    """Exact (flat) faiss index of gallery features with their paths / ids.

    ``info``: a JSON-serialisable dict saved with the index (e.g. the model and the feature
    settings its features came from), for whoever queries it later."""

    def __init__(self, dim: int, metric: str = "cosine", info: Optional[dict] = None):
        import faiss

        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
        self.metric = metric
        self.dim = dim
        self.index = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
        self.paths: List[str] = []
        self.pids = np.zeros(0, dtype=np.int64)
        self.camids = np.zeros(0, dtype=np.int64)
        self.info = dict(info or {})

    def _prep(self, feats) -> np.ndarray:
        feats = torch.as_tensor(feats, dtype=torch.float32)
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"expected N x {self.dim} features, got {tuple(feats.shape)}")
        if self.metric == "cosine":
            feats = F.normalize(feats, dim=1)
        return np.ascontiguousarray(feats.numpy())

    def add(self, feats, paths: Optional[Sequence[str]] = None, pids=None, camids=None):
        x = self._prep(feats)
        n = len(x)
        for name, ids in (("paths", paths), ("pids", pids), ("camids", camids)):
            if ids is not None and len(ids) != n:
                raise ValueError(f"{len(ids)} {name} for {n} features; give one per feature.")
        self.index.add(x)
        self.paths += list(paths) if paths is not None else [""] * n
        self.pids = np.concatenate([self.pids, np.asarray(pids if pids is not None
                                                           else [-1] * n, dtype=np.int64)])
        self.camids = np.concatenate([self.camids, np.asarray(camids if camids is not None
                                                               else [-1] * n, dtype=np.int64)])
        return self

    def __len__(self):
        return self.index.ntotal

    def search(self, feats, k: int = 10):
        """Top-k per query: list of lists of dicts {index, distance, path, pid, camid}."""
        if len(self) == 0:
            raise ValueError("the index is empty; add gallery features first")
        k = min(k, len(self))
        scores, idx = self.index.search(self._prep(feats), k)
        dist = 1.0 - scores if self.metric == "cosine" else scores
        return [[{"index": int(j), "distance": float(d), "path": self.paths[j],
                  "pid": int(self.pids[j]), "camid": int(self.camids[j])}
                 for j, d in zip(ir, dr) if j >= 0] for ir, dr in zip(idx, dist)]

    def save(self, folder: str):
        """Write ``index.faiss`` and ``meta.json`` into ``folder``."""
        import faiss

        os.makedirs(folder, exist_ok=True)
        faiss.write_index(self.index, os.path.join(folder, "index.faiss"))
        with open(os.path.join(folder, "meta.json"), "w") as f:
            json.dump({"metric": self.metric, "dim": self.dim, "paths": self.paths,
                       "pids": self.pids.tolist(), "camids": self.camids.tolist(),
                       "info": self.info}, f)
        logger.info("saved a %d-item index to %s", len(self), folder)

    @classmethod
    def load(cls, folder: str) -> "RetrievalIndex":
        import faiss

        meta_path = os.path.join(folder, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: no saved index there; build one with "
                                    f"tools/search.py index --gallery DIR --index-dir FOLDER")
        with open(meta_path) as f:
            meta = json.load(f)
        index_path = os.path.join(folder, "index.faiss")
        if not os.path.exists(index_path):
            raise FileNotFoundError(f"{index_path} not found next to {meta_path}: the index was "
                                    f"not saved completely; build and save it again")
        obj = cls(meta["dim"], meta["metric"], meta.get("info"))
        obj.index = faiss.read_index(index_path)
        obj.paths = meta["paths"]
        obj.pids = np.asarray(meta["pids"], dtype=np.int64)
        obj.camids = np.asarray(meta["camids"], dtype=np.int64)
        if obj.index.ntotal != len(obj.paths):
            raise ValueError(f"{folder}: index has {obj.index.ntotal} items, meta {len(obj.paths)}")
        return obj
