"""The README's and the docs pages' examples, run as written, in the repository.

Every fenced ``bash`` / ``sh`` / ``shell`` / ``python`` block of the pages below runs with the
repository root as working directory (bash with ``-e -o pipefail``; python through the venv's
interpreter reading the block on stdin, as ``.venv/bin/python -`` would).  A markdown comment on
the line before a block changes that:

* ``<!-- test: skip (why) -->``: not run (it needs a GPU, a real dataset, the network, or hours);
* ``<!-- test: slow (why) -->``: run only with ``-m examples`` (marked ``slow`` and ``examples``:
  minutes each, so the default run leaves them out; ``pytest -q -m examples tests/test_readme.py``
  runs them all, about 12 minutes on 2 cores);
* ``<!-- test: file PATH -->``: the block is a file the text asks the reader to write: it is
  written to PATH when its turn comes and PATH is restored (or removed) after the module;
* ``<!-- test: fresh DIR ... -->`` (beside one of the above): the block starts a training in
  DIR, which the text expects to be new (a second run into it stops, asking for ``--resume``
  or ``--overwrite``): an earlier DIR is moved to ``DIR.previous`` first.

The blocks of one page run in page order (a block's test first runs the earlier blocks of its
page that the selected mode includes, once per session); a block that names the demo's output
folder (``logs/synthetic_demo/gltrans``) runs after the README's demo block, so it must be
slow.  After each block the tracked files must be as they were (no example writes into the
repository's own files) and no new file may appear outside the git-ignored folders (``logs/``,
``datasets/``): examples write only there.  The check compares ``git status`` and the content
of modified files before and after the block; see ``_blamed`` for what is put down to the block
when other people edit the tree at the same time.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ("README.md", "docs/training.md", "docs/own_data.md", "docs/model.md",
         "docs/reproducing.md", "docs/evaluation.md", "docs/tools.md", "docs/reliability.md",
         "docs/compatibility.md", "docs/deployment.md", "docs/weights.md", "docs/distributed.md",
         "docs/layout.md")
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
DEMO_COMMAND = (".venv/bin/python projects/train_net.py "
                "--config-file configs/GLTrans/synthetic_demo.yml")
DEMO_OUTPUT = "logs/synthetic_demo/gltrans"
DEMO_DIR = os.path.join(ROOT, DEMO_OUTPUT)
README_MAX_LINES = 200
TIMEOUT_S = {"default": 600, "slow": 1800}

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARK = re.compile(r"^<!--\s*test:\s*(skip|slow|file|fresh)\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int           # 1-based line of the opening fence
    lang: str
    text: str
    mode: str = "default"   # default | slow | skip | file
    arg: str = ""           # the reason (skip / slow) or the path (file)
    fresh: tuple = ()       # output folders the block expects not to hold an earlier run
    runs: bool = field(init=False)

    def __post_init__(self):
        self.runs = self.mode in ("default", "slow") and self.lang in RUN_LANGS

    @property
    def id(self):
        return f"{self.page}:{self.line}"


def parse_blocks(page):
    """Every fenced block of ``page`` with the test marker on the last non-blank line before
    it (if any)."""
    lines = open(os.path.join(ROOT, page), encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        assert j < len(lines), f"{page}:{start + 1}: code block never closed"
        mode, arg, fresh = "default", "", ()
        for k in range(start - 1, -1, -1):  # the markers on the lines right before the fence
            if not lines[k].strip():
                continue
            mark = _MARK.match(lines[k].strip())
            if not mark:
                break
            if mark.group(1) == "fresh":
                fresh += tuple(mark.group(2).split())
            else:
                mode, arg = mark.group(1), mark.group(2).strip("() ")
        blocks.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                            mode, arg, fresh))
        i = j + 1
    return blocks


BLOCKS = [b for page in PAGES for b in parse_blocks(page)]


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def repo_state():
    """({modified tracked file: (git status, sha1)}, untracked not-ignored files)."""
    tracked = {}
    for line in _git("status", "--porcelain", "--untracked-files=no").splitlines():
        path = line[3:].split(" -> ")[-1]
        full = os.path.join(ROOT, path)
        digest = None
        if os.path.isfile(full):
            with open(full, "rb") as f:
                digest = hashlib.sha1(f.read()).hexdigest()
        tracked[path] = (line[:2], digest)
    untracked = set(_git("ls-files", "--others", "--exclude-standard").splitlines())
    return tracked, untracked


# Files nobody edits by hand: a change of one of these during a block is the block's doing.
_DATA_EXT = (".png", ".jpg", ".jpeg", ".csv", ".json", ".onnx", ".pth", ".npz", ".npy",
             ".faiss", ".html")


def _blamed(block, paths):
    """The changed ``paths`` that ``block`` wrote: those it names, data files (images,
    tables, checkpoints), and anything in the repository's top folder (a tool's default
    output).  Source, docs and configs edited meanwhile by someone else are not blamed."""
    return sorted(p for p in paths
                  if p in block.text or p.lower().endswith(_DATA_EXT) or "/" not in p)


_DONE = {}          # block id -> CompletedProcess (each block runs once per session)
_WRITTEN = {}       # path written for a "file" block -> its previous content (None: absent)


def _write_file_block(block):
    path = os.path.join(ROOT, block.arg)
    if block.arg not in _WRITTEN:
        _WRITTEN[block.arg] = open(path, "rb").read() if os.path.exists(path) else None
    with open(path, "w", encoding="utf-8") as f:
        f.write(block.text)


def run_block(block):
    """Run ``block`` once (cached) and return its CompletedProcess; a block that failed
    fails every later call too (the blocks after it on its page depend on it)."""
    if block.id in _DONE:
        proc = _DONE[block.id]
        assert proc.returncode == 0, f"{block.id}, which this block follows, failed"
        return proc
    if block.mode == "file":
        _write_file_block(block)
        _DONE[block.id] = subprocess.CompletedProcess([], 0, "", "")
        return _DONE[block.id]
    for rel in block.fresh:  # a new run into a folder that holds one stops (--overwrite)
        path = os.path.join(ROOT, rel)
        if os.path.isdir(path):
            shutil.rmtree(path + ".previous", ignore_errors=True)
            os.rename(path, path + ".previous")
    before = repo_state()
    if RUN_LANGS[block.lang] == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        cmd = [os.path.join(ROOT, ".venv", "bin", "python"), "-"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, input=block.text if cmd[-1] == "-" else None,
                          capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S["slow" if block.mode == "slow" else "default"])
    after = repo_state()
    out = (proc.stdout + proc.stderr)[-4000:]
    problem = f"failed (exit {proc.returncode}):\n{out}" if proc.returncode else ""
    changed = _blamed(block, {p for p in set(before[0]) | set(after[0])
                              if before[0].get(p) != after[0].get(p)})
    if not problem and changed:
        problem = f"changed tracked files: {changed}"
    new = _blamed(block, after[1] - before[1] - set(_WRITTEN))
    if not problem and new:
        problem = f"wrote files outside the git-ignored folders: {new}"
    _DONE[block.id] = proc if not problem else subprocess.CompletedProcess(
        proc.args, proc.returncode or 1, proc.stdout, proc.stderr)
    assert not problem, f"{block.id} {problem}"
    return proc


def _slow_selected(config):
    """Whether the slow blocks run in this session: ``-m examples`` selects them (the default
    ``-m "not examples and not demo_size"`` of setup.cfg leaves them out)."""
    expr = config.getoption("-m") or ""
    return "examples" in expr and "not examples" not in expr and "not slow" not in expr


def run_page_until(block, config):
    """Run the blocks of ``block``'s page before it (those the selected mode includes), then
    ``block``; a block that uses the demo's model gets the README's demo first."""
    if DEMO_OUTPUT in block.text and block is not demo_block():
        run_block(demo_block())
    for b in BLOCKS:
        if b.page != block.page or b.line >= block.line:
            continue
        if b.mode == "file" or (b.runs and (b.mode == "default" or _slow_selected(config))):
            run_block(b)
    return run_block(block)


def demo_block():
    found = [b for b in BLOCKS if b.page == "README.md" and b.text.strip() == DEMO_COMMAND]
    assert len(found) == 1, f"the README's demo block ({DEMO_COMMAND}) not found once: {found}"
    return found[0]


@pytest.fixture(scope="module", autouse=True)
def _restore_written_files():
    yield
    for rel, old in _WRITTEN.items():
        path = os.path.join(ROOT, rel)
        if old is None:
            if os.path.exists(path):
                os.remove(path)
        else:
            with open(path, "wb") as f:
                f.write(old)
    _WRITTEN.clear()


def _params():
    out = []
    for b in BLOCKS:
        if b.lang not in RUN_LANGS:
            continue
        marks = [pytest.mark.slow, pytest.mark.examples] if b.mode == "slow" else []
        if b.mode == "skip":
            marks.append(pytest.mark.skip(reason=b.arg or "marked skip"))
        out.append(pytest.param(b, id=b.id, marks=marks))
    return out


@pytest.mark.parametrize("block", _params())
def test_example_runs_as_written(block, request):
    proc = run_page_until(block, request.config)
    if block is demo_block():
        _check_demo_output(proc)


def _check_demo_output(proc):
    """The demo ends as the README says, 'about' Rank-1 29-31 / mAP 31.5-32.5: the band
    asserted is wider (Rank-1 22-38, mAP 27-37), the run being seeded but machine-dependent."""
    out = proc.stdout + proc.stderr
    line = re.search(r"Before training: Rank-1 ([\d.]+)\s+mAP ([\d.]+) \| after training: "
                     r"Rank-1 ([\d.]+)\s+mAP ([\d.]+)", out)
    assert line, f"no before / after line in the demo's output:\n{out[-3000:]}"
    with open(os.path.join(DEMO_DIR, "results.json")) as f:
        final = json.load(f)["final"]
    final = final.get("SyntheticReID", final)  # one test set: the metrics themselves
    assert float(line.group(3)) == pytest.approx(final["Rank-1"], abs=0.01)
    assert float(line.group(4)) == pytest.approx(final["mAP"], abs=0.01)
    assert 22.0 <= final["Rank-1"] <= 38.0, final
    assert 27.0 <= final["mAP"] <= 37.0, final
    assert float(line.group(2)) < 5.0, "the untrained model should be near chance"


def test_markers_are_known_and_every_runnable_block_is_covered():
    """A misspelt marker would silently run (or not run) a block: every ``<!-- test`` comment
    must parse, sit right before a fence, and a ``file`` block must name a path."""
    for page in PAGES:
        lines = open(os.path.join(ROOT, page), encoding="utf-8").read().splitlines()
        for n, line in enumerate(lines):
            if "<!-- test" not in line:
                continue
            assert _MARK.match(line.strip()), f"{page}:{n + 1}: unknown test marker {line!r}"
            nxt = next((x for x in lines[n + 1:] if x.strip() and not _MARK.match(x.strip())), "")
            assert _FENCE.match(nxt), f"{page}:{n + 1}: the marker is not before a code block"
    for b in BLOCKS:
        if b.mode == "file":
            assert b.arg and not os.path.isabs(b.arg), f"{b.id}: file marker needs a relative path"
        for rel in b.fresh:
            assert rel.startswith("logs/") and ".." not in rel, f"{b.id}: fresh {rel}: not in logs/"
        if b.mode in ("skip", "slow"):
            assert b.arg, f"{b.id}: say why the block is {b.mode}"
        if b.runs and DEMO_OUTPUT in b.text:
            assert b.mode == "slow", f"{b.id} uses the demo's model (minutes): mark it slow"


def test_a_block_that_writes_into_the_repository_fails():
    """The check itself: a block leaving a file in the repository's top folder is caught."""
    probe = "readme_test_probe.txt"
    block = Block("probe.md", 1, "bash", f"echo x > {probe}\n")
    try:
        with pytest.raises(AssertionError, match="outside the git-ignored folders.*" + probe):
            run_block(block)
    finally:
        _DONE.pop(block.id, None)
        if os.path.exists(os.path.join(ROOT, probe)):
            os.remove(os.path.join(ROOT, probe))


