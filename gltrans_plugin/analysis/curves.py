"""Training curves from a fast-reid run folder: per-branch losses, learning rate, accuracy.

fast-reid's ``JSONWriter`` writes one JSON object per logged iteration to ``metrics.json``
(``iteration``, ``total_loss``, ``loss_*``, ``lr``, ...).  With ``import gltrans_plugin`` every
evaluation is in it too, as ``<dataset>/<metric>`` (``Market1501/mAP``) at the iteration it
followed (compat fixes ``eval_results_per_dataset`` / ``eval_results_written``; for fast-reid's
DefaultTrainer and the plugin's Trainer alike).  Older runs have bare ``mAP`` keys (one test set)
or no accuracy at all (fast-reid wrote the epoch's last iteration before the evaluation put its
results); for those the accuracy is read from ``log.txt``'s "Evaluation results in csv format"
tables (at the iteration of the preceding log line).
"""
import json
import logging
import os
import re
from typing import Dict, List, Optional

logger = logging.getLogger(__name__)

__all__ = ["plot_curves", "read_eval_from_log", "read_metrics", "training_curves"]

_ITER_RE = re.compile(r"epoch/iter:\s*(\d+)/(\d+)")
_EVAL_KEYS = ("mAP", "Rank-1", "Rank-5", "mINP")


def _is_training_row(row: Dict) -> bool:
    return any(k in ("lr", "total_loss") or k.startswith("loss_") for k in row)


def _parse_line(line: str):
    """(metrics row or None, whether the whole line was that row).  A cut-off row (a kill
    mid-write) that the next run appended to keeps the complete row at its end."""
    for start in [0] + [i for i, c in enumerate(line) if c == "{" and i]:
        try:
            row = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            return row, start == 0
    return None, False


