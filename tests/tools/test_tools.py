"""The user tools on the synthetic set: ranked lists, attention maps, training curves,
model report, checkpoint converters, and GLTrans with fast-reid's Baseline /
EmbeddingHead / Distiller / evaluator / Visualizer.

One tiny GLTrans is trained for one epoch (3 iterations) on a small synthetic set in a
session-scoped fixture; the tools run on its checkpoint and run folder.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import gltrans_plugin  # noqa: F401
import gltrans_plugin.distill  # noqa: F401  (GLTransDistiller, registered on import)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs/GLTrans/synthetic_demo.yml")
COMBINE = os.path.join(REPO, "configs/GLTrans/combine")
TOOLS = ["visualize_ranking", "visualize_attention", "plot_training", "model_report", "search",
         "export_onnx", "convert_checkpoint", "extract_features", "reproduce",
         "make_synthetic_dataset", "decide_recipe"]
ITERS = 3  # 8 ids x 3 cameras x 2 images / batch 16: iterations of the one-epoch runs
sys.path.insert(0, os.path.join(REPO, "tools"))


def synth_opts(root, output_dir="", epochs=1):
    return ["DATASETS.ROOT", root, "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "8",
            "DATASETS.SYNTHETIC.NUM_TEST_IDS", "8", "DATASETS.SYNTHETIC.NUM_CAMERAS", "3",
            "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM", "2", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_EPOCH", str(epochs),
            "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.CHECKPOINT_PERIOD", str(epochs), "TEST.EVAL_PERIOD", str(epochs),
            "SOLVER.LOG_PERIOD", "1", "TEST.IMS_PER_BATCH", "64", "OUTPUT_DIR", output_dir]


def train(config, opts):
    """fast-reid's DefaultTrainer (the plugin's subclass) on a config; returns (trainer, results,
    parameters before training)."""
    from gltrans_plugin.config import setup_cfg
    from gltrans_plugin.engine import Trainer

    cfg = setup_cfg(config, opts)
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    results = trainer.train()
    return trainer, results, before


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def gltrans_run(synth_root, tmp_path_factory):
    """A tiny GLTrans trained one epoch (48 images / 16 = 3 iterations): run folder with
    metrics.json and log.txt, checkpoint, eval results, config options."""
    import logging

    out = str(tmp_path_factory.mktemp("gltrans_run"))
    log = logging.getLogger("fastreid")  # fast-reid's log.txt, as default_setup writes it
    handler, level = logging.FileHandler(os.path.join(out, "log.txt")), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        trainer, results, _ = train(DEMO, synth_opts(synth_root, out))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()
    return {"dir": out, "weights": os.path.join(out, "model_final.pth"), "results": results,
            "opts": synth_opts(synth_root)[:-2]}


@pytest.fixture(scope="session")
def baseline_ckpt(synth_root, tmp_path_factory):
    """An (untrained) ViT baseline saved with fast-reid's Checkpointer."""
    from fastreid.modeling import build_model
    from fastreid.utils.checkpoint import Checkpointer

    from gltrans_plugin.loading import cfg_for_checkpoint, tool_cfg

    out = str(tmp_path_factory.mktemp("baseline"))
    opts = synth_opts(synth_root)[:-2] + ["MODEL.HEADS.NUM_CLASSES", "8",
                                          "MODEL.BACKBONE.NUM_CAMERAS", "3"]
    cfg = cfg_for_checkpoint(tool_cfg(os.path.join(COMBINE, "vit_baseline_synthetic.yml"), opts))
    Checkpointer(build_model(cfg), out).save("model_final")
    return os.path.join(out, "model_final.pth")


# ------------------------------------------------------------------ every tool
_HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for tool in sys.argv[1:]:
    buf = io.StringIO()
    sys.argv = [tool + ".py", "--help"]
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(f"tools/{tool}.py", run_name="__main__")
        code = None
    except SystemExit as e:
        code = e.code
    out[tool] = [code, buf.getvalue()]