def test_readme_is_a_door():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"
    assert demo_block().mode == "slow"


def test_compatibility_page_lists_every_fix():
    """docs/compatibility.md's table names exactly the fixes ``import gltrans_plugin`` applies."""
    from gltrans_plugin import compat

    text = open(os.path.join(ROOT, "docs", "compatibility.md"), encoding="utf-8").read()
    listed = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert listed == set(compat.APPLIED), (
        f"on the page, not applied: {sorted(listed - set(compat.APPLIED))}; "
        f"applied, not on the page: {sorted(set(compat.APPLIED) - listed)}")


def test_switches_on_the_model_page_are_config_keys():
    """Every ``MODEL.`` / ``SOLVER.`` key docs/model.md names exists in the plugin's config
    (``{A,B}.C`` and ``X.Y``, ``Z`` shorthands expanded)."""
    from fastreid.config import get_cfg

    from gltrans_plugin.config import add_gltrans_config

    cfg = get_cfg()
    add_gltrans_config(cfg)
    text = open(os.path.join(ROOT, "docs", "model.md"), encoding="utf-8").read()
    missing = []
    for cell in re.findall(r"`((?:MODEL|SOLVER)\.[A-Z0-9_.{},]+)`((?:, `[A-Z0-9_]+`)*)", text):
        key, more = cell
        m = re.match(r"(.*)\{(.*)\}(.*)", key)
        keys = [m.group(1) + k + m.group(3) for k in m.group(2).split(",")] if m else [key]
        parent = keys[0].rsplit(".", 1)[0]
        keys += [f"{parent}.{k}" for k in re.findall(r"`([A-Z0-9_]+)`", more)]
        for k in keys:
            node = cfg
            for part in k.rstrip(".*").split("."):
                if part not in node:
                    missing.append(k)
                    break
                node = node[part]
    assert not missing, f"docs/model.md names keys the config lacks: {missing}"


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces
    to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lstrip("#").strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    with open(path, encoding="utf-8") as f:
        lines, fenced, out = f.read().splitlines(), False, set()
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.add(_slug(line))
    return out


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    """Every relative link of the page names an existing file, and its #anchor a heading."""
    base = os.path.dirname(os.path.join(ROOT, page))
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    bad = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+://", target):
            continue
        rel, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(base, rel)) if rel else os.path.join(ROOT, page)
        if not os.path.exists(path):
            bad.append(f"{target}: no such file")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            bad.append(f"{target}: no heading #{anchor}")
    assert not bad, f"{page}: " + "; ".join(bad)


if __name__ == "__main__":  # list the blocks and how each is run
    for b in BLOCKS:
        print(f"{b.id:32s} {b.lang or '-':8s} {b.mode:8s} {b.arg}", file=sys.stdout)
