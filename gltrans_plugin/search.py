"""Image search with a trained model: a faiss index of a gallery's features, top-k queries,
and the ranked lists as JSON and as a self-contained HTML page with thumbnails.

``build_index`` indexes images (absolute paths, camera ids, and how the features were made in
the index's ``info``); ``query_index`` ranks the index for query images with the same feature
settings; ``write_html`` draws the ranked lists.  Only the images given and the model's config
and checkpoint are read (``FeatureExtractor``): never a dataset root or the ImageNet file.
"""
import html
import json
import logging
import os
import pathlib
import urllib.parse
from typing import List, Optional, Sequence

from .data.checks import DatasetError
from .data.names import parse_market_name
from .evaluation.index import RetrievalIndex
from .extractor import FeatureExtractor, per_image_ids

logger = logging.getLogger(__name__)

__all__ = ["THUMBNAIL_MODES", "build_index", "identities_from_names", "image_sources",
           "query_index", "write_html", "write_json"]

THUMBNAIL_MODES = ("relative", "absolute", "copy")
THUMB_HEIGHT = 128  # pixels of a thumbnail on the page (and of a copied thumbnail file)


def build_index(extractor: FeatureExtractor, paths: Sequence[str],
                camids: Optional[Sequence[int]] = None, progress: bool = False,
                info: Optional[dict] = None) -> RetrievalIndex:
    """A ``RetrievalIndex`` of ``paths`` (stored absolute) with their camera ids (-1 where
    not known), in the metric of the model's config (TEST.METRIC); ``info`` records the
    feature settings (flip test, normalisation) the queries must reuse, plus ``info``."""
    paths = [os.path.abspath(p) for p in paths]
    feats = extractor(paths, camids=camids, progress=progress)
    cams = _camid_list(camids, len(paths))
    pids = identities_from_names(paths)
    meta = {"identities": "market names" if pids is not None else "",
            "flip_test": extractor.flip_test, "normalize": extractor.normalize,
            "feature_dim": int(feats.shape[1]),
            "input_size": list(extractor.cfg.INPUT.SIZE_TEST),
            "meta_architecture": extractor.cfg.MODEL.META_ARCHITECTURE}
    meta.update(info or {})
    index = RetrievalIndex(int(feats.shape[1]), extractor.cfg.TEST.METRIC, info=meta)
    return index.add(feats, paths, pids=pids, camids=cams)


def identities_from_names(paths: Sequence[str]) -> Optional[List[int]]:
    """Identity per image from Market-1501 / DukeMTMC names (``<pid>_c<cam>...``: 0 a
    distractor, -1 junk), or None when some name is not of that form."""
    out = []
    for p in paths:
        try:
            out.append(parse_market_name(p)[0])  # the one reader of Market-style names
        except DatasetError:
            return None
    return out


def query_index(extractor: FeatureExtractor, index: RetrievalIndex, paths: Sequence[str],
                camids=None, topk: int = 10, progress: bool = False,
                exclude_same_camera: bool = False) -> List[dict]:
    """Top-``topk`` of ``index`` for each query image: ``[{"query": absolute path, "camid",
    "pid", "results": [{"rank" (1-based), "path", "distance", "camid", "pid", "index"
    [, "match"]}]}]``, smallest distance first.  The extractor must make features as the
    index's were made (same model, flip test and normalisation; a different dimension fails
    here).  ``exclude_same_camera``: drop the results taken by the query's own camera (when
    both camera ids are known), as Re-ID evaluation does.  When the index's and the query's
    identities come from Market-style names, each result says whether it is the query's
    identity (``match``; a distractor or junk image never is)."""
    for key in ("flip_test", "normalize"):
        if key in index.info and bool(index.info[key]) != bool(getattr(extractor, key)):
            raise ValueError(f"the index was built with {key}={index.info[key]}, the query "
                             f"features are made with {key}={getattr(extractor, key)}: use the "
                             f"index's setting so that distances are comparable.")
    paths = [os.path.abspath(p) for p in paths]
    feats = extractor(paths, camids=camids, progress=progress)
    if feats.shape[1] != index.dim:
        raise ValueError(f"the model gives {feats.shape[1]}-d features, the index holds "
                         f"{index.dim}-d ones: query with the model the index was built with "
                         f"(its info: {json.dumps(index.info)}).")
    cams = _camid_list(camids, len(paths))
    qpids = identities_from_names(paths) if index.info.get("identities") else None
    # enough neighbours that topk remain after dropping the query camera's images
    same = [int((index.camids == c).sum()) if exclude_same_camera and c >= 0 else 0
            for c in cams]
    out = []
    for i, (path, cam, hits) in enumerate(zip(paths, cams,
                                              index.search(feats, topk + max(same)))):
        hits = [h for h in hits if not same[i] or h["camid"] != cam][:topk]
        qpid = None if qpids is None else qpids[i]
        rows = []
        for r, h in enumerate(hits):
            rows.append({"rank": r + 1, **h})
            if qpid is not None:
                rows[-1]["match"] = qpid > 0 and h["pid"] == qpid
        out.append({"query": path, "camid": cam, "pid": qpid, "results": rows})
    return out


def _camid_list(camids, n):
    ids = per_image_ids(camids, n, "camids")
    return [-1] * n if ids is None else ids.tolist()


def image_sources(queries: Sequence[str]) -> List[str]:
    """Query arguments (image files and / or folders, searched recursively) -> absolute image
    paths, in the order given."""
    from .data.folder import IMAGE_EXTENSIONS
    from .data.listing import list_images

    out = []
    for q in queries:
        if os.path.isdir(q):
            found = list_images(q)
            if not found:
                raise ValueError(f"{q}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder.")
            out += found
        elif os.path.isfile(q):
            out.append(os.path.abspath(q))
        else:
            raise FileNotFoundError(2, "query image or folder not found", q)
    return out