def read_metrics(path: str) -> List[Dict]:
    """The rows of a ``metrics.json`` (one JSON object per line, appended by fast-reid's
    ``JSONWriter``).

    A run killed mid-write leaves a cut-off line: it is skipped with a warning naming the file
    and line (a complete row the next run appended to it is kept).  A training resumed (or
    started again) in the same folder appends rows from its start iteration again: they
    replace the earlier rows from that iteration on, so every iteration has one row, the last
    attempt's.  A file with no row at all is an error naming its first line."""
    rows: List[Dict] = []
    skipped, salvaged = [], []  # line numbers
    last_train = None  # iteration of the last training row (evaluation rows may come late)
    with open(path, errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            row, whole = _parse_line(line)
            if row is None:
                skipped.append(n)
                continue
            if not whole:
                salvaged.append(n)
            it = row.get("iteration")
            if _is_training_row(row) and isinstance(it, int):
                if last_train is not None and it <= last_train:
                    before = len(rows)
                    rows = [r for r in rows if not (isinstance(r.get("iteration"), int)
                                                    and r["iteration"] >= it)]
                    logger.info("%s:%d: the training restarted at iteration %d (resumed or "
                                "started again in this folder); %d earlier rows from there on "
                                "are replaced by the new ones.", path, n, it, before - len(rows))
                last_train = it
            rows.append(row)
    if not rows:
        if skipped:
            raise ValueError(f"{path}:{skipped[0]} is not a JSON object; is this fast-reid's "
                             f"metrics.json?")
        raise ValueError(f"{path} holds no metrics rows (did the run log any iteration?).")
    for lines, what in ((skipped, "skipped"), (salvaged, "the complete row at its end kept")):
        if lines:
            logger.warning("%s:%s: not a complete JSON row (a write cut off by a kill?): %s.",
                           path, ",".join(map(str, lines[:10])) + (" ..." if len(lines) > 10
                                                                   else ""), what)
    return rows


def read_eval_from_log(path: str) -> List[Dict]:
    """[{"iteration", "dataset", "mAP", "Rank-1", ...}] from fast-reid's result tables."""
    out, iteration, header = [], 0, None
    with open(path, errors="replace") as f:
        for line in f:
            m = _ITER_RE.search(line)
            if m:
                iteration = int(m.group(2))
                continue
            if "|" not in line:
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if "mAP" in cells and "Dataset" in cells:
                header = cells
            elif header and len(cells) == len(header) and not set(cells[0]) <= set(":-"):
                row = {"iteration": iteration, "dataset": cells[header.index("Dataset")]}
                for k, v in zip(header, cells):
                    if k in _EVAL_KEYS:
                        try:
                            row[k] = float(v)
                        except ValueError:
                            pass
                if len(row) > 2:
                    out.append(row)
    return out


def _accuracy_key(key: str) -> Optional[str]:
    """``key`` if it is an accuracy scalar (``<dataset>/<metric>``, or a bare ``<metric>`` of an
    older run), else None (losses, ``health/<branch>/<stat>`` ...)."""
    name = key.rsplit("/", 1)[-1]
    if name not in _EVAL_KEYS or key.startswith("health/"):
        return None
    return key


def training_curves(run_dir_or_metrics: str) -> Dict:
    """{"losses": {key: (iters, values)}, "lr": (iters, values),
    "accuracy": {"<dataset>/<metric>": (iters, values)}, "eval": {"mAP": (iters, values),
    "Rank-1": ...} (the first test set's), "eval_source": "metrics.json" | "log.txt" | None}
    from a run folder or a metrics.json."""
    path = run_dir_or_metrics
    run_dir = os.path.dirname(path) if path.endswith(".json") else path
    metrics = path if path.endswith(".json") else os.path.join(path, "metrics.json")
    if not os.path.isfile(metrics):
        raise FileNotFoundError(f"no metrics.json at {metrics!r}: give a fast-reid OUTPUT_DIR "
                                f"or the metrics.json file itself.")
    rows = read_metrics(metrics)
    losses: Dict[str, tuple] = {}
    lr, accuracy = ([], []), {}
    for r in rows:
        it = r.get("iteration")
        if it is None:
            continue
        for k, v in r.items():
            if k.startswith("loss_") or k == "total_loss":
                losses.setdefault(k, ([], []))
                losses[k][0].append(it)
                losses[k][1].append(float(v))
            elif k == "lr":
                lr[0].append(it)
                lr[1].append(float(v))
            elif _accuracy_key(k):
                accuracy.setdefault(k, ([], []))
                accuracy[k][0].append(it)
                accuracy[k][1].append(float(v))
    source = "metrics.json" if accuracy else None
    log = os.path.join(run_dir, "log.txt")
    if not accuracy and os.path.isfile(log):
        for r in read_eval_from_log(log):
            for k in _EVAL_KEYS:
                if k in r:
                    key = f"{r['dataset']}/{k}" if r.get("dataset") else k
                    accuracy.setdefault(key, ([], []))
                    accuracy[key][0].append(r["iteration"])
                    accuracy[key][1].append(r[k])
        source = "log.txt" if accuracy else None
    for v in accuracy.values():  # by iteration (a before-training row may come late in a file)
        order = sorted(range(len(v[0])), key=v[0].__getitem__)
        v[0][:], v[1][:] = [v[0][i] for i in order], [v[1][i] for i in order]
    sets = _by_dataset(accuracy)
    return {"losses": losses, "lr": lr, "accuracy": accuracy,
            "eval": next(iter(sets.values())) if sets else {}, "eval_source": source}


def _by_dataset(accuracy: Dict) -> Dict[str, Dict]:
    """{dataset ("" for bare keys): {metric: (iters, values)}}, in the order first seen."""
    out: Dict[str, Dict] = {}
    for key, v in accuracy.items():
        dataset, _, metric = key.rpartition("/")
        out.setdefault(dataset, {})[metric] = v
    return out


def _branch_groups(losses: Dict) -> Dict[str, Dict]:
    """Split loss keys into CE-like / triplet-like / other panels (per-branch keys kept)."""
    groups = {"classification (CE)": {}, "metric (triplet)": {}, "other": {}}
    for k, v in losses.items():
        if k == "total_loss":
            continue
        g = ("classification (CE)" if "_ce" in k or "cls" == k[5:8] else
             "metric (triplet)" if "triplet" in k else "other")
        groups[g][k[5:] if k.startswith("loss_") else k] = v
    return {g: d for g, d in groups.items() if d}


def plot_curves(curves: Dict, out_path: str, title: Optional[str] = None) -> str:
    """PNG with the total loss, one panel per loss family (a line per branch), lr, mAP/Rank-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _branch_groups(curves["losses"])
    panels = 1 + len(groups) + 1 + 1
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.2), squeeze=False)
    axes = axes[0]
    ax = axes[0]
    if "total_loss" in curves["losses"]:
        ax.plot(*curves["losses"]["total_loss"], color="k")
    ax.set_title("total loss")
    for ax, (name, d) in zip(axes[1:], groups.items()):
        for k, (x, y) in sorted(d.items()):
            ax.plot(x, y, label=k, lw=1.2)
        ax.set_title(f"loss: {name}")
        ax.legend(fontsize=6)
    ax = axes[-2]
    ax.plot(*curves["lr"], color="tab:purple")
    ax.set_title("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax = axes[-1]
    acc = curves.get("accuracy")
    sets = _by_dataset(acc) if acc else ({"": curves["eval"]} if curves["eval"] else {})
    for dataset, metrics in sets.items():
        for k, style in (("mAP", "o-"), ("Rank-1", "s--"), ("mINP", "^:")):
            if k in metrics:
                label = f"{dataset} {k}" if len(sets) > 1 else k
                ax.plot(*metrics[k], style, label=label)
    ax.set_title("evaluation (%)")
    if sets:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no evaluation logged", ha="center", va="center",
                transform=ax.transAxes)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    logger.info("Training curves saved to %s", out_path)
    return out_path
