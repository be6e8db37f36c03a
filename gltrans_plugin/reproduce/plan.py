"""What to run: the paper's table rows, presets turned into command-line options, and one run
(row, seed) per folder with its ``train_net.py`` command.

Nothing here knows where the repository keeps its files: the ablation configs folder, the
presets and the training script are arguments (``tools/reproduce.py`` passes its
repository's).
"""
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["METRICS", "OUTPUT_FILE", "PAPER_TABLES", "PRESET_KEY", "RESERVED_OPTS",
           "RESULTS_FILE", "RUN_INFO_FILE", "Row", "Run", "check_dataset", "check_opts",
           "config_rows", "decode_value", "first_comment", "flatten", "format_value",
           "own_keys", "plan", "preset_opts", "preset_path", "preset_values", "read_results",
           "read_yaml", "run_dir", "shared_overrides", "table_rows", "table_title", "to_opts",
           "train_command"]

RESULTS_FILE = "results.json"      # written by the trainer at the end of a finished training
RUN_INFO_FILE = "reproduce.json"   # command, exit code, time of the tool's last attempt
OUTPUT_FILE = "train_output.txt"   # the subprocess' stdout + stderr
PRESET_KEY = "_PRESET_"
RESERVED_OPTS = ("OUTPUT_DIR", "SEED")  # set per run by the tool
METRICS = ("Rank-1", "mAP", "mINP")  # the metrics a table reports


@dataclass(frozen=True)
class Row:
    """One row of a table: its config and the paper's MSMT17 result (None when not a paper row)."""
    name: str                  # folder name under the output directory (the config's stem)
    config: str                # yaml path
    label: str                 # short name, as in the paper ("Model-3", "PCB*", "P = 6")
    changes: str               # what the row changes
    paper_map: Optional[float] = None
    paper_rank1: Optional[float] = None

    @property
    def description(self) -> str:
        if self.label == self.name:  # a config of one's own: its first comment line
            return self.changes or self.label
        return f"{self.label}: {self.changes}" if self.changes else self.label


