"""Pretrained weights by name: ``MODEL.BACKBONE.PRETRAIN_PATH`` -> one local file.

The value may be

* a local file (``.pth``, ``.bin``, ``.safetensors``), read as it is;
* a timm pretrained tag (``vit_base_patch16_224.orig_in21k_ft_in1k``, any tag
  ``timm.list_pretrained()`` lists): timm's pretrained config names its Hugging Face repo
  (``timm/<tag>``) and file;
* ``hf-hub:<owner>/<repo>[@revision]`` and ``local-dir:<folder>``: timm's own prefixes (a
  folder's weight file is picked in timm's order: ``model.safetensors``, ``pytorch_model.bin``,
  ...).

Names are fetched by ``huggingface_hub.hf_hub_download`` into the normal Hugging Face cache
(``MODEL.BACKBONE.PRETRAIN_CACHE``, else ``HF_HUB_CACHE`` / ``HF_HOME``), so one download serves
every later run, and ``HF_HUB_OFFLINE=1`` reads a filled cache with no network.  In a
distributed run one process per machine (local rank 0) downloads while the others wait
(fast-reid's ``comm.all_gather``, which also carries a failure to every process, so none
hangs); they then read the cache without network.  The file then goes through the same checks
and ``pos_embed`` resampling as a local file (``weights.load_pretrained``).

A name that cannot be had (offline without the cache, an unknown tag, a missing file, an empty
path) is ``PretrainedWeightsError``: one line naming the value, the command that fetches it
(``hf download timm/<tag> model.safetensors`` or the Python one-liner) and how to point at a
local file instead.
"""
import difflib
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Tuple

from ..errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "PAPER_TAG",
    "PretrainedSource",
    "PretrainedWeightsError",
    "check_source",
    "file_sha256",
    "fetch_command",
    "parse_spec",
    "resolve",
    "source_for_card",
]

PRETRAIN_KEY = "MODEL.BACKBONE.PRETRAIN_PATH"
# The paper's ImageNet-21k -> 1k ViT-B/16: timm's tag for the file jx_vit_base_p16_224-80ecf9dd.pth.
PAPER_TAG = "vit_base_patch16_224.orig_in21k_ft_in1k"
# Files of a Hugging Face repo tried in turn (timm's order: safetensors first).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_PREFIXES = {"hf-hub": "hf-hub", "hf_hub": "hf-hub", "local-dir": "local-dir"}
_WEIGHT_EXTS = (".pth", ".pt", ".bin", ".safetensors", ".tar", ".ckpt", ".pkl", ".npz")


class PretrainedWeightsError(UserError, FileNotFoundError):
    """Pretrained weights that cannot be found or fetched: the value, the fix, one line."""


@dataclass(frozen=True)
class PretrainedSource:
    """Where the pretrained tensors come from.

    ``spec``: the config value; ``kind``: "file" | "timm" | "hf-hub" | "local-dir"; ``path``:
    the local file read; ``repo`` / ``revision``: the Hugging Face repo and the snapshot commit
    the file came from (names); ``tag``: the timm tag; ``mean`` / ``std``: the input
    normalisation the weights were trained with, where timm records it (0-1 scale)."""

    spec: str
    kind: str
    path: str
    repo: str = ""
    revision: str = ""
    tag: str = ""
    mean: Tuple[float, ...] = field(default=())
    std: Tuple[float, ...] = field(default=())

    def as_dict(self, with_sha256: bool = True) -> dict:
        """A plain dict for a model card: the fields above plus ``file`` (its base name) and,
        with ``with_sha256``, the file's ``sha256``."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["file"] = os.path.basename(self.path)
        if with_sha256:
            out["sha256"] = file_sha256(self.path)
        return out


# ----------------------------------------------------------------------------- messages
def fetch_command(repo: str, filename: str = HUB_FILES[0]) -> str:
    """The shell command and the Python one-liner that put ``repo``'s file in the cache."""
    return (f"`hf download {repo} {filename}` (older huggingface_hub: `huggingface-cli "
            f"download {repo} {filename}`; or python -c \"from huggingface_hub import "
            f"hf_hub_download; print(hf_hub_download('{repo}', '{filename}'))\")")


