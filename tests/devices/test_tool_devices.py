"""Every model-facing tool takes --device (auto: CUDA when present) and builds its model there."""
import importlib
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
MODEL_TOOLS = ["visualize_ranking", "visualize_attention", "model_report", "export_onnx",
               "extract_features", "search"]


@pytest.mark.parametrize("name", MODEL_TOOLS)
def test_tool_has_device_option(name):
    if not os.path.exists(os.path.join(REPO, "tools", f"{name}.py")):
        pytest.fail(f"tools/{name}.py is missing")
    src = open(os.path.join(REPO, "tools", f"{name}.py")).read()
    # through engine.model_arg_parser (which adds --device) or its own --device option
    assert "model_arg_parser" in src or '"--device"' in src
    assert "load_model" in src or "FeatureExtractor" in src


def test_resolve_device():
    from gltrans_plugin.devices import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:1: no CUDA GPU is visible"):
            resolve_device("cuda:1")


def test_model_arg_parser_device_default_auto():
    from gltrans_plugin.cli import model_arg_parser

    args = model_arg_parser("doc").parse_args(["--config-file", "x.yml"])
    assert args.device == "auto"
    mod = importlib.import_module("visualize_ranking")
    assert mod.parse_args(["--config-file", "x.yml", "--device", "cpu"]).device == "cpu"
