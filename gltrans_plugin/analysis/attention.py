"""Where the model looks: GMA scores, patch-token maps of the aggregated layers (paper Fig. 2) and
a Grad-CAM style map of the final feature (paper Fig. 5), overlaid on the images.

Shape letters: B images, 3 x H x W pixels, D embed dim, Hg x Wg patch grid, N = Hg*Wg,
K aggregated layers, h GMA heads, F test-feature dim.

Everything is read from outside the model with hooks (no model code changes):
  * patch-token map of aggregated layer l: ||X^l_p||_2 per patch p (output of block l, class
    token dropped)                                                      K x B x Hg x Wg
  * GMA scores: ``GMA.scores(f_g, F)`` recomputed in a forward hook on ``heads.lmf.gma``
    (sigmoid scores, one per head and patch); shown as the mean over heads  B x h x Hg x Wg
  * Grad-CAM of the final feature: A = patch tokens entering the last block (B x N x D);
    s = sum_b <f_b, f_b / ||f_b||> = sum_b ||f_b|| (f the test feature); weights
    w = mean_p ds/dA (B x D); cam_p = ReLU(<A_p, w>)                      B x Hg x Wg
    (the input of the last block, because a ViT baseline's class token at layer L does not
    depend on layer L's own patch tokens).
Works for any model whose backbone is the GLTrans ViT (``GLTrans`` meta-architecture, the ViT
baseline preset, fast-reid's ``Baseline`` with ``build_gltrans_vit_backbone``).
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.backbone import GLTransViT
from ..modeling.gma import GMA

logger = logging.getLogger(__name__)

__all__ = ["analyse", "draw_attention", "load_images"]


def _backbone(model: nn.Module) -> GLTransViT:
    bb = getattr(model, "backbone", None)
    if not isinstance(bb, GLTransViT):
        raise ValueError(f"{type(model).__name__} has no GLTrans ViT backbone; attention maps "
                         f"need MODEL.BACKBONE.NAME build_gltrans_backbone or "
                         f"build_gltrans_vit_backbone.")
    return bb


def _norm01(x: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] per image (over the last two dims)."""
    lo = x.flatten(-2).min(-1).values[..., None, None]
    hi = x.flatten(-2).max(-1).values[..., None, None]
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def analyse(model: nn.Module, images: torch.Tensor, camids: Optional[torch.Tensor] = None) -> Dict:
    """images: B x 3 x H x W (0..255, unnormalised) -> maps on the patch grid (module doc).

    Returns {"grid": (Hg, Wg), "layers": [1-based layer numbers], "token_maps": K x B x Hg x Wg,
    "gma": B x h x Hg x Wg or None, "gradcam": B x Hg x Wg, "feature": B x F}, maps in [0, 1]
    per image (GMA scores are sigmoids, left as they are).
    """
    model.eval()
    bb = _backbone(model)
    device = next(model.parameters()).device
    spec = bb.output_spec()
    grid = spec.grid_of(images.shape[-2:])
    hg, wg = grid
    store: Dict[str, object] = {"blocks": {}}
    handles = []

    def block_out(i):
        def hook(_m, _inp, out):
            store["blocks"][i] = out.detach()[:, 1:]  # B x N x D
        return hook

    def last_in(_m, inp):
        x = inp[0]
        x.retain_grad()
        store["last_in"] = x  # B x (1+N) x D

    def gma_hook(m, inp, _out):
        with torch.no_grad():
            store["gma"] = m.scores(*inp)  # B x h x N

    for i in bb.agg_layers:
        handles.append(bb.blocks[i].register_forward_hook(block_out(i)))
    handles.append(bb.blocks[-1].register_forward_pre_hook(last_in))
    gma = next((m for m in model.modules() if isinstance(m, GMA)), None)
    if gma is not None:
        handles.append(gma.register_forward_hook(gma_hook))
    try:
        x = images.to(device).float().requires_grad_(True)
        batch = {"images": x.clone()}  # fast-reid's Baseline normalises in place
        if camids is not None:
            batch["camids"] = camids.to(device)
        with torch.enable_grad():
            feat = model(batch)  # B x F
            if not torch.is_tensor(feat) or feat.dim() != 2:
                raise ValueError("the model's test forward did not return a B x F feature.")
            score = (feat * F.normalize(feat.detach(), dim=1)).sum()
            score.backward()
    finally:
        for h in handles:
            h.remove()
    b = images.shape[0]
    acts = store["last_in"].detach()[:, 1:]              # B x N x D
    grads = store["last_in"].grad[:, 1:]                 # B x N x D
    weights = grads.mean(1, keepdim=True)                # B x 1 x D
    cam = F.relu((acts * weights).sum(-1)).reshape(b, hg, wg)  # B x Hg x Wg
    tokens = torch.stack([store["blocks"][i].norm(dim=-1).reshape(b, hg, wg)
                          for i in bb.agg_layers])       # K x B x Hg x Wg
    out = {"grid": grid, "layers": list(spec.layer_numbers),
           "token_maps": _norm01(tokens).cpu(), "gradcam": _norm01(cam).cpu(),
           "feature": feat.detach().cpu(), "gma": None}
    if "gma" in store:
        out["gma"] = store["gma"].reshape(b, -1, hg, wg).cpu()  # B x h x Hg x Wg
    return out


