"""LPIPS as the consistency distance (bench.consistency.perceptual): equal to the lpips package's forward and
to the official code's piq LPIPS(replace_pooling=True), weights only from the asset folder, frozen and outside
the optimizer / EMA / checkpoint, counted in the training FLOPs, and CD learns with it. Random weights in
the real files' layouts, offline."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from bench.flops import training_flops
from bench.checkpoint import CheckpointStore, load_checkpoint
from bench.consistency.perceptual import (LIN_RELPATH, VGG16_CHANNELS, VGG16_CONVS, VGG16_RELPATH, asset_specs,
                                          build_lpips_network, lpips_inputs, random_lpips_states, stage_random_lpips)
from bench.data.synthetic import SyntheticShapes
from bench.diffusion.rng import StackedRandom
from bench.method import Batch, ConfigError, build_method
from bench.metrics.assets import AssetError, AssetFolder
from bench.train import train
from helpers import tiny_run_config

EPS32 = torch.finfo(torch.float32).eps
# largest reduction inside the network (3×3 conv over 512 channels); float32 rounding grows ~ √K per sum
CONV_K = 9 * 512


def _tol(value: torch.Tensor, layers: int = 13) -> torch.Tensor:
    """Relative float32 error bound for two evaluations of the same network that round differently:
    eps·√K per conv, accumulated over the depth."""
    return value.abs() * EPS32 * math.sqrt(CONV_K) * layers


@pytest.fixture(scope="module")
def lpips_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips-assets")
    stage_random_lpips(AssetFolder(root), seed=0)
    return root


@pytest.fixture(scope="module")
def states():
    return random_lpips_states(seed=0)


def _images(n=2, res=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, res, res, generator=g) * 2 - 1
    return a, (a + 0.3 * torch.randn(n, 3, res, res, generator=g)).clamp(-1, 1)


def _package_lpips(trunk, heads, pooling):
    """The lpips package's own network, filled through its own loaders: trunk into its VGG slices by
    torchvision numbering, heads with LPIPS.load_state_dict as the package loads its weight file."""
    import lpips

    with torch.device("meta"), warnings.catch_warnings():  # skip VGG's random init (slow); weights come next
        warnings.simplefilter("ignore", UserWarning)         # lpips passes torchvision's old `pretrained=`
        ref = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)  # use_dropout: file layout
    ref.scaling_layer = lpips.ScalingLayer()
    ref.load_state_dict(heads, strict=False, assign=True)
    features = {int(name): mod for s in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4,
                                         ref.net.slice5) for name, mod in s.named_children()}
    seq = torch.nn.Sequential(*[features[i] for i in sorted(features)])
    seq.load_state_dict({k.removeprefix("features."): v for k, v in trunk.items()}, assign=True)
    if pooling == "avg":
        for s in (ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
            for name, mod in s.named_children():
                if isinstance(mod, torch.nn.MaxPool2d):
                    s.add_module(name, torch.nn.AvgPool2d(2, 2))
    return ref.eval()


# ---- the network and the distance -----------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_distance_equals_the_lpips_package_forward(lpips_assets, states, pooling):
    m = build_method("cd", "cpu-tiny", {"metric": "lpips", "assets": str(lpips_assets), "lpips_pooling": pooling,
                                         "resolution": 64})
    a, b = _images(n=1)
    ours = m.distance(a, b)
    ref = _package_lpips(*states, pooling)
    with torch.no_grad():
        theirs = ref(F.interpolate(a, size=224, mode="bilinear"), F.interpolate(b, size=224, mode="bilinear"))
    theirs = theirs.reshape(-1)
    assert ours.shape == (1,) and (ours > 0).all()
    assert ((ours - theirs).abs() <= _tol(theirs)).all(), (ours, theirs)


def test_avg_pooling_is_the_official_piq_lpips_with_replace_pooling(lpips_assets, states):
    """piq's LPIPS(replace_pooling=True, reduction="none") is ContentLoss over torchvision's VGG16 features
    (relu1_2…relu5_3, unit-normalised, head-weighted MSE) of (x+1)/2 with ImageNet mean/std; piq.LPIPS itself
    only adds the download of both weight files, so its ContentLoss is built here on the same random files."""
    import piq                                           # test extra (pyproject), the official code's package
    import torchvision

    trunk, heads = states
    with torch.device("meta"):
        vgg = torchvision.models.vgg16(weights=None).features
    vgg.load_state_dict({k.removeprefix("features."): v for k, v in trunk.items()}, assign=True)
    official = piq.perceptual.ContentLoss(vgg, layers=["3", "8", "15", "22", "29"],
                                          weights=[heads[f"lin{k}.model.1.weight"] for k in range(5)],
                                          replace_pooling=True, distance="mse", reduction="none",
                                          normalize_features=True)
    a, b = _images(n=1, seed=1)
    up = lambda x: F.interpolate(x, size=224, mode="bilinear")  # noqa: E731 - the official call
    with torch.no_grad():
        want = official((up(a) + 1) / 2, (up(b) + 1) / 2)
    m = build_method("cd", "cpu-tiny", {"metric": "lpips", "assets": str(lpips_assets), "resolution": 64})
    got = m.distance(a, b)
    assert ((got - want).abs() <= _tol(want)).all(), (got, want)
    # the pooling really matters (so the comparison above can fail)
    other = build_method("cd", "cpu-tiny", {"metric": "lpips", "assets": str(lpips_assets), "resolution": 64,
                                            "lpips_pooling": "max"}).distance(a, b)
    assert ((other - want).abs() > 100 * _tol(want)).all()


def test_resize_rule_is_the_official_one():
    x = torch.rand(1, 3, 64, 64)
    assert lpips_inputs(x).shape[-2:] == (224, 224)
    torch.testing.assert_close(lpips_inputs(x), F.interpolate(x, size=224, mode="bilinear", align_corners=False),
                               rtol=0, atol=0)
    big = torch.rand(1, 3, 256, 256)
    assert lpips_inputs(big) is big                     # official: only images < 256 px are resized
    assert lpips_inputs(x, resize=0) is x


def test_heads_load_from_the_package_file_and_from_piqs_list(tmp_path, lpips_assets, states, no_network):
    """`bench assets fetch lpips-vgg-lin` copies the lpips package's head file (no download); piq's
    lpips_weights.pt layout (a list of five tensors) gives the same network."""
    from bench.cli import main

    folder = tmp_path / "a"
    assert main(["assets", "fetch", "lpips-vgg-lin", "--assets", str(folder)]) == 0
    entry = AssetFolder(folder).manifest()[LIN_RELPATH]
    assert entry["official"] is True
    trunk_file = lpips_assets / VGG16_RELPATH
    real_heads = torch.load(folder / LIN_RELPATH, map_location="cpu", weights_only=True)
    as_list = tmp_path / "piq.pt"
    torch.save([real_heads[f"lin{k}.model.1.weight"] for k in range(5)], as_list)
    a, b = _images(n=1, res=32, seed=2)
    n1 = build_lpips_network(trunk_file, folder / LIN_RELPATH)
    n2 = build_lpips_network(trunk_file, as_list)
    with torch.no_grad():
        assert torch.equal(n1(a, b), n2(a, b))
    for head, c in zip(n1.lins, VGG16_CHANNELS):
        assert head.model[0].weight.shape == (1, c, 1, 1) and (head.model[0].weight > 0).all()


def test_missing_or_wrong_weights_are_one_line_errors(tmp_path, lpips_assets, no_network):
    m = build_method("cd", "cpu-tiny", {"metric": "lpips", "assets": str(tmp_path / "empty")})
    teacher, distill = m.stages()
    with pytest.raises(AssetError) as err:
        teacher.enter()                                  # before the teacher is trained, not after
    msg = str(err.value)
    assert "\n" not in msg and "vgg16-397923af.pth" in msg and "bench assets fetch lpips-vgg16" in msg
    with pytest.raises(AssetError, match="missing"):
        m.loss(m.example_batch(distill), distill)
    bad = tmp_path / "bad.pt"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ConfigError, match="not a torchvision VGG16 state dict"):
        build_lpips_network(bad, lpips_assets / LIN_RELPATH)
    with pytest.raises(ConfigError, match="5 LPIPS VGG linear heads"):
        build_lpips_network(lpips_assets / VGG16_RELPATH, bad)
    with pytest.raises(ConfigError, match="lpips_pooling"):
        build_method("cd", "cpu-tiny", {"lpips_pooling": "min"})
    assert {s.key for s in asset_specs()} == {"lpips-vgg16", "lpips-vgg-lin"}


# ---- frozen, outside optimizer / EMA / checkpoint --------------------------------------------------

def test_gradient_reaches_the_student_only(lpips_assets):
    m = build_method("cd", "cpu-tiny", {"metric": "lpips", "assets": str(lpips_assets), "lpips_resize": 64})
    distill = m.stages()[1]
    distill.enter()
    m.teacher.requires_grad_(False)                      # as the trainer freezes non-trainable modules
    loss, _ = m.loss(m.example_batch(distill, 2), distill)
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters()) and all(p.grad is None for p in m.target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.student.parameters())
    net = m._lpips.net
    assert all(not p.requires_grad and p.grad is None for p in net.parameters())
    theirs = {id(p) for p in net.parameters()}
    assert not theirs & {id(p) for mod in m.modules().values() for p in mod.parameters()}
    assert set(m.modules()) == {"student", "teacher", "target"}


def test_lpips_stays_out_of_optimizer_ema_and_checkpoint(tmp_path, lpips_assets):
    over = {"metric": "lpips", "assets": str(lpips_assets), "lpips_resize": 0}
    cfg = tiny_run_config("cd", "cpu-tiny", images=16, batch=4, overrides=over)
    out = train(cfg, tmp_path / "run")
    assert out["done"]
    state = load_checkpoint(CheckpointStore(tmp_path / "run" / "ckpt").latest())
    assert set(state["method"]) == {"student", "teacher", "target"}
    for shadow in state["ema"]["shadows"]:
        assert set(shadow) == {"student"}             # the EMA averages what the distill stage trains
    student = build_method("cd", "cpu-tiny", over).student
    n_opt = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert n_opt == len(list(student.parameters()))      # distill stage optimises the student alone
    keys = [k for mod in state["method"].values() for k in mod]
    assert not any(k.startswith(("net.slice", "lin", "scaling_layer")) for k in keys)


# ---- cost ----------------------------------------------------------------------------------------

def _vgg_lpips_flops(size: int) -> float:
    """FLOPs (multiply-add = 2) of LPIPS per example in CD: VGG16's 13 convs on the student and the target
    image plus their input-gradient pass for the student (3 × forward), and the 5 linear heads on the
    feature differences forward + input-gradient (2 ×)."""
    level = lambda i: 0 if i < 4 else 1 if i < 9 else 2 if i < 16 else 3 if i < 23 else 4  # noqa: E731
    conv = sum(2 * cin * cout * 9 * (size >> level(i)) ** 2 for i, cin, cout in VGG16_CONVS)
    heads = sum(2 * c * (size >> k) ** 2 for k, c in enumerate(VGG16_CHANNELS))
    return 3.0 * conv + 2.0 * heads


def test_lpips_is_counted_in_the_training_flops(lpips_assets):
    common = {"assets": str(lpips_assets), "lpips_resize": 64}
    per = {}
    for metric in ("l2", "lpips"):
        m = build_method("cd", "cpu-tiny", {**common, "metric": metric})
        teacher, distill = m.stages()
        distill.enter()
        per[metric] = (training_flops(m, teacher), training_flops(m, distill))
    assert per["lpips"][0] == per["l2"][0]               # the teacher stage does not use the distance
    extra = per["lpips"][1] - per["l2"][1]
    assert extra == pytest.approx(_vgg_lpips_flops(64), rel=1e-9)
    assert per["lpips"][1] > 2 * per["l2"][1]            # even at 64 px LPIPS outweighs this tiny UNet
    # at the official 224 px one LPIPS pass is 12.25× the 64 px one
    assert _vgg_lpips_flops(224) / _vgg_lpips_flops(64) == pytest.approx((224 / 64) ** 2, rel=1e-3)
    # the planner (meta device, no weights read) counts the same as the trainer
    from bench.flops import stage_costs
    planned = [c.flops_per_example for c in stage_costs("cd", "cpu-tiny", {**common, "metric": "lpips"})]
    assert planned == list(per["lpips"])


# ---- learning ------------------------------------------------------------------------------------

def _held_out_loss(m, stage, data, seeds):
    with torch.no_grad():
        return float(m.loss(Batch({data.shape[-1]: data}, None, None, StackedRandom(seeds)), stage)[0])


def test_cd_with_lpips_learns_like_l2(lpips_assets):
    """CPU-scale learning check: 16 px shapes, a briefly trained EDM teacher, 30 distillation steps; the
    held-out consistency loss of each metric falls by the same kind of margin (measured: l2 to ~0.72-0.76 of
    its start, random-weight LPIPS to ~0.33-0.65, over three seeds; the bound leaves room for other CPUs)."""
    res, n, batch = 16, 64, 8
    ds = SyntheticShapes(res, n=n, num_classes=0)
    data = torch.stack([ds[i]["image"] for i in range(n)]).float() / 127.5 - 1
    held, held_seeds = data[:32], list(range(900_000, 900_032))
    ratios = {}
    for metric in ("l2", "lpips"):
        torch.manual_seed(0)
        m = build_method("cd", "cpu-tiny", {
            "resolution": res, "metric": metric, "assets": str(lpips_assets), "lpips_resize": 0,
            "dropout": 0.0, "teacher_dropout": 0.0, "sampling_ts": None,
            "unet_overrides": {"model_channels": 16, "channels_per_head": 16, "attn_resolutions": ()}})
        teacher, distill = m.stages()
        g = torch.Generator().manual_seed(1)
        opt = torch.optim.Adam(m.teacher.parameters(), lr=1e-3)
        for k in range(10):
            idx = torch.randint(0, n, (batch,), generator=g)
            loss, _ = m.loss(Batch({res: data[idx]}, None, None, StackedRandom([10_000 + k * batch + j
                                                                              for j in range(batch)])), teacher)
            opt.zero_grad()
            loss.backward()
            opt.step()
        distill.enter()
        m.teacher.requires_grad_(False)
        before = _held_out_loss(m, distill, held, held_seeds)
        opt = torch.optim.Adam(m.student.parameters(), lr=1e-3)
        for k in range(30):
            idx = torch.randint(0, n, (batch,), generator=g)
            loss, _ = m.loss(Batch({res: data[idx]}, None, None, StackedRandom([k * batch + j for j in range(batch)])),
                             distill)
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.after_step(distill, k, (k + 1) * batch)
        ratios[metric] = _held_out_loss(m, distill, held, held_seeds) / before
    assert ratios["l2"] < 0.9 and ratios["lpips"] < 0.9, ratios