# The paper's MSMT17 results per ablation row, (mAP, Rank-1) in percent, in the paper's row
# order: Table 4 (comparison with other part-based methods), Table 5 (the components), Table 6
# (aggregated layers), Table 7 (GAE aggregation strategies), Table 8 (number of parts), Table 9
# (PTL layers and sharing), Table 10 (GMA heads).  Each row is a config <name>.yml of the
# ablation configs folder, whose first comment line repeats the numbers (a test checks they
# agree).
PAPER_TABLES = {
    4: ("Comparison with other part-based methods", (
        ("table4_baseline", "Baseline", "ViT-B/16 + SIE, last-layer class token", 66.3, 84.0),
        ("table4_pcb", "PCB*", "last-layer tokens, stripe average pooling + cls^L", 68.2, 85.2),
        ("table4_msf", "MSF*", "GAE + PTF (last 3 layers), stripe average pooling", 67.6, 84.8),
        ("table4_ours", "Ours", "full GLTrans", 69.0, 85.8),
    )),
    5: ("The impact of each component", (
        ("table5_model1", "Model-1", "baseline (ViT-B/16 + SIE)", 66.3, 84.0),
        ("table5_model2", "Model-2", "+ GAE", 67.8, 85.2),
        ("table5_model3", "Model-3", "+ PTL (last layer's patch tokens)", 68.5, 85.5),
        ("table5_model4", "Model-4", "+ PTF", 68.8, 85.7),
        ("table5_model5", "Model-5", "+ GMA (full GLTrans)", 69.0, 85.8),
    )),
    6: ("Aggregated layers", (
        ("table6_layers_9-12", "layers 9-12", "AGG_LAYERS (-4, -3, -2, -1)", 68.2, 85.2),
        ("table6_layers_10-12", "layers 10-12", "AGG_LAYERS (-3, -2, -1) (default)", 68.6, 85.8),
        ("table6_layers_11-12", "layers 11-12", "AGG_LAYERS (-2, -1)", 67.8, 85.1),
        ("table6_layers_12", "layer 12", "AGG_LAYERS (-1,)", 67.5, 85.1),
    )),
    7: ("GAE aggregation strategies", (
        ("table7_addition", "Addition", "f_g = sum of the class tokens", 66.4, 84.7),
        ("table7_concatenation", "Concatenation", "f_g = concat of the class tokens", 66.6, 84.5),
        ("table7_one_fc", "One FC", "GAE.AGGREGATION fc (default)", 69.0, 85.8),
        ("table7_two_fc", "Two FC", "GAE.AGGREGATION two_fc", 66.3, 84.1),
    )),
    8: ("Number of parts", (
        ("table8_parts_1", "P = 1", "PTL.NUM_PARTS 1", 68.3, 85.2),
        ("table8_parts_2", "P = 2", "PTL.NUM_PARTS 2", 69.0, 85.7),
        ("table8_parts_3", "P = 3", "PTL.NUM_PARTS 3 (default)", 69.0, 85.8),
        ("table8_parts_6", "P = 6", "PTL.NUM_PARTS 6", 68.9, 85.7),
    )),
    9: ("PTL layers and sharing", (
        ("table9_model1", "Model-1", "stripe average pooling (PTL.DEPTH 0)", 68.2, 85.5),
        ("table9_model2", "Model-2", "1 unshared PTL layer", 68.9, 85.7),
        ("table9_model3", "Model-3", "2 unshared PTL layers", 67.6, 85.1),
        ("table9_model4", "Model-4", "1 shared PTL layer", 68.5, 85.5),
        ("table9_model5", "Model-5", "2 shared PTL layers (default)", 69.0, 85.8),
    )),
    10: ("GMA heads", (
        ("table10_heads_1", "h = 1", "GMA.NUM_HEADS 1", 68.5, 85.4),
        ("table10_heads_4", "h = 4", "GMA.NUM_HEADS 4", 68.6, 85.4),
        ("table10_heads_6", "h = 6", "GMA.NUM_HEADS 6", 68.8, 85.3),
        ("table10_heads_12", "h = 12", "GMA.NUM_HEADS 12 (default)", 69.0, 85.8),
    )),
}


# ---------------------------------------------------------------------- rows
def table_rows(table: int, configs_dir: str) -> List[Row]:
    """The rows of paper table ``table`` (4..10), in the paper's order; row ``name`` is the
    config ``<configs_dir>/<name>.yml``."""
    if table not in PAPER_TABLES:
        raise ValueError(f"No table {table}: the ablation tables are {sorted(PAPER_TABLES)}.")
    return [Row(name, os.path.join(configs_dir, name + ".yml"), label, changes, m, r)
            for name, label, changes, m, r in PAPER_TABLES[table][1]]


def table_title(table: Optional[int]) -> str:
    return f"Table {table}: {PAPER_TABLES[table][0]}" if table in PAPER_TABLES else "Configs"


def _paper_row(path: str, configs_dir: Optional[str]) -> Optional[Row]:
    if not configs_dir:
        return None
    real = os.path.realpath(path)
    for n in PAPER_TABLES:
        for row in table_rows(n, configs_dir):
            if os.path.realpath(row.config) == real:
                return row
    return None