def _cache_dir(cache_dir: str) -> str:
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir else constants.HF_HUB_CACHE


def _local_fix(repo: str) -> str:
    return (f"run {fetch_command(repo)} on a machine with network, with the same HF_HUB_CACHE "
            f"(or copy its hub cache folder here: models--{repo.replace('/', '--')}), or set "
            f"{PRETRAIN_KEY} to a local .safetensors / .pth file of these weights, or "
            f"MODEL.BACKBONE.PRETRAIN False")


def _empty_error() -> PretrainedWeightsError:
    return PretrainedWeightsError(
        "MODEL.BACKBONE.PRETRAIN is True but no pretrained weights are named", PRETRAIN_KEY,
        f"name them: the paper's ImageNet ViT-B/16 is the timm tag {PAPER_TAG} (fetched into the "
        f"Hugging Face cache; offline: {fetch_command('timm/' + PAPER_TAG)} first), or give a "
        f"local .safetensors / .pth file, or set MODEL.BACKBONE.PRETRAIN False")


def _tag_for_file(basename: str) -> str:
    """The timm tag whose original download URL ends in ``basename`` ("" if none)."""
    import timm
    from timm.models import get_pretrained_cfg

    for name in timm.list_pretrained():
        cfg = get_pretrained_cfg(name)
        url = (cfg.url or "") if cfg is not None else ""
        if url and url.rsplit("/", 1)[-1] == basename and cfg.hf_hub_id:
            return name
    return ""


def _missing_file_error(spec: str) -> PretrainedWeightsError:
    tag = _tag_for_file(os.path.basename(spec))
    if tag:
        fix = (f"this file is timm's {tag}: set {PRETRAIN_KEY} {tag} to fetch it into the "
               f"Hugging Face cache (offline: {fetch_command('timm/' + tag)} first), or give "
               f"the file's real path")
    else:
        fix = (f"give the path of an existing ViT checkpoint (.safetensors / .pth), a timm tag "
               f"such as {PAPER_TAG}, hf-hub:<repo> or local-dir:<folder>, or set "
               f"MODEL.BACKBONE.PRETRAIN False")
    return PretrainedWeightsError(f"checkpoint {spec!r} not found", PRETRAIN_KEY, fix)


# ----------------------------------------------------------------------------- parsing
def parse_spec(spec: str) -> Tuple[str, str]:
    """(kind, identifier) of a config value: ("empty", ""), ("file", path), ("timm", tag),
    ("hf-hub", "owner/repo[@rev]") or ("local-dir", folder)."""
    spec = str(spec or "").strip()
    if not spec:
        return "empty", ""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix.lower() in _PREFIXES:
        from timm.models import parse_model_name

        try:
            source, ident = parse_model_name(spec)  # timm's own reading of its prefixes
        except ValueError as e:
            raise PretrainedWeightsError(str(e).rstrip("."), PRETRAIN_KEY,
                                         "write hf-hub:<owner>/<repo> or "
                                         "local-dir:<folder>") from None
        return source, ident
    if (os.path.exists(spec) or os.sep in spec or "/" in spec
            or spec.lower().endswith(_WEIGHT_EXTS)):
        return "file", spec
    return "timm", spec


def _timm_cfg(tag: str):
    """timm's pretrained config of ``tag`` (its default tag for a bare architecture)."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    try:
        cfg = get_pretrained_cfg(tag)
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None:
        arch, _ = split_model_name_tag(tag)
        known = timm.list_pretrained(f"{arch}*") if arch else []
        close = known or difflib.get_close_matches(tag, timm.list_pretrained("*vit*"), n=3,
                                                   cutoff=0.6)
        hint = f"; timm knows {', '.join(close[:6])}" if close else ""
        raise PretrainedWeightsError(
            f"{tag!r} is neither a file nor a timm pretrained tag{hint}", PRETRAIN_KEY,
            f"give a local file's path, a tag from timm.list_pretrained() (the paper's is "
            f"{PAPER_TAG}), hf-hub:<repo> or local-dir:<folder>")
    if not cfg.hf_hub_id:
        raise PretrainedWeightsError(
            f"timm's {tag!r} has no Hugging Face repo (only {cfg.url or 'no URL'})",
            PRETRAIN_KEY, "download that file yourself and give its path")
    return cfg


# ----------------------------------------------------------------------------- distributed
def _process_group() -> Tuple[int, bool]:
    """(number of processes, whether this process fetches for its machine)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1, True
    from fastreid.utils import comm

    if comm._LOCAL_PROCESS_GROUP is not None:  # set by fast-reid's launcher
        return dist.get_world_size(), comm.get_local_rank() == 0
    return dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0