def load_images(cfg, paths: Sequence[str]) -> torch.Tensor:
    """Image files -> B x 3 x H x W (0..255) with the config's test transforms."""
    from fastreid.data.transforms import build_transforms
    from PIL import Image

    from ..data.images import to_rgb

    tf = build_transforms(cfg, is_train=False)
    return torch.stack([tf(to_rgb(Image.open(p))) for p in paths])


def _overlay(ax, img: np.ndarray, heat: Optional[torch.Tensor], title: str):
    ax.imshow(img)
    if heat is not None:
        h, w = img.shape[:2]
        up = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear",
                           align_corners=False)[0, 0].numpy()
        ax.imshow(up, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def draw_attention(images: torch.Tensor, results: Sequence[Dict], names: Sequence[str],
                   out_path: str, captions: Optional[Sequence[str]] = None) -> str:
    """One row per image; per model: image | token map per aggregated layer | GMA (mean over
    heads, when the model has GMA) | Grad-CAM.  Models side by side.  Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols: List[tuple] = []  # (model index, kind, arg, header)
    for m, (res, name) in enumerate(zip(results, names)):
        cols.append((m, "image", None, name))
        for k, layer in enumerate(res["layers"]):
            cols.append((m, "tokens", k, f"tokens L{layer}"))
        if res["gma"] is not None:
            cols.append((m, "gma", None, f"GMA ({res['gma'].shape[1]} heads)"))
        cols.append((m, "gradcam", None, "Grad-CAM"))
    b = images.shape[0]
    h, w = images.shape[-2:]
    cell_w = 1.25
    fig, axes = plt.subplots(b, len(cols), squeeze=False,
                             figsize=(cell_w * len(cols), cell_w * h / w * b + 0.6))
    for r in range(b):
        img = images[r].permute(1, 2, 0).clamp(0, 255).byte().numpy()  # H x W x 3
        for c, (m, kind, arg, header) in enumerate(cols):
            res = results[m]
            heat = {"image": None, "tokens": lambda: res["token_maps"][arg][r],
                    "gma": lambda: _norm01(res["gma"][r].mean(0)),
                    "gradcam": lambda: res["gradcam"][r]}
            val = heat[kind]() if heat[kind] is not None else None
            title = header if r == 0 else ""
            if kind == "image" and captions:
                title = (title + "\n" if title else "") + captions[r]
            _overlay(axes[r, c], img, val, title)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.6)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    logger.info("Attention maps saved to %s", out_path)
    return out_path