def first_comment(path: str) -> str:
    """The first comment line of a yaml file, without the '#' (empty if none)."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line:
                return ""
    return ""


def config_rows(paths: Sequence[str], configs_dir: Optional[str] = None) -> List[Row]:
    """Rows for a list of configs: a paper row (a config of ``configs_dir``) keeps its label and
    numbers; another config is named by its file stem (made unique) and described by its first
    comment line."""
    rows, names = [], set()
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Config file not found: {path}")
        known = _paper_row(path, configs_dir)
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}_{k}", k + 1
        names.add(name)
        if known:
            rows.append(Row(name, path, known.label, known.changes, known.paper_map,
                            known.paper_rank1))
        else:
            rows.append(Row(name, path, stem, first_comment(path)))
    return rows


# ---------------------------------------------------------------------- presets / options
def decode_value(value):
    """A raw yaml / command-line value as fast-reid's config decodes it (literal_eval of
    strings that are python literals, other strings kept)."""
    from yacs.config import CfgNode

    return CfgNode._decode_cfg_value(value)


def format_value(value) -> str:
    """A config value as a command-line string that fast-reid's ``merge_from_list`` decodes back
    to the same value: python literals (tuples, lists, numbers, booleans, None) by ``repr``,
    strings as they are unless they would read as a literal ("1", "True", "(1, 2)": quoted)."""
    if isinstance(value, str):
        return value if decode_value(value) == value else repr(value)
    return repr(value)


def flatten(node: dict, prefix: str = "") -> Dict[str, Any]:
    """Nested mapping (yaml dict or CfgNode) -> {"A.B.C": decoded value}, in file order."""
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = decode_value(v)
    return out


def to_opts(values: Dict[str, Any]) -> List[str]:
    """{"KEY": value} -> ["KEY", "value", ...] for ``train_net.py``'s trailing options."""
    opts = []
    for k, v in values.items():
        opts += [k, format_value(v)]
    return opts


def read_yaml(path: str) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of config keys.")
    return data


def own_keys(path: str) -> Dict[str, Any]:
    """The keys a yaml config sets itself (not those of its ``_BASE_``), flattened."""
    data = read_yaml(path)
    data.pop("_BASE_", None)
    return flatten(data)


def preset_path(preset: str, presets: Optional[Mapping[str, str]] = None) -> str:
    """A preset name (a key of ``presets``: name -> yaml path) or a yaml path -> the yaml
    path."""
    presets = presets or {}
    if preset in presets:
        return presets[preset]
    if os.path.isfile(preset):
        return preset
    raise ValueError(f"Unknown preset {preset!r}: use one of {sorted(presets)} or a yaml file.")