def _gather(obj):
    from fastreid.utils import comm

    return comm.all_gather(obj)


def _once_per_machine(fetch: Callable[[bool], str]) -> str:
    """``fetch(local_only)`` in the fetching process of each machine, then (after every process
    has waited for those) ``fetch(True)`` from the cache in the others.  A failure in a
    fetching process is raised in every process (none waits forever)."""
    world, first = _process_group()
    if world == 1:
        return fetch(False)
    path, error = None, None
    if first:
        try:
            path = fetch(False)
        except Exception as e:  # noqa: BLE001  (sent to the other processes, then raised)
            error = e
    outcomes = _gather(None if error is None else str(error))  # every process waits here
    if error is not None:
        raise error
    failed = next((o for o in outcomes if o), None)
    if failed:
        raise PretrainedWeightsError(f"the process fetching the pretrained weights failed: "
                                     f"{failed}")
    return path if first else fetch(True)


# ----------------------------------------------------------------------------- the hub
def _hub_file(repo_rev: str, filenames, cache_dir: str, local_only: bool) -> str:
    """The first of ``filenames`` of the Hugging Face repo ``owner/name[@revision]`` as a file in
    the cache, downloaded unless ``local_only`` or offline (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from timm.models._hub import hf_split

    repo, revision = hf_split(repo_rev)
    where = f"{PRETRAIN_KEY}, Hugging Face cache {_cache_dir(cache_dir)}"
    not_cached = False
    for name in filenames:
        try:
            return hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir or None,
                                   local_files_only=local_only)
        except LocalEntryNotFoundError:
            not_cached = True  # not in the cache, and no network (or offline / local_only)
            local_only = True  # the next names: the cache only (no second network timeout)
        except EntryNotFoundError:
            continue  # the repo has no such file: try the next name
        except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise PretrainedWeightsError(
                f"Hugging Face repo {repo_rev!r} cannot be read ({type(e).__name__})", where,
                "check the name (and revision), or log in (hf auth login) for a gated or "
                "private repo") from None
        except HfHubHTTPError as e:
            msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
            raise PretrainedWeightsError(f"downloading {repo}/{name} failed ({msg[:160]})",
                                         where, _local_fix(repo)) from None
    if not_cached:
        raise PretrainedWeightsError(
            f"pretrained weights {repo_rev!r} are not in the Hugging Face cache and cannot be "
            f"downloaded here (HF_HUB_OFFLINE=1 or no network)", where, _local_fix(repo))
    raise PretrainedWeightsError(f"Hugging Face repo {repo_rev!r} has none of the files "
                                 f"{', '.join(filenames)}", where,
                                 "name a repo with timm weights, or give a local file")


def _revision_of(path: str) -> str:
    """The snapshot commit of a file in the Hugging Face cache (``.../snapshots/<rev>/f``)."""
    parent = os.path.dirname(path)
    return os.path.basename(parent) if os.path.basename(os.path.dirname(parent)) == \
        "snapshots" else ""


def _local_dir_file(folder: str) -> str:
    """The weight file of a timm ``local-dir:`` folder, in timm's order of preference."""
    from timm.models import _hub

    if not os.path.isdir(folder):
        raise PretrainedWeightsError(f"local-dir folder {folder!r} not found", PRETRAIN_KEY,
                                     "give an existing folder holding model.safetensors or "
                                     "pytorch_model.bin")
    for name in _hub._PREFERRED_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    for ext in _hub._EXT_PRIORITY:
        files = sorted(f for f in os.listdir(folder) if f.endswith(ext))
        if files:
            if len(files) > 1:
                logger.warning("Several %s files in %s: using %s.", ext, folder, files[0])
            return os.path.join(folder, files[0])
    raise PretrainedWeightsError(f"local-dir folder {folder!r} holds no weight file",
                                 PRETRAIN_KEY, "put model.safetensors (or a .pth / .bin file) "
                                 "there, or give the file's path")


