"""The command line shared by the model-facing tools: one argument parser (--config-file,
--weights, --device) whose help is the tool's docstring."""
import argparse

__all__ = ["add_model_args", "model_arg_parser"]

DEVICE_HELP = "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N"


def model_arg_parser(doc, config_help="the model's yaml (a run's OUTPUT_DIR/config.yaml or a "
                                      "leaf config)",
                     weights_help="trained checkpoint (else MODEL.WEIGHTS)"):
    """The argument parser every model-facing tool starts from: its docstring as help text,
    --config-file, --weights and --device (``devices.resolve_device`` reads it)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], epilog=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_model_args(p, config_help, weights_help)


def add_model_args(p, config_help="the model's yaml (a run's OUTPUT_DIR/config.yaml or a leaf "
                                  "config)",
                   weights_help="trained checkpoint (else MODEL.WEIGHTS)"):
    """--config-file, --weights and --device on parser ``p`` (a sub-command's parent too)."""
    p.add_argument("--config-file", required=True, help=config_help)
    p.add_argument("--weights", default="", help=weights_help)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p
