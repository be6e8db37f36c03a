"""A retrieval index over gallery features (faiss-cpu): build, save, load, query top-k.

Model-agnostic: :func:`extract_features` runs any model that maps a fast-reid batch dict to
B x D features; :class:`RetrievalIndex` only sees features, paths and ids.  Distances are the
evaluator's (cosine: ``1 - cos``; euclidean: squared L2), smallest first.  A saved index keeps
its paths, identity and camera ids, and an ``info`` dict (how its features were made); loading
a damaged index folder (truncated ``index.faiss``, ``meta.json`` that is not JSON or lacks a
field, ids that do not match the paths, a ``dim`` the index does not hold) is an
``IndexFolderError`` naming the file and saying to build the index again.
``check_finite_features``: NaN / infinite features are an error naming the images and the
weights, wherever features are made (here, the evaluation, ``FeatureExtractor``).
"""
import contextlib
import json
import logging
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .inference import batch_features

logger = logging.getLogger(__name__)

__all__ = ["IndexFolderError", "RetrievalIndex", "check_finite_features", "extract_features"]

_REBUILD = ("build the index again: tools/search.py index --gallery DIR --index-dir FOLDER "
            "(with the model the queries use)")


class IndexFolderError(UserError, ValueError):
    """A saved index folder whose files are damaged or do not belong together."""


def check_finite_features(feats, names, weights=""):
    """``NonFiniteFeaturesError`` when a row of ``feats`` (one per image; ``names`` its file
    or "image i") is NaN or infinite, naming the images and ``weights`` (the checkpoint)."""
    from ..errors import NonFiniteFeaturesError

    if not torch.is_tensor(feats) or feats.dim() == 0 or len(feats) == 0:
        return
    bad = ~torch.isfinite(feats.reshape(len(feats), -1)).all(dim=1)
    if not bool(bad.any()):
        return
    rows = bad.nonzero().flatten().tolist()
    names = list(names) if names is not None else [f"image {j}" for j in range(len(feats))]
    shown = ", ".join(str(names[j]) for j in rows[:3]) + (", ..." if len(rows) > 3 else "")
    raise NonFiniteFeaturesError(
        f"the model gives NaN / infinite features for {len(rows)} of {len(feats)} images of "
        f"a batch ({shown})", f"weights {weights or 'MODEL.WEIGHTS'}",
        "if every image fails, the weights are at fault (a damaged checkpoint or a diverged "
        "run: use another); if only some, those images are (check or remove them); under "
        "AMP (--amp, SOLVER.AMP.ENABLED) try float32")




def extract_features(model, data_loader, flip_test: bool = False, progress: bool = True):
    """(N x D float32 features, paths, pids, camids) of every batch of ``data_loader``."""
    feats, paths, pids, camids = [], [], [], []
    with contextlib.closing(batch_features(model, data_loader, flip_test,
                                           progress=progress)) as it:
        for inputs, out in it:
            feats.append(out.float().cpu())
            check_finite_features(feats[-1], inputs.get("img_paths"))
            paths += list(inputs.get("img_paths", [""] * len(feats[-1])))
            n = len(feats[-1])
            pids.append(torch.as_tensor(inputs.get("targets", torch.full((n,), -1))))
            camids.append(torch.as_tensor(inputs.get("camids", torch.full((n,), -1))))
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
        """The index saved in ``folder``; ``IndexFolderError`` naming the file when the folder's
        files are damaged or do not belong together (never the model)."""
        import faiss

        meta_path = os.path.join(folder, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: no saved index there; build one with "
                                    f"tools/search.py index --gallery DIR --index-dir FOLDER")
        index_path = os.path.join(folder, "index.faiss")
        if not os.path.exists(index_path):
            raise FileNotFoundError(f"{index_path} not found next to {meta_path}: the index was "
                                    f"not saved completely; build and save it again")
        meta = _read_meta(meta_path)
        try:
            index = faiss.read_index(index_path)
        except RuntimeError as e:  # faiss: "Error in ... failed: read error in <file>: 5 != 160"
            why = str(e).replace(index_path, "the file").rsplit("failed: ", 1)[-1].strip()
            raise IndexFolderError(f"index.faiss cannot be read, truncated or damaged (faiss: "
                                   f"{why.splitlines()[0][:120] if why else 'RuntimeError'})",
                                   index_path, _REBUILD) from None
        n = len(meta["paths"])
        if index.d != meta["dim"]:
            raise IndexFolderError(f"meta.json says dim {meta['dim']} but index.faiss holds "
                                   f"{index.d}-d vectors: the two files are not from one save",
                                   meta_path, _REBUILD)
        if index.ntotal != n:
            raise IndexFolderError(f"index.faiss holds {index.ntotal} vectors but meta.json "
                                   f"lists {n} paths: the two files are not from one save",
                                   meta_path, _REBUILD)
        obj = cls(meta["dim"], meta["metric"], meta.get("info"))
        obj.index = index
        obj.paths = list(meta["paths"])
        obj.pids = np.asarray(meta["pids"], dtype=np.int64)
        obj.camids = np.asarray(meta["camids"], dtype=np.int64)
        return obj


def _read_meta(meta_path):
    """meta.json of a saved index, every field checked (``IndexFolderError`` naming it)."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise IndexFolderError(f"meta.json is not valid JSON ({e.msg}: line {e.lineno}, "
                               f"column {e.colno})", meta_path, _REBUILD) from None
    except UnicodeDecodeError as e:
        raise IndexFolderError(f"meta.json is not UTF-8 text ({e.reason} at byte {e.start})",
                               meta_path, _REBUILD) from None
    if not isinstance(meta, dict):
        raise IndexFolderError(f"meta.json holds a {type(meta).__name__}, not an object",
                               meta_path, _REBUILD)
    missing = [k for k in ("metric", "dim", "paths") if k not in meta]
    if missing:
        raise IndexFolderError(f"meta.json lacks the field(s) {', '.join(missing)}", meta_path,
                               _REBUILD)
    if meta["metric"] not in ("cosine", "euclidean"):
        raise IndexFolderError(f"meta.json has metric {meta['metric']!r}, not 'cosine' or "
                               f"'euclidean'", meta_path, _REBUILD)
    if not isinstance(meta["dim"], int) or isinstance(meta["dim"], bool) or meta["dim"] < 1:
        raise IndexFolderError(f"meta.json has dim {meta['dim']!r}, not a positive integer",
                               meta_path, _REBUILD)
    paths = meta["paths"]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise IndexFolderError("meta.json's paths are not a list of strings", meta_path,
                               _REBUILD)
    for key in ("pids", "camids"):
        ids = meta.setdefault(key, [-1] * len(paths))
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                for i in ids):
            raise IndexFolderError(f"meta.json's {key} are not a list of integers", meta_path,
                                   _REBUILD)
        if len(ids) != len(paths):
            raise IndexFolderError(f"meta.json lists {len(ids)} {key} for {len(paths)} paths",
                                   meta_path, _REBUILD)
    if meta.get("info") is not None and not isinstance(meta["info"], dict):
        raise IndexFolderError("meta.json's info is not an object", meta_path, _REBUILD)
    return meta