print(json.dumps(out))
"""


# options a tool's --help must name (beyond the shared ones)
_HELP_NAMES = {"reproduce": ["--table", "--preset", "--collect-only"],
               "decide_recipe": ["--val-ids", "--collect-only"]}


def test_every_tool_has_help():
    # every tool's --help as a program (run as __main__), in one interpreter
    r = subprocess.run([sys.executable, "-c", _HELP_ALL, *TOOLS], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    helps = json.loads(r.stdout.strip().splitlines()[-1])
    for tool in TOOLS:
        code, text = helps[tool]
        assert code in (0, None), (tool, code)
        assert "usage:" in text and "--" in text, tool
        for option in _HELP_NAMES.get(tool, ()):
            assert option in text, (tool, option)


# ------------------------------------------------------------------ 1 ranked lists
@pytest.mark.slow
def test_visualize_ranking_frames_and_order(gltrans_run, tmp_path):
    from PIL import Image

    import visualize_ranking
    from gltrans_plugin.analysis.ranking_vis import FRAME_COLOURS

    out = str(tmp_path / "rank.png")
    res = visualize_ranking.main(["--config-file", DEMO, "--weights", gltrans_run["weights"],
                                  "--num-queries", "3", "--topk", "4", "--output", out,
                                  "--fastreid-visualizer", str(tmp_path / "fv")]
                                 + gltrans_run["opts"])
    img = np.asarray(Image.open(out).convert("RGB"))
    assert len(res["queries"]) == 3
    # frame colour of every gallery cell follows its match flag (cell layout of draw_rank_grid)
    h, w, gap, top = 128, 64, 6, 18
    for j, q in enumerate(res["queries"]):
        y = top + gap + j * (h + 24 + gap)
        for c, m in enumerate(q["match"]):
            x = gap + (c + 1) * (w + gap) + 2 * gap
            assert tuple(img[y + 1, x + w // 2]) == FRAME_COLOURS[bool(m)]
        assert tuple(img[y + 1, gap + w // 2]) == FRAME_COLOURS["query"]
    # fast-reid's own Visualizer ran on the same GLTrans features
    assert "roc.jpg" in os.listdir(tmp_path / "fv") and "0.jpg" in os.listdir(tmp_path / "fv")


def test_rank_lists_match_brute_force():
    from gltrans_plugin.analysis.ranking_vis import rank_lists, select_queries

    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(5, 8, generator=g), torch.randn(20, 8, generator=g)
    q_pids, g_pids = np.arange(5), np.arange(20) % 5
    q_cams, g_cams = np.zeros(5, int), np.arange(20) % 2
    ranks = rank_lists(q, gal, q_pids, g_pids, q_cams, g_cams, topk=6)
    qn = q / q.norm(dim=1, keepdim=True)
    gn = gal / gal.norm(dim=1, keepdim=True)
    dist = (1 - qn @ gn.T).numpy()
    for i, r in enumerate(ranks):
        allowed = [j for j in np.argsort(dist[i], kind="stable")
                   if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        assert r["gallery"] == allowed[:6]
        assert r["match"] == [bool(g_pids[j] == q_pids[i]) for j in allowed[:6]]
        np.testing.assert_allclose(r["dist"], dist[i, allowed[:6]], atol=1e-5)
    worst = select_queries(ranks, 2, "worst")
    assert ranks[worst[0]]["ap"] == min(r["ap"] for r in ranks)


# ------------------------------------------------------------------ 2 attention maps
@pytest.mark.slow
def test_visualize_attention_side_by_side(gltrans_run, baseline_ckpt, tmp_path):
    import visualize_attention

    out, npz = str(tmp_path / "att.png"), str(tmp_path / "att.npz")
    res = visualize_attention.main(
        ["--config-file", DEMO, "--weights", gltrans_run["weights"],
         "--baseline-config", os.path.join(COMBINE, "vit_baseline_synthetic.yml"),
         "--baseline-weights", baseline_ckpt, "--num-images", "2", "--output", out,
         "--save-npz", npz] + gltrans_run["opts"])
    assert os.path.getsize(out) > 0
    assert res["models"]["GLTrans"] == {"layers": [10, 11, 12], "grid": [8, 4], "gma_heads": 12}
    assert res["models"]["ViT baseline"]["layers"] == [12]
    assert res["models"]["ViT baseline"]["gma_heads"] is None
    arrays = np.load(npz)
    assert arrays["GLTrans_gma"].shape == (2, 12, 8, 4)
    assert arrays["GLTrans_token_maps"].shape == (3, 2, 8, 4)
    assert arrays["ViT_baseline_gradcam"].shape == (2, 8, 4)
    # sigmoids (in fp32 some saturate to exactly 0 / 1 with the released code's kaiming init)
    assert ((arrays["GLTrans_gma"] >= 0) & (arrays["GLTrans_gma"] <= 1)).all()
    assert 0 < arrays["GLTrans_gma"].mean() < 1


@pytest.mark.slow
def test_attention_maps_equal_independent_computation():
    """GMA scores from the hook == GMA.scores on the head's own inputs; Grad-CAM is zero on
    patches that cannot influence the feature."""
    from gltrans_plugin.config import setup_cfg
    from gltrans_plugin.analysis.attention import analyse
    from fastreid.modeling import build_model

    cfg = setup_cfg(DEMO, ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.BACKBONE.NUM_CAMERAS", "2",
                           "MODEL.GLTRANS.AGG_LAYERS", "(-2, -1)"])
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 128, 64) * 255
    cams = torch.tensor([0, 1])
    res = analyse(model, images, cams)
    with torch.no_grad():
        x = (images - model.pixel_mean) / model.pixel_std
        feats = model.backbone(x, camids=cams)
        f_g = model.heads.gae(feats.cls)
        tokens = model.heads.lmf.ptf(feats.patches, feats.grid)
        ref = model.heads.lmf.gma.scores(f_g, tokens).reshape(2, 12, 8, 4)
        norms = feats.patches[0].norm(dim=-1).reshape(2, 8, 4)
    torch.testing.assert_close(res["gma"], ref)
    lo, hi = norms.flatten(1).min(1).values, norms.flatten(1).max(1).values
    torch.testing.assert_close(res["token_maps"][0], (norms - lo[:, None, None])
                               / (hi - lo)[:, None, None])
    assert res["gradcam"].shape == (2, 8, 4) and res["gradcam"].max() == 1.0


# ------------------------------------------------------------------ 3 training curves
@pytest.mark.slow
def test_plot_training_reads_losses_lr_and_eval(gltrans_run, tmp_path):
    import plot_training

    out = str(tmp_path / "curves.png")
    res = plot_training.main([gltrans_run["dir"], "--output", out])
    assert os.path.getsize(out) > 0
    for b in ("global", "local", "cls10", "cls11", "cls12"):
        assert f"loss_ce_{b}" in res["losses"] and f"loss_triplet_{b}" in res["losses"]
    assert res["iterations"] == ITERS
    final = gltrans_run["results"]  # one test set: fast-reid returns its metrics directly
    assert res["eval"]["mAP"][-1] == pytest.approx(final["mAP"], abs=0.006)
    assert res["eval"]["Rank-1"][-1] == pytest.approx(final["Rank-1"], abs=0.006)


def test_metrics_reader_names_a_file_without_rows(tmp_path):
    from gltrans_plugin.analysis.curves import read_metrics

    p = tmp_path / "metrics.json"
    p.write_text('not json\n')  # (a torn line among valid rows: tests/analysis)
    with pytest.raises(ValueError, match="metrics.json:1"):
        read_metrics(str(p))


# ------------------------------------------------------------------ 4 model report
def test_sdpa_handle_counts_attention_products():
    """fvcore with the handle == Q K^T + A V multiply-adds; without it fvcore misses them."""
    from fvcore.nn import FlopCountAnalysis
    from timm.models.vision_transformer import Attention

    from gltrans_plugin.analysis.flops import sdpa_flop_jit, torch_flops

    attn = Attention(64, num_heads=4).eval()
    x = torch.randn(2, 10, 64)
    plain = FlopCountAnalysis(attn, (x,))
    plain.unsupported_ops_warnings(False)
    handled = FlopCountAnalysis(attn, (x,)).set_op_handle(
        "aten::scaled_dot_product_attention", sdpa_flop_jit)
    linear = 2 * 10 * (64 * 192 + 64 * 64)  # qkv + proj
    products = 2 * 4 * 10 * 10 * (16 + 16)
    assert plain.total() == linear
    assert handled.total() == linear + products

    class Wrap(torch.nn.Module):  # torch_flops calls model({"images": x})
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, batch):
            return self.attn(batch["images"])

    assert torch_flops(Wrap(), x) == 2 * (linear + products)


@pytest.mark.slow
def test_model_report_table_and_cross_check(tmp_path):
    import model_report

    out = str(tmp_path / "report.md")
    rep = model_report.main(["--config-file", DEMO, "--output", out, "--max-depth", "3",
                             "MODEL.BACKBONE.NUM_CAMERAS", "3"])
    assert rep["cross_check_ok"] and rep["torch_flops"] == 2 * rep["flops_matmul"]
    rows = {name: (p, f) for name, p, f in rep["rows"]}
    parts = [n for n in rows if n.count(".") == 0 and n != "model"]
    assert sum(rows[n][0] for n in parts) == rep["params"]
    assert sum(rows[n][1] for n in parts) == rep["flops"]
    assert rows["heads.lmf.gma"][1] > 0 and rows["backbone.blocks"][1] > rows["heads"][1]
    assert "backbone.blocks" in open(out).read()


# ------------------------------------------------------------------ 6 converters
def _tiny_model(config, *opts):
    from fastreid.modeling import build_model

    from gltrans_plugin.config import setup_cfg

    cfg = setup_cfg(config, ["MODEL.HEADS.NUM_CLASSES", "5", "MODEL.BACKBONE.NUM_CAMERAS", "3",
                             *opts])
    return build_model(cfg).eval()


def _vit_keys(prefix, d, n_tokens, cams, depth=12):
    """TransReID vit_pytorch key names and shapes (base ViT incl. its ImageNet head `fc`)."""
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, n_tokens, d), "sie_embed": (cams, 1, d),
              "patch_embed.proj.weight": (d, 3, 16, 16), "patch_embed.proj.bias": (d,),
              "norm.weight": (d,), "norm.bias": (d,), "fc.weight": (1000, d), "fc.bias": (1000,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                       b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                       b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                       b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
    return {prefix + k: s for k, s in shapes.items()}


def _bn_keys(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}


def _random_sd(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.tensor(7) if s == () else torch.randn(*s, generator=g))
          for k, s in shapes.items()}
    return {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in sd.items()}


def test_convert_transreid_vit(tmp_path):
    from gltrans_plugin.modeling.convert import convert_transreid, save_converted

    model = _tiny_model(os.path.join(COMBINE, "vit_baseline_synthetic.yml"))
    d, c = 192, 5
    shapes = _vit_keys("base.", d, 1 + 8 * 4, 3)
    shapes.update(_bn_keys("bottleneck", d))
    shapes["classifier.weight"] = (c, d)
    shapes.update({"b1.0.norm1.weight": (d,), "classifier_1.weight": (c, d)})  # JPM extras
    sd = _random_sd(shapes)
    rep = convert_transreid({"model": sd}, model)
    assert rep["unused_source"] == ["b1.0.norm1.weight", "base.fc.bias", "base.fc.weight",
                                    "classifier_1.weight"]
    assert rep["unfilled_model"] == []
    out = rep["state_dict"]
    torch.testing.assert_close(out["backbone.blocks.11.mlp.fc2.weight"],
                               sd["base.blocks.11.mlp.fc2.weight"])
    torch.testing.assert_close(out["backbone.sie_embed"], sd["base.sie_embed"][:, 0])
    torch.testing.assert_close(out["backbone.cls_norms.0.bias"], sd["base.norm.bias"])
    torch.testing.assert_close(out["heads.necks.cls12.bn.running_var"],
                               sd["bottleneck.running_var"])
    torch.testing.assert_close(out["heads.necks.cls12.classifier.weight"],
                               sd["classifier.weight"])
    path = save_converted(rep, model, str(tmp_path / "conv.pth"))
    from gltrans_plugin.checkpoint import load_file, load_state_dict, unwrap_state_dict

    load_state_dict(model, unwrap_state_dict(load_file(path)))  # strict
    bad = dict(sd, **{"base.blocks.0.mlp.fc1.weight": torch.zeros(10, d)})
    with pytest.raises(ValueError, match="blocks.0.mlp.fc1.weight"):
        convert_transreid(bad, model)


def _released_shapes(d, c, cams, grid_n, parts=3, ptl_depth=2):
    """Key names and shapes of the authors' released GLTrans code (model/GLTrans.py,
    base_model.py, refine_model.py) at embed dim d."""
    shapes = _vit_keys("base.base.", d, 1 + grid_n, cams)
    for k in range(3):
        shapes[f"base.norm.{k}.weight"] = (d,)
        shapes[f"base.norm.{k}.bias"] = (d,)
        shapes[f"base.PAM.{k}.conv1.weight"] = (d // 4, d, 1, 1)
        shapes.update(_bn_keys(f"base.PAM.{k}.bn1", d // 4))
        shapes[f"base.PAM.{k}.conv2.weight"] = (d, d // 4, 1, 1)
        shapes.update(_bn_keys(f"base.PAM.{k}.bn2", d))
    mm = "minimodule."
    shapes.update({mm + "global_interaction.0.weight": (d, 3 * d),
                   mm + "global_interaction.0.bias": (d,),
                   mm + "downchannel.0.weight": (d, 3 * d, 1, 1), mm + "downchannel.0.bias": (d,),
                   mm + "downchannel.3.weight": (d, d, 3, 3), mm + "downchannel.3.bias": (d,),
                   mm + "G2L.GLinear.weight": (d, d), mm + "G2L.GLinear.bias": (d,),
                   mm + "G2L.LLinear.weight": (d, d), mm + "G2L.LLinear.bias": (d,),
                   mm + "u_cls": (1, 1, d), mm + "m_cls": (1, 1, d), mm + "l_cls": (1, 1, d),
                   mm + "local_interaction_norm.weight": (d,),
                   mm + "local_interaction_norm.bias": (d,)})
    shapes.update(_bn_keys(mm + "downchannel.2", d))
    blk = {k.split("blocks.0.")[1]: s for k, s in _vit_keys("", d, 1, 1, depth=1).items()
           if "blocks.0." in k}
    for t in range(ptl_depth):
        for p in range(parts):
            shapes.update({f"{mm}local_interaction{t}.{p}.{k}": s for k, s in blk.items()})
    shapes.update({"norm.weight": (d,), "norm.bias": (d,), "classifier1.weight": (c, d),
                   "bn_local.weight": (3 * d,), "classifier_local.weight": (c, 3 * d)})
    shapes.update(_bn_keys("local_bn", d))
    shapes.update(_bn_keys("bn1", d))
    shapes.update({k: s for k, s in _bn_keys("bn_local", 3 * d).items()})
    for i in range(3):
        shapes.update(_bn_keys(f"bn_token.{i}", d))
        shapes[f"classifier_clsToken.{i}.weight"] = (c, d)
    return shapes


RELEASED_OPTS = ("MODEL.GLTRANS.GAE.ACTIVATION", "none", "MODEL.GLTRANS.PTF.MASK", "conv_bn",
                 "MODEL.GLTRANS.PTF.FUSION_ORDER", "released", "MODEL.GLTRANS.PTL.SHARED",
                 "False", "MODEL.GLTRANS.CLS_TRIPLET_ON_LAST", "True")


@pytest.mark.slow
def test_convert_released_gltrans_maps_every_key(tmp_path):
    from gltrans_plugin.modeling.convert import convert_released_gltrans, save_converted
    from gltrans_plugin.checkpoint import load_file, load_state_dict, unwrap_state_dict

    model = _tiny_model(DEMO, *RELEASED_OPTS)
    sd = _random_sd(_released_shapes(192, 5, 3, 32))
    rep = convert_released_gltrans({"module." + k: v for k, v in sd.items()}, model)
    assert rep["unfilled_model"] == []
    assert rep["unused_source"] == sorted(
        ["base.base.fc.bias", "base.base.fc.weight", "base.base.norm.bias",
         "base.base.norm.weight", "norm.bias", "norm.weight", "local_bn.weight",
         "local_bn.bias", "local_bn.running_mean", "local_bn.running_var",
         "local_bn.num_batches_tracked"])
    out = rep["state_dict"]
    pairs = {"backbone.cls_norms.2.weight": "base.norm.2.weight",
             "heads.lmf.ptf.masks.1.mask.4.running_mean": "base.PAM.1.bn2.running_mean",
             "heads.lmf.ptf.masks.0.mask.3.weight": "base.PAM.0.conv2.weight",
             "heads.gae.encoder.0.weight": "minimodule.global_interaction.0.weight",
             "heads.lmf.ptf.fusion.3.weight": "minimodule.downchannel.3.weight",
             "heads.lmf.ptf.fusion.2.running_var": "minimodule.downchannel.2.running_var",
             "heads.lmf.gma.k.bias": "minimodule.G2L.LLinear.bias",
             "heads.lmf.ptl.stacks.2.1.attn.qkv.weight":
                 "minimodule.local_interaction1.2.attn.qkv.weight",
             "heads.lmf.ptl.stacks.1.2.weight": "minimodule.local_interaction_norm.weight",
             "heads.necks.local.classifier.weight": "classifier_local.weight",
             "heads.necks.cls11.bn.bias": "bn_token.1.bias"}
    for ours, theirs in pairs.items():
        torch.testing.assert_close(out[ours], sd[theirs])
    torch.testing.assert_close(out["heads.lmf.ptl.part_tokens"][1], sd["minimodule.m_cls"][0, 0])
    load_state_dict(model, unwrap_state_dict(load_file(
        save_converted(rep, model, str(tmp_path / "r.pth")))))
    feat = model({"images": torch.rand(2, 3, 128, 64) * 255, "camids": torch.tensor([0, 2])})
    assert feat.shape == (2, 5 * 192) and torch.isfinite(feat).all()


@pytest.mark.slow
def test_convert_released_gltrans_reports_and_fails():
    from gltrans_plugin.modeling.convert import convert_released_gltrans

    model = _tiny_model(DEMO, *RELEASED_OPTS)
    sd = _random_sd(_released_shapes(192, 5, 3, 32))
    missing = {k: v for k, v in sd.items() if not k.startswith("minimodule.G2L.GLinear")}
    rep = convert_released_gltrans(missing, model)
    assert rep["unfilled_model"] == ["heads.lmf.gma.q.weight", "heads.lmf.gma.q.bias"]
    bad = dict(sd, **{"classifier1.weight": torch.zeros(9, 192)})
    with pytest.raises(ValueError, match="classifier1.weight"):
        convert_released_gltrans(bad, model)
    with pytest.raises(ValueError, match="SHARED False"):
        convert_released_gltrans(sd, _tiny_model(DEMO, *RELEASED_OPTS[:-4]))
    with pytest.raises(ValueError, match="conv_bn"):
        convert_released_gltrans(sd, _tiny_model(DEMO))


@pytest.mark.slow
def test_convert_checkpoint_cli(tmp_path):
    import convert_checkpoint

    sd = _random_sd(_released_shapes(192, 5, 3, 32))
    src = str(tmp_path / "released.pth")
    torch.save(sd, src)
    res = convert_checkpoint.main(["--format", "released-gltrans", "--input", src,
                                   "--config-file", DEMO, "--output", str(tmp_path / "o.pth"),
                                   *RELEASED_OPTS])
    assert res["unfilled_model"] == [] and "norm.weight" in res["unused_source"]
    from gltrans_plugin.checkpoint import load_file, unwrap_state_dict

    out = unwrap_state_dict(load_file(str(tmp_path / "o.pth")))
    torch.testing.assert_close(out["heads.lmf.gma.q.weight"], sd["minimodule.G2L.GLinear.weight"])


# ------------------------------------------------------------------ 7 with the rest of fast-reid
@pytest.mark.slow
def test_vit_backbone_under_fastreid_baseline_embedding_head(synth_root, tmp_path):
    from fastreid.modeling.heads import EmbeddingHead
    from fastreid.modeling.meta_arch import Baseline

    trainer, results, before = train(os.path.join(COMBINE, "vit_embedding_head_synthetic.yml"),
                                     synth_opts(synth_root, str(tmp_path)) +
                                     ["TEST.EVALUATOR", "fastreid"])
    model = trainer.model
    assert type(model) is Baseline and isinstance(model.heads, EmbeddingHead)
    after = model.state_dict()
    assert not torch.equal(before["backbone.blocks.0.attn.qkv.weight"],
                           after["backbone.blocks.0.attn.qkv.weight"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert all(math.isfinite(r["total_loss"]) for r in rows if "total_loss" in r)
    assert {"loss_cls", "loss_triplet"} <= set(rows[0])
    assert 0 <= results["mAP"] <= 100  # fast-reid's ReidEvaluator


@pytest.mark.slow
def test_distiller_gltrans_teacher_resnet18_student(gltrans_run, synth_root, tmp_path):
    from gltrans_plugin.distill import GLTransDistiller

    teacher_w = gltrans_run["weights"]
    trainer, _, before = train(os.path.join(COMBINE, "distill_gltrans_to_r18_synthetic.yml"),
                               synth_opts(synth_root, str(tmp_path)) +
                               ["KD.MODEL_CONFIG", f"('{DEMO}',)",
                                "KD.MODEL_WEIGHTS", f"('{teacher_w}',)"])
    model = trainer.model
    assert isinstance(model, GLTransDistiller)
    teacher = model.model_ts[0]
    assert type(teacher).__name__ == "GLTrans" and not teacher.training
    from gltrans_plugin.checkpoint import load_file, unwrap_state_dict

    ref = unwrap_state_dict(load_file(teacher_w))
    for k, v in teacher.state_dict().items():  # loaded fully and never trained
        torch.testing.assert_close(v, ref[k])
    after = model.state_dict()
    assert not any(k.startswith("model_ts") for k in after)  # teacher not saved with student
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    kd = [r["loss_jsdiv"] for r in rows if "loss_jsdiv" in r]
    assert len(kd) == ITERS and all(math.isfinite(v) and v > 0 for v in kd)


@pytest.mark.slow
def test_fastreid_evaluation_on_gltrans_checkpoint(gltrans_run):
    """fast-reid's own Checkpointer, DefaultTrainer.test and ReidEvaluator on a GLTrans model."""
    from fastreid.engine import DefaultTrainer
    from fastreid.evaluation import ReidEvaluator
    from fastreid.utils.checkpoint import Checkpointer

    from gltrans_plugin.loading import cfg_for_checkpoint, read_weights, tool_cfg

    cfg = cfg_for_checkpoint(tool_cfg(DEMO, gltrans_run["opts"] + ["TEST.EVALUATOR", "fastreid"],
                                      gltrans_run["weights"]),
                             read_weights(gltrans_run["weights"]))
    model = DefaultTrainer.build_model(cfg)
    Checkpointer(model).load(gltrans_run["weights"])
    from gltrans_plugin.engine import Trainer

    _, evaluator = Trainer.build_evaluator(cfg, "SyntheticReID")
    assert type(evaluator) is ReidEvaluator
    res = Trainer.test(cfg, model)  # fast-reid's DefaultTrainer.test, our data builders
    # fast-reid's evaluator agrees with the run's own evaluation (the plugin's "fast" one)
    assert res["mAP"] == pytest.approx(gltrans_run["results"]["mAP"], abs=1e-3)


def test_baseline_teacher_logits_match_fastreid_head_with_frozen_bn(tiny_market, tmp_path):
    """A fast-reid Baseline teacher (ResNet-18 + EmbeddingHead) gives the logits fast-reid's head
    computes in training mode, but with its BNs in eval mode (running statistics)."""
    from helpers import resnet_cfg
    from fastreid.modeling.meta_arch import build_model

    from gltrans_plugin.distill import teacher_logits

    cfg = resnet_cfg(tiny_market, str(tmp_path))
    cfg.MODEL.HEADS.NUM_CLASSES = 5
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    batch = {"images": torch.rand(3, 3, 64, 32) * 255, "targets": torch.tensor([0, 1, 2])}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = teacher_logits(model, batch)
    model.heads.train()  # fast-reid's training-mode head, BN kept on running statistics
    model.heads.bottleneck.eval()
    with torch.no_grad():
        x = model.preprocess_image({"images": batch["images"].clone()})
        ref = model.heads(model.backbone(x), batch["targets"])["pred_class_logits"]
    torch.testing.assert_close(got, ref)
    assert got.shape == (3, 5)
    for k, v in model.state_dict().items():  # running statistics untouched
        torch.testing.assert_close(v, before[k])
