"""Init of the GLTrans Linear layers (GAE, PTF masks, GMA, PTL): ``MODEL.GLTRANS.LINEAR_INIT``."""
from torch import nn

__all__ = ["LINEAR_INITS", "check_linear_init", "init_linears"]

LINEAR_INITS = ("kaiming_fan_out", "trunc_normal")


def check_linear_init(scheme: str) -> str:
    if scheme not in LINEAR_INITS:
        raise ValueError(f"MODEL.GLTRANS.LINEAR_INIT={scheme!r} is not one of {LINEAR_INITS}.")
    return scheme


def init_linears(module: nn.Module, scheme: str = "kaiming_fan_out") -> None:
    """Initialise every ``nn.Linear`` inside ``module``; biases zero either way.

    "kaiming_fan_out" (released code): kaiming-normal, fan-out, gain sqrt(2) (a = 0), i.e.
    std sqrt(2 / out_features), not truncated.  "trunc_normal": ViT style, trunc-normal std 0.02.
    """
    check_linear_init(scheme)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if scheme == "kaiming_fan_out":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
            else:
                nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