def preset_values(preset: str, presets: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The flat {KEY: value} of a preset yaml (``preset_path``).

    ``_PRESET_.FROM`` (a path relative to the preset): every key that config sets itself (not
    the keys of its ``_BASE_``), minus ``_PRESET_.EXCLUDE`` (keys, or sections: "SOLVER.AMP"
    drops every key under it); then the preset's own keys, which win.  A preset cannot have a
    ``_BASE_``: it is applied on top of a row config that has its own (fast-reid's config
    allows one ``_BASE_`` per file).
    """
    path = preset_path(preset, presets)
    data = read_yaml(path)
    if "_BASE_" in data:
        raise ValueError(f"Preset {path} has a _BASE_; a preset is applied on top of a row "
                         f"config (which has its own), use {PRESET_KEY}.FROM instead.")
    meta = data.pop(PRESET_KEY, None) or {}
    unknown = set(meta) - {"FROM", "EXCLUDE"}
    if unknown:
        raise ValueError(f"Preset {path}: unknown {PRESET_KEY} keys {sorted(unknown)} "
                         f"(FROM, EXCLUDE).")
    values = {}
    if meta.get("FROM"):
        source = os.path.normpath(os.path.join(os.path.dirname(path), meta["FROM"]))
        exclude = list(meta.get("EXCLUDE") or [])
        values = {k: v for k, v in own_keys(source).items()
                  if not any(k == e or k.startswith(e + ".") for e in exclude)}
    values.update(flatten(data))
    return values


def preset_opts(preset: str, presets: Optional[Mapping[str, str]] = None) -> List[str]:
    """A preset as ``KEY VALUE`` command-line options."""
    return to_opts(preset_values(preset, presets))


def check_dataset(name: str) -> str:
    """``name`` if it is a registered fast-reid dataset (after the plugin's registrations)."""
    import gltrans_plugin  # noqa: F401  (registers the plugin's datasets)
    from fastreid.data.datasets import DATASET_REGISTRY

    known = sorted(DATASET_REGISTRY._obj_map, key=str.lower)  # (no __contains__)
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Dataset {name!r} is not registered.{hint} Registered: "
                         f"{', '.join(known)}.")
    return name


def check_opts(opts: Sequence[str]) -> List[str]:
    """Trailing ``KEY VALUE`` options: pairs, and not the keys the tool sets per run."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd list: {opts}.")
    for key in opts[0::2]:
        if key in RESERVED_OPTS:
            raise ValueError(f"{key} is set per run by the tool (use --output / --seeds).")
    return opts


def shared_overrides(preset: Optional[str] = None, dataset: Optional[str] = None,
                     epochs: Optional[int] = None, device: Optional[str] = None,
                     opts: Sequence[str] = (), check_dataset_name: bool = True,
                     presets: Optional[Mapping[str, str]] = None) -> List[str]:
    """The options every row gets, in order: the preset (a name of ``presets`` or a yaml
    path), the dataset, the epochs (with the evaluation and checkpoint periods set to them, so
    a run evaluates and checkpoints at its end; a preset's own SOLVER.MAX_EPOCH counts as
    given), the device, then ``opts``."""
    out = []
    if preset:
        values = preset_values(preset, presets)
        if epochs is None and "SOLVER.MAX_EPOCH" in values:
            epochs = int(values["SOLVER.MAX_EPOCH"])
        values.pop("SOLVER.MAX_EPOCH", None)  # set with the periods below
        out += to_opts(values)
    if dataset:
        if check_dataset_name:
            check_dataset(dataset)
        out += ["DATASETS.NAMES", repr((dataset,)), "DATASETS.TESTS", repr((dataset,))]
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs {epochs}: at least 1.")
        out += ["SOLVER.MAX_EPOCH", str(epochs), "SOLVER.CHECKPOINT_PERIOD", str(epochs),
                "TEST.EVAL_PERIOD", str(epochs)]
    if device:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r}: use 'cpu' or 'cuda'.")
        out += ["MODEL.DEVICE", device]
    return out + check_opts(opts)


# ---------------------------------------------------------------------- runs
@dataclass
class Run:
    row: Row
    seed: int
    out_dir: str

    @property
    def done(self) -> bool:
        return os.path.isfile(os.path.join(self.out_dir, RESULTS_FILE))

    @property
    def title(self) -> str:
        return f"{self.row.name} seed {self.seed}"


def run_dir(output: str, row: Row, seed: int) -> str:
    return os.path.join(output, row.name, f"seed{seed}")


def plan(rows: Sequence[Row], seeds: Sequence[int], output: str) -> List[Run]:
    """Every (row, seed), seed by seed (the whole table with the first seed comes first)."""
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("No seeds given.")
    return [Run(row, s, run_dir(output, row, s)) for s in seeds for row in rows]


def train_command(run: Run, overrides: Sequence[str] = (), *, train_script: str,
                  resume: bool = False, num_gpus: int = 1,
                  python: str = sys.executable) -> List[str]:
    """``python <train_script> --config-file <row> OUTPUT_DIR <run dir> SEED <s>
    <overrides>``; ``--resume`` continues from the run folder's last checkpoint."""
    cmd = [python, train_script, "--config-file", run.row.config]
    if num_gpus != 1:
        cmd += ["--num-gpus", str(num_gpus)]
    if resume:
        cmd.append("--resume")
    return cmd + ["OUTPUT_DIR", run.out_dir, "SEED", str(run.seed)] + list(overrides)


def read_results(out_dir: str) -> Optional[Dict[str, float]]:
    """The final metrics of a finished run (``results.json``), percent; with several test
    sets, the first one's.  None when the run has not finished."""
    path = os.path.join(out_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        final = json.load(f).get("final") or {}
    if final and all(isinstance(v, dict) for v in final.values()):
        final = next(iter(final.values()))  # {test set: metrics}
    return {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
