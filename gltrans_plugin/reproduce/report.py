"""The summary of a table's runs: each row's metrics over its seeds (mean and sample standard
deviation) beside the paper's MSMT17 numbers, as markdown, CSV and a bar chart.

A run (``<output>/<row>/seed<s>/``) is ok (``results.json``), failed (the tool's last attempt
exited non-zero, or exited 0 without results), interrupted (a signal stopped the tool's last
attempt) or missing (never run).  Earlier attempts set aside beside the folder
(``seed<s>.attempt<k>``) are not read.
"""
import csv
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .plan import METRICS, RUN_INFO_FILE, Row, decode_value, read_results, read_yaml, run_dir

__all__ = ["CSV_FIELDS", "RowSummary", "collect", "markdown_report", "markdown_table",
           "mean_std", "seeds_on_disk", "tested_on", "write_chart", "write_csv",
           "write_reports"]


def _run_info(out_dir: str) -> dict:
    path = os.path.join(out_dir, RUN_INFO_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _test_sets(out_dir: str) -> tuple:
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(path):
        return ()
    try:
        return tuple(decode_value(read_yaml(path).get("DATASETS", {}).get("TESTS", ())))
    except Exception:  # an unreadable config only loses the test-set name
        return ()


def mean_std(values: Sequence[float]):
    """(mean, sample standard deviation or None with fewer than two values); (None, None) when
    empty."""
    values = list(values)
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class RowSummary:
    row: Row
    seeds: List[int]
    metrics: Dict[int, Dict[str, float]]        # seed -> metrics of the finished runs
    failed: Dict[int, Optional[int]]            # seed -> exit code
    test_sets: tuple = ()
    interrupted: List[int] = field(default_factory=list)  # seeds a signal stopped

    @property
    def missing(self) -> List[int]:
        return [s for s in self.seeds if s not in self.metrics and s not in self.failed
                and s not in self.interrupted]

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.interrupted:
            return "interrupted"
        return "missing" if self.missing else "ok"

    @property
    def note(self) -> str:
        parts = [f"seed {s}: exit {rc}" for s, rc in sorted(self.failed.items())]
        parts += [f"seed {s}: interrupted" for s in sorted(self.interrupted)]
        if self.missing and (self.metrics or self.failed or self.interrupted):
            parts += [f"seed {s}: not run" for s in self.missing]
        return ", ".join(parts)

    def stat(self, metric: str):
        return mean_std([m[metric] for _, m in sorted(self.metrics.items()) if metric in m])


def seeds_on_disk(output: str, row: Row) -> List[int]:
    d = os.path.join(output, row.name)
    if not os.path.isdir(d):
        return []
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"seed(\d+)", n) for n in os.listdir(d))
                  if m)


def collect(rows: Sequence[Row], seeds: Optional[Sequence[int]], output: str) -> List[RowSummary]:
    """Each row's results over ``seeds`` (None: the seed folders found for that row, else 0).
    Run states: module doc."""
    out = []
    for row in rows:
        row_seeds = list(seeds) if seeds is not None else (seeds_on_disk(output, row) or [0])
        metrics, failed, interrupted, tests = {}, {}, [], ()
        for s in row_seeds:
            d = run_dir(output, row, s)
            res = read_results(d)
            if res is not None:
                metrics[s] = res
                tests = tests or _test_sets(d)
                continue
            info = _run_info(d)
            if info.get("interrupted"):
                interrupted.append(s)
            elif info.get("returncode") is not None:
                failed[s] = info["returncode"]
        out.append(RowSummary(row, row_seeds, metrics, failed, tests, interrupted))
    return out