# ----------------------------------------------------------------------------- entry points
def resolve(spec: str, cache_dir: str = "") -> PretrainedSource:
    """``PRETRAIN_PATH`` value -> ``PretrainedSource`` with a local file, fetching names into
    the Hugging Face cache (``cache_dir``, "" = huggingface_hub's default) once per machine.

    Collective in a distributed run: every process must call it (each builds its model)."""
    return _resolve(spec, cache_dir, _once_per_machine)


def _resolve(spec, cache_dir, run):
    kind, ident = parse_spec(spec)
    if kind == "empty":
        raise _empty_error()
    if kind == "file":
        if not os.path.isfile(ident):
            raise _missing_file_error(ident)
        return PretrainedSource(spec=str(spec), kind="file", path=ident)
    if kind == "local-dir":
        return PretrainedSource(spec=str(spec), kind=kind, path=_local_dir_file(ident))
    if kind == "hf-hub":
        path = run(lambda local: _hub_file(ident, HUB_FILES, cache_dir, local))
        return PretrainedSource(spec=str(spec), kind=kind, path=path, repo=ident.split("@")[0],
                                revision=_revision_of(path))
    cfg = _timm_cfg(ident)
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if tag != ident and run is _once_per_machine:
        logger.warning("%s %r is timm's default weights of that architecture, %s; name the tag "
                       "to be sure which weights you get.", PRETRAIN_KEY, ident, tag)
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    path = run(lambda local: _hub_file(cfg.hf_hub_id, files, cache_dir, local))
    logger.info("Pretrained weights %s: %s (Hugging Face %s).", tag, path, cfg.hf_hub_id)
    return PretrainedSource(spec=str(spec), kind="timm", path=path, repo=cfg.hf_hub_id,
                            revision=_revision_of(path), tag=tag,
                            mean=tuple(float(x) for x in (cfg.mean or ())),
                            std=tuple(float(x) for x in (cfg.std or ())))


def check_source(spec: str, cache_dir: str = "") -> None:
    """Set-up check, before any data is read: the value can give weights here.  Files must
    exist; names must be known; offline (``HF_HUB_OFFLINE=1``) a name must be in the cache.
    Downloads nothing and needs no other process."""
    from huggingface_hub import constants, try_to_load_from_cache

    kind, ident = parse_spec(spec)
    if kind == "empty":
        raise _empty_error()
    if kind == "file":
        if not os.path.isfile(ident):
            raise _missing_file_error(ident)
        return
    if kind == "local-dir":
        _local_dir_file(ident)
        return
    repo_rev, files = ident, HUB_FILES
    if kind == "timm":
        cfg = _timm_cfg(ident)
        repo_rev = cfg.hf_hub_id
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    if not constants.is_offline_mode():
        return  # fetched when the model is built
    from timm.models._hub import hf_split

    repo, revision = hf_split(repo_rev)
    for name in files:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir or None, revision=revision)
        if isinstance(hit, str):
            return
    raise PretrainedWeightsError(
        f"pretrained weights {repo_rev!r} are not in the Hugging Face cache and cannot be "
        f"downloaded here (HF_HUB_OFFLINE=1)",
        f"{PRETRAIN_KEY}, Hugging Face cache {_cache_dir(cache_dir)}", _local_fix(repo))


_SHA_CACHE = {}


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (hex), remembered per (path, size, mtime) in this process."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def source_for_card(spec: str, cache_dir: str = "") -> Optional[dict]:
    """The ``PretrainedSource.as_dict()`` (with the file's sha256) of a value already fetched:
    from the cache only (no network, no other process); None, with a warning, when it cannot
    be resolved that way."""
    try:
        return _resolve(spec, cache_dir, lambda fetch: fetch(True)).as_dict()
    except (PretrainedWeightsError, OSError) as e:
        logger.warning("Model card: pretrained weights %r not resolved (%s).", spec, e)
        return None
