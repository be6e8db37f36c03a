"""Pretrained weights by name: timm tags, hf-hub: and local-dir: through a real Hugging Face
cache layout made here (HF_HUB_OFFLINE=1), the offline-without-cache message, one download per
machine in a distributed run, and the other starting points' key layouts (DeiT, PASS, DINO
teacher, TransReID-SSL's ICS stem)."""
import hashlib
import os
import shutil
import threading
import time

import pytest
import torch
from fastreid.config import get_cfg
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.config import add_gltrans_config
from gltrans_plugin.errors import format_error
from gltrans_plugin.modeling import pretrained
from gltrans_plugin.modeling.backbone import GLTransViT
from gltrans_plugin.modeling.pretrained import PretrainedWeightsError, check_source, resolve
from gltrans_plugin.modeling.weights import load_pretrained

TAG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a real timm tag of the backbone's "tiny" size
REPO = "timm/" + TAG
REV = "0123456789abcdef0123456789abcdef01234567"
D, DEPTH = 192, 2


def tiny_vit_state(seed=0):
    """A tiny timm ViT (192 wide, 3 heads, 2 blocks) with random weights, as safetensors wants."""
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=224, patch_size=16, embed_dim=D, depth=DEPTH, num_heads=3,
                          num_classes=10)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {k: v.contiguous() for k, v in m.state_dict().items()}


def fill_hf_cache(cache, repo, state, rev=REV, name="model.safetensors"):
    """The Hugging Face cache layout of one file: models--<o>--<n>/snapshots/<rev>/<name> and
    refs/main -> rev.  Returns the file's path."""
    base = os.path.join(str(cache), "models--" + repo.replace("/", "--"))
    snap = os.path.join(base, "snapshots", rev)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(base, "refs"), exist_ok=True)
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(rev)
    path = os.path.join(snap, name)
    save_file(state, path)
    return path


def ours(seed=1, **kw):
    torch.manual_seed(seed)
    kw.setdefault("agg_layers", (0, 1))
    return GLTransViT(img_size=(64, 32), patch_size=16, stride_size=12, embed_dim=D, depth=12,
                      num_heads=3, drop_path_rate=0.0, **kw).eval()


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with HF_HUB_CACHE at an empty folder (the hub reads both at import, so
    its constants are set too)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture()
def filled(offline):
    state = tiny_vit_state()
    return offline, fill_hf_cache(offline, REPO, state), state


def test_tag_hf_hub_and_local_dir_load_exactly_the_file_tensors(filled, tmp_path):
    cache, path, state = filled
    folder = tmp_path / "local"
    folder.mkdir()
    shutil.copy(path, folder / "model.safetensors")
    reference = ours(seed=1)
    load_pretrained(reference, path)
    assert torch.equal(reference.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    for seed, spec in enumerate([TAG, "hf-hub:" + REPO, f"hf-hub:{REPO}@{REV}",
                                 f"local-dir:{folder}"], start=2):
        model = ours(seed=seed)  # another random init
        result = load_pretrained(model, spec)
        assert result.missing_keys == [] and result.unexpected_keys == []
        got, want = model.state_dict(), reference.state_dict()
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), f"{spec}: {k}"
    src = resolve(TAG)
    assert (src.kind, src.repo, src.revision, src.tag) == ("timm", REPO, REV, TAG)
    assert os.path.samefile(src.path, path) and src.mean == (0.5, 0.5, 0.5)
    assert resolve(f"local-dir:{folder}").path == str(folder / "model.safetensors")
    card = pretrained.source_for_card(TAG)  # what a model card records: cache only
    assert (card["repo"], card["revision"], card["file"]) == (REPO, REV, "model.safetensors")
    assert card["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_backbone_config_names_a_tag_and_a_cache_key(offline, tmp_path, caplog):
    from fastreid.modeling.backbones import build_backbone
    from huggingface_hub import constants

    elsewhere = tmp_path / "elsewhere"
    state = tiny_vit_state(seed=3)
    fill_hf_cache(elsewhere, REPO, state)
    cfg = add_gltrans_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_gltrans_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "tiny"
    cfg.MODEL.BACKBONE.STRIDE_SIZE = (12, 12)
    cfg.MODEL.BACKBONE.SIE_CAMERA = False
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.MODEL.GLTRANS.AGG_LAYERS = (0, 1)
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = TAG
    with pytest.raises(PretrainedWeightsError, match="not in the Hugging Face cache"):
        build_backbone(cfg)  # the default cache (HF_HUB_CACHE) is empty
    cfg.MODEL.BACKBONE.PRETRAIN_CACHE = str(elsewhere)
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # ImageNet's; the tag was trained with 0.5
    with caplog.at_level("WARNING", logger="gltrans_plugin.modeling.weights"):
        model = build_backbone(cfg)
    assert (f"differ from the normalisation {TAG} was trained with, [0.5, 0.5, 0.5] / "
            f"[0.5, 0.5, 0.5]: set MODEL.PIXEL_MEAN [127.5, 127.5, 127.5]") in caplog.text
    assert torch.equal(model.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])
    assert torch.equal(model.cls_norms[0].weight, state["norm.weight"])
    assert constants.HF_HUB_CACHE == str(offline)  # the key did not move the global cache
    cfg.MODEL.BACKBONE.STEM = "resnet"
    with pytest.raises(ValueError, match="MODEL.BACKBONE.STEM 'resnet' is not one of"):
        build_backbone(cfg)