# ---------------------------------------------------------------------- reports
def _fmt_stat(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± " + (f"{std:.2f}" if std is not None else "-")


def _fmt_paper(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def tested_on(summaries: Sequence[RowSummary]) -> List[str]:
    return sorted({t for s in summaries for t in s.test_sets})


def markdown_table(summaries: Sequence[RowSummary]) -> str:
    head = ["row", "changes", "seeds", "Rank-1", "mAP", "mINP", "paper mAP", "paper Rank-1",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        status = s.status + (f" ({s.note})" if s.note else "")
        cells = [s.row.name, s.row.description.replace("|", "/"), str(len(s.metrics))]
        cells += [_fmt_stat(*s.stat(m)) for m in METRICS]
        cells += [_fmt_paper(s.row.paper_map), _fmt_paper(s.row.paper_rank1), status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(summaries: Sequence[RowSummary], title: str = "") -> str:
    tests = tested_on(summaries)
    lines = [f"# {title}", ""] if title else []
    lines += [
        f"Test set: {', '.join(tests) or 'unknown (no finished run)'}. Rank-1 / mAP / mINP in "
        "percent, mean ± sample standard deviation over the seeds that finished ('-' with one "
        "seed); 'paper' = the paper's MSMT17 result (one run).", "",
        markdown_table(summaries), ""]
    return "\n".join(lines)


CSV_FIELDS = ["row", "label", "changes", "config", "n_seeds", "seeds",
              "rank1_mean", "rank1_std", "map_mean", "map_std", "minp_mean", "minp_std",
              "paper_map", "paper_rank1", "status", "note", "test_sets"]


def write_csv(summaries: Sequence[RowSummary], path: str):
    def num(v):
        return "" if v is None else repr(float(v))

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for s in summaries:
            stats = [num(x) for m in METRICS for x in s.stat(m)]
            w.writerow([s.row.name, s.row.label, s.row.changes, s.row.config, len(s.metrics),
                        " ".join(str(k) for k in sorted(s.metrics)), *stats,
                        num(s.row.paper_map), num(s.row.paper_rank1), s.status, s.note,
                        " ".join(s.test_sets)])


def write_chart(summaries: Sequence[RowSummary], path: str, title: str = ""):
    """Bars of mAP and Rank-1 per row, seed spread (sample std) as error bars; the paper's
    MSMT17 numbers as markers when the runs were tested on MSMT17."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * n + 1.5), 4.2))
    width = 0.38
    with_paper = tested_on(summaries) == ["MSMT17"]
    top = 1.0
    for j, (metric, colour) in enumerate((("mAP", "tab:blue"), ("Rank-1", "tab:orange"))):
        xs = [i + (j - 0.5) * width for i in range(n)]
        stats = [s.stat(metric) for s in summaries]
        means = [m if m is not None else math.nan for m, _ in stats]
        errs = [sd if sd is not None else 0.0 for _, sd in stats]
        ax.bar(xs, means, width, yerr=errs, capsize=4, color=colour, label=metric)
        top = max([top] + [m + e for m, e in zip(means, errs) if not math.isnan(m)])
        if with_paper:
            paper = [(s.row.paper_map if metric == "mAP" else s.row.paper_rank1)
                     for s in summaries]
            px = [x for x, p in zip(xs, paper) if p is not None]
            ax.scatter(px, [p for p in paper if p is not None], marker="_", s=300,
                       color="black", zorder=3, label="paper (MSMT17)" if j == 0 else None)
            top = max([top] + [p for p in paper if p is not None])
    for i, s in enumerate(summaries):
        if s.status != "ok":
            ax.text(i, 0.02 * top, s.status, ha="center", va="bottom", color="red", fontsize=9)
    ax.set_xticks(range(n))
    ax.set_xticklabels([s.row.label for s in summaries], rotation=20 if n > 5 else 0)
    ax.set_ylabel("percent")
    ax.set_ylim(0, top * 1.25)  # room for the legend above the bars
    seeds = max((len(s.metrics) for s in summaries), default=0)
    ax.set_title((title + "\n" if title else "") +
                 f"test set {', '.join(tested_on(summaries)) or '?'}; error bars: std over "
                 f"seeds (up to {seeds})", fontsize=10)
    ax.legend(fontsize=9, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(summaries: Sequence[RowSummary], output: str, stem: str,
                  title: str = "") -> Dict[str, str]:
    """``<output>/<stem>.md``, ``.csv`` and ``.png``; returns {"md": path, ...} and the
    markdown under "markdown"."""
    os.makedirs(output, exist_ok=True)
    paths = {ext: os.path.join(output, f"{stem}.{ext}") for ext in ("md", "csv", "png")}
    text = markdown_report(summaries, title)
    with open(paths["md"], "w") as f:
        f.write(text)
    write_csv(summaries, paths["csv"])
    write_chart(summaries, paths["png"], title)
    return dict(paths, markdown=text)
