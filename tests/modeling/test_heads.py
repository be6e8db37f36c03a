"""GAE, PTF, GMA, PTL, GLTransHead and the multi-branch loss, built without a config, on CPU."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gltrans_plugin  # noqa: F401  (compat first)
from gltrans_plugin.modeling.gae import GAE
from gltrans_plugin.modeling.gma import GMA
from gltrans_plugin.modeling.heads import LMF, GLTransHead, expand_branches
from gltrans_plugin.modeling.losses import MultiBranchLoss, resolve_branch_weights
from gltrans_plugin.modeling.ptf import PTF
from gltrans_plugin.modeling.ptl import PTL, stripe_sizes

D, K, B = 32, 3, 4


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def cls_list(b=B, d=D, k=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g) for _ in range(k)]


# ----------------------------------------------------------------------------- GAE
@pytest.mark.parametrize(
    "agg,params,out_dim",
    [
        ("fc", K * D * D + D, D),
        ("two_fc", K * D * D + D + D * D + D, D),
        ("add", 0, D),
        ("concat", 0, K * D),
    ],
)
def test_gae_variants_params_and_shape(agg, params, out_dim):
    gae = GAE(embed_dim=D, num_layers=K, aggregation=agg)
    assert n_params(gae) == params and gae.out_dim == out_dim
    cls = cls_list()
    out = gae(cls)
    assert out.shape == (B, out_dim)
    if agg == "add":
        assert torch.allclose(out, cls[0] + cls[1] + cls[2])
    if agg == "concat":
        assert torch.equal(out, torch.cat(cls, 1))


def test_gae_fc_is_gelu_of_linear_and_none_drops_it():
    cls = cls_list()
    g1 = GAE(embed_dim=D, num_layers=K, activation="gelu")
    g0 = GAE(embed_dim=D, num_layers=K, activation="none")
    g0.load_state_dict(g1.state_dict())
    lin = g1.encoder[0]
    ref = F.linear(torch.cat(cls, 1), lin.weight, lin.bias)
    assert torch.allclose(g0(cls), ref, atol=1e-6)
    assert torch.allclose(g1(cls), F.gelu(ref), atol=1e-6)


def test_gae_bad_values():
    with pytest.raises(ValueError, match="AGGREGATION"):
        GAE(embed_dim=D, num_layers=K, aggregation="mean")
    with pytest.raises(ValueError, match="ACTIVATION"):
        GAE(embed_dim=D, num_layers=K, activation="relu")


# ----------------------------------------------------------------------------- PTF
def _bn_eval(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _randomise_bn(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)


def test_ptf_matches_equations_4_to_7():
    hg, wg, r = 5, 3, 4
    torch.manual_seed(0)
    ptf = PTF(embed_dim=D, num_layers=K, reduction=r).eval()
    _randomise_bn(ptf)
    patches = [torch.randn(B, hg * wg, D) for _ in range(K)]
    out = ptf(patches, (hg, wg))
    assert out.shape == (B, hg * wg, D)
    maps = []
    for i, x in enumerate(patches):  # eq. 4-6, written out
        lin1, lin2 = ptf.masks[i].mask[0], ptf.masks[i].mask[2]
        mask = torch.sigmoid(F.gelu(x @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias)
        x_hat = mask * x + x
        maps.append(x_hat.permute(0, 2, 1).reshape(B, D, hg, wg))
    c1, c3, bn = ptf.fusion[0], ptf.fusion[1], ptf.fusion[2]
    y = F.conv2d(torch.cat(maps, 1), c1.weight, c1.bias)
    y = F.gelu(_bn_eval(F.conv2d(y, c3.weight, None, padding=1), bn))  # eq. 7
    assert torch.allclose(out, y.flatten(2).transpose(1, 2), atol=1e-5)


def test_ptf_released_order_and_conv_bn_mask():
    hg, wg, r = 4, 2, 4
    torch.manual_seed(0)
    lin = PTF(embed_dim=D, num_layers=K, reduction=r)
    conv = PTF(embed_dim=D, num_layers=K, reduction=r, mask="conv_bn")
    per_mask_linear = D * (D // r) + D // r + (D // r) * D + D
    per_mask_conv = 2 * D * (D // r) + 2 * (D // r) + 2 * D  # bias-free convs + two BN affine
    fusion = sum(p.numel() for p in lin.fusion.parameters())
    assert n_params(lin) == K * per_mask_linear + fusion
    assert n_params(conv) == K * per_mask_conv + fusion
    rel = PTF(embed_dim=D, num_layers=K, reduction=r, fusion_order="released").eval()
    _randomise_bn(rel)
    patches = [torch.randn(B, hg * wg, D) for _ in range(K)]
    # released fusion: Conv1x1 -> GELU -> BN -> Conv3x3
    maps = [
        (m(x, (hg, wg))).transpose(1, 2).reshape(B, D, hg, wg) for m, x in zip(rel.masks, patches)
    ]
    c1, bn, c3 = rel.fusion[0], rel.fusion[2], rel.fusion[3]
    y = F.conv2d(
        _bn_eval(F.gelu(F.conv2d(torch.cat(maps, 1), c1.weight, c1.bias)), bn),
        c3.weight,
        c3.bias,
        padding=1,
    )
    assert torch.allclose(rel(patches, (hg, wg)), y.flatten(2).transpose(1, 2), atol=1e-5)
    with pytest.raises(ValueError, match="REDUCTION"):
        PTF(embed_dim=D, num_layers=K, reduction=5)


# ----------------------------------------------------------------------------- GMA
def test_gma_matches_equations_8_to_10():
    torch.manual_seed(0)
    h, n = 4, 6
    gma = GMA(embed_dim=D, global_dim=D, num_heads=h)
    f_g, tok = torch.randn(B, D), torch.randn(B, n, D)
    out = gma(f_g, tok)
    q = f_g @ gma.q.weight.T + gma.q.bias
    k = tok @ gma.k.weight.T + gma.k.bias
    dh = D // h
    ref = tok.clone()
    for b in range(B):
        for i in range(h):
            for p in range(n):
                s = torch.sigmoid(
                    torch.dot(q[b, i * dh : (i + 1) * dh], k[b, p, i * dh : (i + 1) * dh])
                )
                ref[b, p, i * dh : (i + 1) * dh] = (
                    tok[b, p, i * dh : (i + 1) * dh] * s + tok[b, p, i * dh : (i + 1) * dh]
                )
    assert torch.allclose(out, ref, atol=1e-5)
    score = gma.scores(f_g, tok)
    assert score.shape == (B, h, n) and (score > 0).all() and (score < 1).all()
    assert not torch.allclose(score.sum(-1), torch.ones(B, h))  # no softmax over patches


def test_gma_heads_reduction_and_errors():
    assert n_params(GMA(embed_dim=D, global_dim=D, num_heads=4)) == 2 * (D * D + D)
    assert n_params(GMA(embed_dim=D, global_dim=D, num_heads=4, reduction=2)) == 2 * (
        D * D // 2 + D // 2
    )
    assert n_params(GMA(embed_dim=D, global_dim=3 * D, num_heads=4)) == 3 * D * D + D + D * D + D
    tok, f_g = torch.randn(B, 6, D), torch.randn(B, D)
    torch.manual_seed(0)
    a = GMA(embed_dim=D, global_dim=D, num_heads=1)
    torch.manual_seed(0)
    b = GMA(embed_dim=D, global_dim=D, num_heads=4)
    assert not torch.allclose(a(f_g, tok), b(f_g, tok))  # same weights, different head split
    with pytest.raises(ValueError, match="NUM_HEADS=12 must divide the embed dim 32"):
        GMA(embed_dim=D, global_dim=D, num_heads=12)


# ----------------------------------------------------------------------------- PTL
def test_stripe_sizes():
    assert stripe_sizes(21, 3) == [7, 7, 7]
    assert stripe_sizes(21, 6) == [4, 4, 4, 3, 3, 3]
    assert stripe_sizes(21, 2) == [11, 10]
    assert stripe_sizes(4, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"NUM_PARTS=5 is larger than the patch grid's 4 rows"):
        stripe_sizes(4, 5)


def test_ptl_shared_vs_unshared_params_and_depth():
    kw = dict(embed_dim=D, num_parts=3, num_cls=K, num_heads=2)
    shared = PTL(**kw, depth=2, shared=True)
    unshared = PTL(**kw, depth=2, shared=False)
    one = PTL(**kw, depth=1, shared=True)
    stack = n_params(shared.stacks[0])
    assert n_params(shared) == stack + 3 * D
    assert n_params(unshared) == 3 * stack + 3 * D
    assert n_params(one) < n_params(shared)
    assert n_params(PTL(**kw, depth=0)) == 0
    assert n_params(PTL(**{**kw, "num_parts": 6}, depth=2)) == stack + 6 * D


def test_ptl_forward_matches_per_part_computation():
    hg, wg = 6, 2
    torch.manual_seed(0)
    ptl = PTL(
        embed_dim=D, num_parts=3, depth=2, num_cls=K, num_heads=2, part_token_init="trunc_normal"
    ).eval()
    tok, cls = torch.randn(B, hg * wg, D), cls_list()
    out = ptl(tok, (hg, wg), cls)  # equal stripes: batched path
    assert out.shape == (B, 3 * D)
    grid = tok.reshape(B, hg, wg, D)
    ref = []
    for k in range(3):
        stripe = grid[:, 2 * k : 2 * k + 2].reshape(B, -1, D)
        seq = torch.cat([ptl.part_tokens[k].expand(B, 1, D), torch.stack(cls, 1), stripe], 1)
        assert seq.shape[1] == 1 + K + 2 * wg
        ref.append(ptl.stacks[0](seq)[:, 0])
    assert torch.allclose(out, torch.cat(ref, 1), atol=1e-5)
    # unequal stripes (5 rows, 3 parts) go through the loop; class tokens change the output
    tok5 = torch.randn(B, 5 * wg, D)
    assert ptl(tok5, (5, wg), cls).shape == (B, 3 * D)
    nocls = PTL(embed_dim=D, num_parts=3, depth=2, num_cls=K, num_heads=2, with_cls=False).eval()
    nocls.load_state_dict(ptl.state_dict())
    assert not torch.allclose(nocls(tok, (hg, wg)), out)


def test_ptl_depth0_is_stripe_average_and_grid_errors():
    ptl = PTL(embed_dim=D, num_parts=2, depth=0)
    tok = torch.randn(B, 5 * 2, D)
    g = tok.reshape(B, 5, 2, D)
    ref = torch.cat([g[:, :3].mean((1, 2)), g[:, 3:].mean((1, 2))], 1)
    assert torch.allclose(ptl(tok, (5, 2)), ref, atol=1e-6)
    with pytest.raises(ValueError, match="NUM_PARTS=2 is larger than the patch grid's 1 rows"):
        ptl(torch.randn(B, 2, D), (1, 2))
    with pytest.raises(ValueError, match="do not fill"):
        ptl(torch.randn(B, 7, D), (5, 2))


def test_part_token_init():
    z = PTL(embed_dim=D, num_parts=3, depth=1, num_heads=2)
    t = PTL(embed_dim=D, num_parts=3, depth=1, num_heads=2, part_token_init="trunc_normal")
    assert torch.count_nonzero(z.part_tokens) == 0 and torch.count_nonzero(t.part_tokens) > 0


# ----------------------------------------------------------------------------- head
def make_head(
    num_classes=5,
    branches=("global", "local", "cls"),
    test_branches=("global", "local", "cls_last"),
    gae=True,
    gma=True,
    ptf=True,
    local=True,
    depth=1,
    parts=3,
    neck_feat="before",
    layer_numbers=(10, 11, 12),
):
    k = len(layer_numbers)
    g = GAE(embed_dim=D, num_layers=k) if gae else None
    lmf = None
    if local:
        lmf = LMF(
            ptl=PTL(embed_dim=D, num_parts=parts, depth=depth, num_cls=k, num_heads=2),
            ptf=PTF(embed_dim=D, num_layers=k) if ptf else None,
            gma=GMA(embed_dim=D, global_dim=g.out_dim, num_heads=4) if gma else None,
        )
    return GLTransHead(
        embed_dim=D,
        layer_numbers=layer_numbers,
        num_classes=num_classes,
        branches=branches,
        test_branches=test_branches,
        gae=g,
        lmf=lmf,
        neck_feat=neck_feat,
    )


def backbone_out(b=B, k=K, grid=(6, 2)):
    from gltrans_plugin.modeling.backbone import BackboneOutput

    return BackboneOutput(cls_list(b=b, k=k),
                          [torch.randn(b, grid[0] * grid[1], D) for _ in range(k)], grid)


def test_expand_branches():
    assert [n for n, _ in expand_branches(("global", "local", "cls"), [10, 11, 12])] == [
        "global",
        "local",
        "cls10",
        "cls11",
        "cls12",
    ]
    assert expand_branches(("cls_last",), [10, 11, 12]) == [("cls12", "cls_last")]
    with pytest.raises(ValueError, match="not aggregated"):
        expand_branches(("cls9",), [10, 11, 12])
    with pytest.raises(ValueError, match="Unknown branch"):
        expand_branches(("part",), [12])
    with pytest.raises(ValueError, match="twice"):
        expand_branches(("cls", "cls_last"), [11, 12])


def test_head_branches_necks_and_outputs():
    head = make_head()
    assert head.branch_names == ["global", "local", "cls10", "cls11", "cls12"]
    assert head.feat_dim == (3 + 2) * D
    for n, neck in head.necks.items():
        # default: bias zero at init and trainable (released code; fast-reid's frozen bias is
        # MODEL.GLTRANS.NECK_BIAS_FREEZE True)
        assert neck.bn.bias.requires_grad and torch.count_nonzero(neck.bn.bias) == 0
        assert neck.classifier.bias is None
        assert neck.classifier.weight.std().item() == pytest.approx(0.001, rel=0.5)
    assert head.necks["local"].bn.num_features == 3 * D
    out = head(backbone_out(), torch.arange(B))
    assert set(out["logits"]) == set(head.branch_names)
    assert all(v.shape == (B, 5) for v in out["logits"].values())
    assert out["features"]["local"].shape == (B, 3 * D)
    head.eval()
    x = backbone_out()
    f = head(x)
    assert f.shape == (B, 5 * D)
    assert torch.equal(f[:, -D:], x.cls[-1])  # pre-BN last class token
    after = make_head(neck_feat="after").eval()
    after.load_state_dict(head.state_dict())
    fa = after(x)
    assert torch.allclose(fa[:, -D:], after.necks["cls12"].bn(x.cls[-1]))
    # GAE concat: the global branch is K*D wide
    cat = GLTransHead(
        embed_dim=D,
        layer_numbers=(10, 11, 12),
        num_classes=5,
        branches=("global", "cls"),
        test_branches=("global", "cls_last"),
        gae=GAE(embed_dim=D, num_layers=3, aggregation="concat"),
    )
    assert cat.necks["global"].bn.num_features == 3 * D and cat.feat_dim == 4 * D


def test_head_config_errors():
    with pytest.raises(ValueError, match="GAE.ENABLED"):
        make_head(gae=False, gma=False, branches=("global", "local", "cls"))
    with pytest.raises(ValueError, match="LOCAL.ENABLED"):
        make_head(local=False, test_branches=("global", "cls_last"))
    with pytest.raises(ValueError, match="not a trained branch"):
        make_head(branches=("global", "local", "cls_last"), test_branches=("global", "cls11"))
    with pytest.raises(ValueError, match="f_l feeds no loss"):
        make_head(branches=("global", "cls"), test_branches=("global",))
    with pytest.raises(ValueError, match="f_g feeds no loss"):
        make_head(gma=False, branches=("local", "cls"), test_branches=("local",))
    with pytest.raises(ValueError, match="feed no loss"):  # cls10/11 would be unused
        make_head(
            gae=False, gma=False, local=False, branches=("cls_last",), test_branches=("cls_last",)
        )


# ----------------------------------------------------------------------------- losses
def _batch_hard_soft_margin(f, y):
    d = torch.cdist(f, f)
    same = y[:, None] == y[None, :]
    ap = (d * same).max(1).values
    an = torch.where(same, torch.full_like(d, float("inf")), d).min(1).values
    return F.softplus(an.neg() + ap).mean()  # log(1 + exp(-(an - ap)))


def _outputs(names=("global", "local", "cls10", "cls11", "cls12"), c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {n: torch.randn(8, D, generator=g) for n in names}
    logits = {n: torch.randn(8, c, generator=g) for n in names}
    return {"features": feats, "logits": logits}, torch.arange(4).repeat_interleave(2)


def test_multi_branch_loss_matches_independent_formula():
    names = ["global", "local", "cls10", "cls11", "cls12"]
    out, y = _outputs()
    losses = MultiBranchLoss(branches=names)(out, y)
    assert set(losses) == {f"loss_{t}_{n}" for t in ("ce", "triplet") for n in names}
    ce = sum(F.cross_entropy(out["logits"][n], y) for n in names) / 5
    tri = sum(_batch_hard_soft_margin(out["features"][n], y) for n in names) / 5
    assert sum(losses.values()).item() == pytest.approx((ce + tri).item(), rel=1e-4)
    # weights and label smoothing
    w = resolve_branch_weights((2.0, 1.0, 0.5), names, ["global", "local", "cls", "cls", "cls"])
    assert w == {"global": 2.0, "local": 1.0, "cls10": 0.5, "cls11": 0.5, "cls12": 0.5}
    lw = MultiBranchLoss(branches=names, branch_weights=w, tri_weight=0.0)(out, y)
    assert set(lw) == {f"loss_ce_{n}" for n in names}
    assert lw["loss_ce_global"].item() == pytest.approx(
        2 * F.cross_entropy(out["logits"]["global"], y).item() / 5, rel=1e-4
    )
    eps = MultiBranchLoss(branches=names, ce_eps=0.1)(out, y)
    assert eps["loss_ce_global"].item() != pytest.approx(losses["loss_ce_global"].item())
    margin = MultiBranchLoss(branches=names, tri_margin=0.3)(out, y)
    assert margin["loss_triplet_global"].item() != pytest.approx(
        losses["loss_triplet_global"].item()
    )
    with pytest.raises(ValueError, match="BRANCH_WEIGHTS"):
        resolve_branch_weights((1.0, 2.0), names, ["global", "local", "cls", "cls", "cls"])


def test_cls_triplet_on_last_reproduces_released_code():
    names = ["global", "local", "cls10", "cls11", "cls12"]
    out, y = _outputs()
    paper = MultiBranchLoss(branches=names)(out, y)
    released = MultiBranchLoss(branches=names, cls_triplet_on_last=True, last_cls="cls12")(out, y)
    assert released["loss_triplet_cls10"].item() == pytest.approx(
        paper["loss_triplet_cls12"].item()
    )
    assert released["loss_triplet_cls10"].item() != pytest.approx(
        paper["loss_triplet_cls10"].item()
    )
    assert released["loss_triplet_global"].item() == pytest.approx(
        paper["loss_triplet_global"].item()
    )
    assert released["loss_ce_cls10"].item() == pytest.approx(paper["loss_ce_cls10"].item())