def test_offline_without_cache_is_one_line_with_the_fetch_command(offline):
    paper = "vit_base_patch16_224.orig_in21k_ft_in1k"
    for call in (resolve, check_source):
        with pytest.raises(PretrainedWeightsError) as e:
            call(paper)
        msg = str(e.value)
        assert "\n" not in msg and isinstance(e.value, FileNotFoundError)
        assert msg.startswith(f"pretrained weights 'timm/{paper}' are not in the Hugging Face "
                              f"cache and cannot be downloaded here (HF_HUB_OFFLINE=1")
        assert f"MODEL.BACKBONE.PRETRAIN_PATH, Hugging Face cache {offline})" in msg
        assert f"`hf download timm/{paper} model.safetensors`" in msg
        assert f"hf_hub_download('timm/{paper}', 'model.safetensors')" in msg
        assert "local .safetensors / .pth file" in msg
        line, code = format_error(e.value)
        assert line.startswith("error: pretrained weights 'timm/") and code == 2
    with pytest.raises(PretrainedWeightsError, match="not in the Hugging Face cache"):
        resolve("hf-hub:timm/" + paper)


def test_empty_missing_and_unknown_names_say_where_to_get_weights(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        check_source("")
    assert str(e.value).startswith("MODEL.BACKBONE.PRETRAIN is True but no pretrained weights "
                                   "are named (MODEL.BACKBONE.PRETRAIN_PATH): name them: the "
                                   "paper's ImageNet ViT-B/16 is the timm tag "
                                   "vit_base_patch16_224.orig_in21k_ft_in1k")
    assert "hf download timm/vit_base_patch16_224.orig_in21k_ft_in1k" in str(e.value)
    old_name = str(tmp_path / "jx_vit_base_p16_224-80ecf9dd.pth")  # the authors' file name
    with pytest.raises(FileNotFoundError) as e:
        resolve(old_name)
    assert str(e.value).startswith(f"checkpoint {old_name!r} not found (MODEL.BACKBONE."
                                   f"PRETRAIN_PATH): this file is timm's "
                                   f"vit_base_patch16_224.orig_in21k_ft_in1k: set ")
    with pytest.raises(PretrainedWeightsError, match=r"'vit_base_patch16_224\.nope' is neither "
                       r"a file nor a timm pretrained tag; timm knows vit_base_patch16_224\."):
        resolve("vit_base_patch16_224.nope")
    with pytest.raises(PretrainedWeightsError, match="local-dir folder .* not found"):
        resolve(f"local-dir:{tmp_path / 'none'}")
    assert pretrained.parse_spec("hf_hub:timm/x") == ("hf-hub", "timm/x")  # timm's old alias


class FakeRanks:
    """Two threads as two processes of one machine: rank 0 fetches, rank 1 must wait."""

    def __init__(self, monkeypatch):
        self.local = threading.local()
        self.barrier = threading.Barrier(2, timeout=20)
        self.slots = [None, None]
        monkeypatch.setattr(pretrained, "_process_group", lambda: (2, self.local.rank == 0))
        monkeypatch.setattr(pretrained, "_gather", self.gather)

    def gather(self, obj):
        self.slots[self.local.rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def run(self, fn):
        results = [None, None]

        def target(rank):
            self.local.rank = rank
            try:
                results[rank] = fn()
            except Exception as e:  # noqa: BLE001  (returned to the test)
                results[rank] = e

        threads = [threading.Thread(target=target, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return results


def test_one_download_per_machine_others_wait_then_read_the_cache(offline, monkeypatch):
    import huggingface_hub

    real = huggingface_hub.hf_hub_download
    state = tiny_vit_state()
    calls = []

    def hub_download(repo, filename, *, local_files_only=False, **kw):
        calls.append((repo, filename, local_files_only, time.monotonic()))
        if not local_files_only:  # "the network": slow, then the file is in the cache
            time.sleep(0.3)
            return fill_hf_cache(offline, repo, state)
        return real(repo, filename, local_files_only=True, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    ranks = FakeRanks(monkeypatch)
    results = ranks.run(lambda: resolve(TAG))
    assert all(isinstance(r, pretrained.PretrainedSource) for r in results), results
    assert results[0].path == results[1].path and results[1].revision == REV
    downloads = [c for c in calls if not c[2]]
    assert len(downloads) == 1  # rank 0 only
    cache_reads = [c for c in calls if c[2]]
    assert cache_reads and cache_reads[0][3] >= downloads[0][3] + 0.3  # after the download


def test_a_failed_download_fails_every_rank_without_hanging(offline, monkeypatch):
    ranks = FakeRanks(monkeypatch)
    results = ranks.run(lambda: resolve(TAG))
    assert all(isinstance(r, PretrainedWeightsError) for r in results), results
    assert "are not in the Hugging Face cache" in str(results[0])
    assert str(results[1]).startswith("the process fetching the pretrained weights failed: "
                                      "pretrained weights 'timm/" + TAG)


# ----------------------------------------------------------------------------- other layouts
def test_deit_distilled_file_loads_without_its_distillation_token(tmp_path):
    state = tiny_vit_state()
    pos = state["pos_embed"]  # 1 x (1 + 196) x D
    sd = dict(state, pos_embed=torch.cat([pos[:, :1], torch.randn(1, 1, D), pos[:, 1:]], 1),
              dist_token=torch.randn(1, 1, D), **{"head_dist.weight": torch.randn(10, D),
                                                  "head_dist.bias": torch.randn(10)})
    a, b = ours(seed=1), ours(seed=2)
    save_file(state, str(tmp_path / "plain.safetensors"))
    torch.save({"model": sd}, tmp_path / "deit_distilled.pth")  # DeiT's own release wraps "model"
    load_pretrained(a, str(tmp_path / "plain.safetensors"))
    result = load_pretrained(b, str(tmp_path / "deit_distilled.pth"))
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def _lup_state(seed=0, stem=False):
    """A LUPerson DINO checkpoint's key layout (TransReID-SSL / PASS): the teacher under
    backbone., a DINO head, the student, a pos_embed of the 16 x 8 grid of 256 x 128 images."""
    state = tiny_vit_state(seed)
    grid = torch.randn(1, 16 * 8, D)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], grid], 1)
    if stem:
        state.update(_stem_state())
        state["patch_embed.proj.weight"] = torch.randn(D, 64, 8, 8) * 0.02
    teacher = {"backbone." + k: v for k, v in state.items() if not k.startswith("head.")}
    teacher.update({"head.mlp.0.weight": torch.randn(32, D), "head.last_layer.weight_g":
                    torch.randn(16, 1), "head.last_layer.weight_v": torch.randn(16, 32)})
    student = {"module." + k: v + 1 for k, v in teacher.items()}
    return state, {"teacher": teacher, "student": student, "epoch": 100}


def _stem_state():
    out = {"patch_embed.conv.0.weight": torch.randn(64, 3, 7, 7) * 0.1,
           "patch_embed.conv.3.weight": torch.randn(64, 64, 3, 3) * 0.05,
           "patch_embed.conv.6.weight": torch.randn(64, 64, 3, 3) * 0.05}
    for i in (1, 4):
        out[f"patch_embed.conv.{i}.IN.weight"] = torch.rand(32) + 0.5
        out[f"patch_embed.conv.{i}.IN.bias"] = torch.randn(32)
        out.update(_bn(f"patch_embed.conv.{i}.BN", 32))
    out.update(_bn("patch_embed.conv.7", 64))
    return out


def _bn(prefix, n):
    return {f"{prefix}.weight": torch.rand(n) + 0.5, f"{prefix}.bias": torch.randn(n),
            f"{prefix}.running_mean": torch.randn(n), f"{prefix}.running_var": torch.rand(n) + .5,
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def test_lup_dino_teacher_loads_with_its_16x8_grid(tmp_path):
    from timm.layers import resample_abs_pos_embed

    state, ckpt = _lup_state()
    path = str(tmp_path / "lup.pth")
    torch.save(ckpt, path)
    model = ours()
    with pytest.raises(ValueError, match=r"MODEL.BACKBONE.PRETRAIN_GRID .*\(16, 8\)"):
        load_pretrained(model, path)
    result = load_pretrained(model, path, old_grid=(16, 8))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])  # teacher
    want = resample_abs_pos_embed(state["pos_embed"], new_size=[5, 2], old_size=[16, 8],
                                  num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), want)