def write_json(results: List[dict], path: str, index: RetrievalIndex, index_dir: str,
               topk: int) -> dict:
    """The ranked lists with the index's description, as written to ``path``."""
    doc = {"index_dir": os.path.abspath(index_dir), "metric": index.metric,
           "gallery_size": len(index), "topk": int(topk), "index_info": index.info,
           "queries": results}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return doc


# ---------------------------------------------------------------------- HTML page
_CSS = """
body { font-family: sans-serif; margin: 16px; background: #fafafa; color: #222222; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
p.about { font-size: 13px; color: #555555; margin: 0 0 14px 0; }
div.row { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px;
          padding: 10px 0; border-top: 1px solid #ddd; }
figure { margin: 0; padding: 4px; background: #fff; border: 3px solid #ccc;
         text-align: center; width: 96px; }
figure.query { border-color: #2859dc; margin-right: 14px; }
figure.samecam { border-color: #e0a020; }
figure.right { border-color: #20a040; }
figure.wrong { border-color: #d02020; }
figure img { height: %dpx; max-width: 88px; object-fit: contain; display: block;
             margin: 0 auto; background: #eee; }
figcaption { font-size: 11px; line-height: 1.35; margin-top: 3px; word-break: break-all; }
figcaption b { font-size: 12px; }
span.name { color: #666666; }
""" % THUMB_HEIGHT


def _cam_text(camid):
    return f"camid {camid}" if camid is not None and int(camid) >= 0 else "camid ?"


def write_html(results: List[dict], html_path: str, thumbnails: str = "relative",
               title: str = "Search results", about: str = "") -> List[str]:
    """A self-contained HTML page (inline CSS, no script) of ``query_index``'s ranked lists:
    per query its image, then the top-k with rank, distance and camera id; a result from the
    query's camera has an orange frame.  ``thumbnails``: ``relative`` (img paths relative to
    the page's folder), ``absolute`` (file:// URIs) or ``copy`` (small JPEG copies in
    ``<page name>_files/`` next to the page).  Returns the image sources the page uses."""
    if thumbnails not in THUMBNAIL_MODES:
        raise ValueError(f"thumbnails={thumbnails!r}: use one of {THUMBNAIL_MODES}.")
    html_path = os.path.abspath(html_path)
    folder = os.path.dirname(html_path)
    os.makedirs(folder, exist_ok=True)
    files_dir = os.path.splitext(html_path)[0] + "_files"
    if thumbnails == "copy":
        os.makedirs(files_dir, exist_ok=True)
    copied = {}

    def src(path):
        if thumbnails == "absolute":
            return pathlib.Path(path).as_uri()
        if thumbnails == "copy":
            if path not in copied:
                copied[path] = _thumbnail(path, os.path.join(files_dir, f"{len(copied)}.jpg"))
            target = copied[path]
        else:
            target = path
        rel = os.path.relpath(target, folder).replace(os.sep, "/")
        return urllib.parse.quote(rel, errors="surrogateescape")  # a non-UTF-8 name's bytes

    sources = []

    def figure(path, caption, cls=""):
        s = src(path)
        sources.append(s)
        name = html.escape(_readable(os.path.basename(path)))
        klass = f' class="{cls}"' if cls else ""
        return (f'<figure{klass}><img src="{html.escape(s, quote=True)}" alt="{name}" '
                f'title="{html.escape(_readable(path), quote=True)}"><figcaption>{caption}<br>'
                f'<span class="name">{name}</span></figcaption></figure>')

    rows = []
    for q in results:
        cells = [figure(q["query"], f"<b>query</b><br>{_cam_text(q.get('camid'))}", "query")]
        qcam = q.get("camid", -1)
        for h in q["results"]:
            same = qcam is not None and qcam >= 0 and h.get("camid", -1) == qcam
            d = max(float(h["distance"]), 0.0)  # float noise of 1 - cos(x, x) shows as -0.0
            cap = f"<b>#{h['rank']}</b> d={d:.4f}<br>{_cam_text(h.get('camid'))}"
            if "match" in h:  # identities known: right / wrong, same camera in the caption
                cap += " (same camera)" if same else ""
                cells.append(figure(h["path"], cap, "right" if h["match"] else "wrong"))
            else:
                cells.append(figure(h["path"], cap, "samecam" if same else ""))
        rows.append('<div class="row">' + "".join(cells) + "</div>")
    legend = ("Blue frame: query; orange frame: a result from the query's camera; where the "
              "identities are known from the file names, green: the query's identity, red: "
              "another. Distances: smallest first; camera ids are 0-based (? = not known).")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p class=\"about\">{html.escape(about)}"
            f"{'<br>' if about else ''}{legend}</p>\n" + "\n".join(rows) + "\n</body></html>\n")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    return sources


def _readable(text):
    """``text`` with the bytes of a non-UTF-8 file name (surrogate escapes) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _thumbnail(path, out):
    """A JPEG copy of ``path`` at most ``THUMB_HEIGHT`` pixels high (RGB)."""
    from PIL import Image

    from .data.images import to_rgb

    with Image.open(path) as img:
        img = to_rgb(img)
        if img.height > THUMB_HEIGHT:
            w = max(1, round(img.width * THUMB_HEIGHT / img.height))
            img = img.resize((w, THUMB_HEIGHT), Image.BICUBIC)
        img.save(out, quality=90)
    return out