def test_pass_part_tokens_and_cls_position(tmp_path):
    state, _ = _lup_state()
    sd = {k: v for k, v in state.items() if k != "pos_embed"}
    sd["cls_pos"] = state["pos_embed"][:, :1]
    sd["pos_embed"] = state["pos_embed"][:, 1:]  # PASS: patches only
    for i in (1, 2, 3):
        sd[f"part_token{i}"], sd[f"part{i}_pos"] = torch.randn(1, 1, D), torch.randn(1, 1, D)
    torch.save({"teacher": {"backbone." + k: v for k, v in sd.items()}}, tmp_path / "pass.pth")
    torch.save(_lup_state()[1], tmp_path / "ssl.pth")
    a, b = ours(seed=1), ours(seed=2)
    result = load_pretrained(a, str(tmp_path / "pass.pth"), old_grid=(16, 8))
    assert result.missing_keys == [] and result.unexpected_keys == []
    load_pretrained(b, str(tmp_path / "ssl.pth"), old_grid=(16, 8))
    for k, v in b.state_dict().items():
        assert torch.equal(v, a.state_dict()[k]), k


def _manual_stem(x, sd):
    """TransReID-SSL's stem + patch conv written out with torch.nn.functional (eval mode)."""
    import torch.nn.functional as F

    def ibn(x, p):
        a, b = x[:, :32], x[:, 32:]
        a = F.instance_norm(a, weight=sd[p + ".IN.weight"], bias=sd[p + ".IN.bias"], eps=1e-5)
        b = F.batch_norm(b, sd[p + ".BN.running_mean"], sd[p + ".BN.running_var"],
                         sd[p + ".BN.weight"], sd[p + ".BN.bias"], False, 0.0, 1e-5)
        return torch.cat([a, b], 1)

    c = "patch_embed.conv."
    x = F.relu(ibn(F.conv2d(x, sd[c + "0.weight"], stride=2, padding=3), c + "1"))
    x = F.relu(ibn(F.conv2d(x, sd[c + "3.weight"], padding=1), c + "4"))
    x = F.conv2d(x, sd[c + "6.weight"], padding=1)
    x = F.relu(F.batch_norm(x, sd[c + "7.running_mean"], sd[c + "7.running_var"],
                            sd[c + "7.weight"], sd[c + "7.bias"], False, 0.0, 1e-5))
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=6)
    return x.flatten(2).transpose(1, 2)  # B x N x D


def test_ics_stem_checkpoint_loads_into_the_ibn_conv_stem(tmp_path):
    state, ckpt = _lup_state(stem=True)
    path = str(tmp_path / "vit_base_ics_cfs_lup.pth")
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="convolution stem .*MODEL.BACKBONE.STEM 'ibn_conv'"):
        load_pretrained(ours(), path, old_grid=(16, 8))
    model = ours(stem="ibn_conv")
    assert model.grid_size == ours().grid_size == (5, 2)  # the plain ViT's grid at stride 12
    result = load_pretrained(model, path, old_grid=(16, 8))
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        tokens, grid = model.patch_embed(x)
        torch.testing.assert_close(tokens, _manual_stem(x, state), atol=1e-4, rtol=1e-4)
        out = model(x)
    assert grid == (5, 2) and out.cls[-1].shape == (2, D)
    save_file(tiny_vit_state(), str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="checkpoint has none"):
        load_pretrained(ours(stem="ibn_conv"), str(tmp_path / "plain.safetensors"))


def test_config_naming_a_tag_trains_offline_from_the_filled_cache(filled, tmp_path):
    """The acceptance check: a config naming a timm tag, HF_HUB_OFFLINE=1, a filled cache."""
    from helpers import gltrans_small_cfg

    from gltrans_plugin.engine import Trainer

    _, path, state = filled
    cfg = gltrans_small_cfg(str(tmp_path / "data"), str(tmp_path / "out"), **{
        "MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": TAG,
        "MODEL.GLTRANS.AGG_LAYERS": (0, 1), "MODEL.BACKBONE.STRIDE_SIZE": (12, 12),
        "MODEL.PIXEL_MEAN": [127.5] * 3, "MODEL.PIXEL_STD": [127.5] * 3,
        "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 8, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 4,
        "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM": 2, "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.MAX_EPOCH": 1, "TEST.EVAL_PERIOD": 1})
    trainer = Trainer(cfg)
    backbone = trainer.model.backbone
    assert torch.equal(backbone.blocks[1].attn.proj.weight, state["blocks.1.attn.proj.weight"])
    assert torch.equal(backbone.cls_token, state["cls_token"])
    results = trainer.train()
    assert results and all(torch.isfinite(torch.tensor(float(v))) for v in results.values())
    from gltrans_plugin.card import read_card  # the run's model card names the tag it started from

    card = read_card(str(tmp_path / "out"))
    assert card["metrics"] == {k: float(v) for k, v in results.items()}
    assert (card["pretrained"]["tag"], card["pretrained"]["revision"]) == (TAG, REV)
    assert card["pretrained"]["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert card["checkpoint"]["file"] == "model_final.pth"


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "configs", "GLTrans")


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(CONFIGS, "pretrained"))))
def test_each_starting_point_config_names_its_weights_and_their_normalisation(name):
    from timm.models import get_pretrained_cfg

    from gltrans_plugin.config import setup_cfg

    cfg = setup_cfg(os.path.join(CONFIGS, "pretrained", name))
    bb = cfg.MODEL.BACKBONE
    assert bb.PRETRAIN and cfg.DATASETS.NAMES == ("MSMT17TrainVal",)
    kind, ident = pretrained.parse_spec(bb.PRETRAIN_PATH)
    mean = [round(x / 255, 3) for x in cfg.MODEL.PIXEL_MEAN]
    std = [round(x / 255, 3) for x in cfg.MODEL.PIXEL_STD]
    assert [round(x / 255, 3) for x in cfg.INPUT.REA.VALUE] == mean  # erased = the mean
    if kind == "timm":  # the config's normalisation is the one timm records for the weights
        tcfg = get_pretrained_cfg(ident)
        assert tcfg.hf_hub_id == "timm/" + ident and tcfg.tag == ident.split(".")[1]
        assert mean == [round(x, 3) for x in tcfg.mean] and std == [round(x, 3) for x in tcfg.std]
    else:  # LUPerson ViTs: a file from their authors, the 256x128 grid, 0.5 normalisation
        assert kind == "file" and tuple(bb.PRETRAIN_GRID) == (16, 8) and mean == [0.5] * 3
        assert (bb.STEM == "ibn_conv") == ("ics" in name)
        assert cfg.SOLVER.BASE_LR == 0.0004


def test_paper_configs_name_the_paper_weights():
    from gltrans_plugin.config import setup_cfg

    for name in ("msmt17.yml", "market1501.yml", "dukemtmc.yml", "veri.yml"):
        cfg = setup_cfg(os.path.join(CONFIGS, name))
        assert cfg.MODEL.BACKBONE.PRETRAIN_PATH == pretrained.PAPER_TAG
    assert pretrained._timm_cfg(pretrained.PAPER_TAG).url.endswith(
        "/jx_vit_base_p16_224-80ecf9dd.pth")  # the file of the authors' configs
