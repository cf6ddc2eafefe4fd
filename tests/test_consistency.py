"""Consistency models (cd / ct / ict): formulas and oracle values of CARDS.md §7.1, §7.2, §10.1."""
from __future__ import annotations

import math

import pytest
import torch

from bench.consistency.cm import (boundary_denoise, boundary_scalings, check_index_list, cm_time_input,
                                  consistency_distance, ct_curriculum, ict_num_scales, karras_grid,
                                  lognormal_index_probs, multistep_sample, pseudo_huber_c, sample_from_probs,
                                  spaced_indices, teacher_ode_step)
from bench.diffusion.rng import StackedRandom
from bench.method import Batch, ConfigError, build_method


def _perturbed(method, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in method.modules().values():
            for p in m.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))
    return method


# ---- parameterisation ---------------------------------------------------------------------------

def test_boundary_condition_is_exact_for_a_trained_looking_network():
    m = _perturbed(build_method("cd", "cpu-tiny"))
    x = torch.randn(3, 3, 32, 32)
    f = m.student(x, torch.full((3,), 0.002))
    assert torch.equal(f, x)
    assert not torch.allclose(m.student(x, torch.full((3,), 0.5)), x), "network ignored away from σ_min"


@pytest.mark.parametrize("sigma,expected", [
    (80.0, (3.906292723e-5, 0.4999777349, 0.01249975587)),
    (1.0, (0.2006414105, 0.4463191683, 0.894427191)),
    (0.5, (0.502004, 0.352139177, 1.414213562)),
    (0.002, (1.0, 0.0, 1.999984)),
])
def test_boundary_scalings_match_diffusers_numbers(sigma, expected):
    got = boundary_scalings(torch.tensor(sigma, dtype=torch.float64))
    for g, e in zip(got, expected):
        assert float(g) == pytest.approx(e, rel=1e-6, abs=1e-9)


def test_time_input_is_250_ln_sigma():
    assert float(cm_time_input(torch.tensor(80.0, dtype=torch.float64))) == pytest.approx(1095.5066586684702)
    assert float(cm_time_input(torch.tensor(0.002, dtype=torch.float64))) == pytest.approx(-1553.6520246055477)


def test_karras_grid_and_index_lists():
    g40 = karras_grid(40)
    assert float(g40[0]) == 80 and float(g40[39]) == pytest.approx(0.002)
    assert float(g40[1]) == pytest.approx(69.45094603719689, rel=1e-12)
    assert float(g40[38]) == pytest.approx(0.003676589168106146, rel=1e-12)
    assert float(g40[22]) == pytest.approx(1.3823679566485092, rel=1e-12)
    assert spaced_indices(40, 2) == [0, 20, 39] and float(g40[20]) == pytest.approx(2.24043976, rel=1e-8)
    assert float(karras_grid(201)[106]) == pytest.approx(1.9128436206953614, rel=1e-12)
    with pytest.raises(ConfigError, match="ending at N-1"):
        check_index_list([0, 22], 40)


# ---- curricula ----------------------------------------------------------------------------------

def test_ct_curriculum_values_from_the_card():
    assert ct_curriculum(0.0, 2, 150, 0.9) == (2, pytest.approx(0.81))
    n, mu = ct_curriculum(400_000 / 800_000, 2, 150, 0.9)
    assert n == 107 and mu == pytest.approx(0.99801, abs=1e-5)
    n, mu = ct_curriculum(1.0, 2, 150, 0.9)
    assert n == 151 and mu == pytest.approx(0.99860, abs=1e-5)
    assert ct_curriculum(0.0, 2, 200, 0.95) == (2, pytest.approx(0.9025))
    n, mu = ct_curriculum(1.0, 2, 200, 0.95)
    assert n == 201 and mu == pytest.approx(0.99949, abs=1e-5)
    # the paper's variant divides by N(k) instead of N(k) − 1
    assert ct_curriculum(0.0, 2, 200, 0.95, "paper")[1] == pytest.approx(math.exp(2 * math.log(0.95) / 2))


def test_ict_doubling_sequence_for_K_400k():
    K = 400_000
    assert [ict_num_scales(j * 50_000, K) for j in range(8)] == [11, 21, 41, 81, 161, 321, 641, 1281]
    assert ict_num_scales(49_999, K) == 11 and ict_num_scales(K, K) == 1281


def test_ict_lognormal_index_probabilities_N11():
    sig = karras_grid(11).flip(0)
    expected_sig = [0.002, 0.0167, 0.0851, 0.318, 0.965, 2.515, 5.839, 12.38, 24.41, 45.31, 80]
    assert torch.allclose(sig, torch.tensor(expected_sig, dtype=torch.float64), rtol=3e-3)
    p = lognormal_index_probs(sig, -1.1, 2.0)
    expected = [0.0626, 0.1817, 0.2455, 0.2135, 0.1424, 0.0806, 0.0411, 0.0196, 0.0089, 0.0040]
    assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), atol=1e-4)
    # inverse-CDF draws follow p
    idx = sample_from_probs(p, torch.rand(200_000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(idx, minlength=10).double() / idx.numel()
    assert torch.allclose(freq, p, atol=3e-3)


@pytest.mark.parametrize("res,c", [(32, 0.02993), (64, 0.05986), (256, 0.2394)])
def test_pseudo_huber_c_per_resolution(res, c):
    assert pseudo_huber_c(3 * res * res) == pytest.approx(c, rel=2e-4)


def test_pseudo_huber_is_over_the_whole_image():
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    c = 0.1
    expected = math.sqrt(48 * 0.25 + c * c) - c
    assert float(consistency_distance(a, b, "pseudo_huber", c)) == pytest.approx(expected)


# ---- teacher step and sampler -------------------------------------------------------------------

def test_heun_teacher_step_follows_the_exact_ode():
    """For data N(0, σ_d²) the denoiser is x·σ_d²/(σ²+σ_d²) and the PF-ODE solution x ∝ √(σ²+σ_d²)."""
    sd = 0.5
    D = lambda x, s: x * sd ** 2 / (s.reshape(-1, 1) ** 2 + sd ** 2)  # noqa: E731
    x = torch.randn(4, 8, dtype=torch.float64)
    t, t2 = torch.full((4,), 2.0, dtype=torch.float64), torch.full((4,), 1.9, dtype=torch.float64)
    exact = x * math.sqrt(1.9 ** 2 + sd ** 2) / math.sqrt(2.0 ** 2 + sd ** 2)
    heun = teacher_ode_step(D, x, t, t2, "heun")
    euler = teacher_ode_step(D, x, t, t2, "euler")
    err_h, err_e = (heun - exact).abs().max(), (euler - exact).abs().max()
    assert err_h < 1e-5 * x.abs().max() and err_h < err_e / 10


def test_end_to_end_scheduler_oracle_with_our_sampler():
    """diffusers' CMStochasticIterativeScheduler test: N = 201, dummy model out = x·t/(t+1), one step."""
    sample = (torch.arange(768, dtype=torch.float64) / 768).reshape(3, 8, 8, 4).permute(3, 0, 1, 2)
    net = lambda x_in, t: x_in * t.reshape(-1, 1, 1, 1) / (t.reshape(-1, 1, 1, 1) + 1)  # noqa: E731
    f = lambda x, s: boundary_denoise(net, x, s)  # noqa: E731
    sigmas = karras_grid(201)[[0, 200]]
    x, nfe = multistep_sample(f, sample, sigmas, None)
    assert nfe == 1
    assert float(x.abs().sum()) == pytest.approx(192.7614, abs=1e-2)
    assert float(x.abs().mean()) == pytest.approx(0.2510, abs=1e-3)


def test_multistep_renoises_to_the_next_level():
    f_calls = []

    def f(x, s):
        f_calls.append((x.clone(), float(s[0])))
        return torch.zeros_like(x)
    noise = torch.randn(2, 3, 4, 4)
    sig = karras_grid(40)[[0, 22, 39]]
    x, nfe = multistep_sample(f, noise, sig, StackedRandom([5, 6]))
    assert nfe == 2 and [s for _, s in f_calls] == pytest.approx([80.0, float(sig[1])])
    renoise = StackedRandom([5, 6]).randn((2, 3, 4, 4))
    expected = math.sqrt(float(sig[1]) ** 2 - 0.002 ** 2) * renoise
    torch.testing.assert_close(f_calls[1][0], expected)
    assert torch.equal(x, torch.zeros_like(x))


# ---- adapters -----------------------------------------------------------------------------------

def _batch(n=2, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch({res: torch.rand(n, 3, res, res, generator=g) * 2 - 1}, None, None, StackedRandom(list(range(n))))


def test_cd_student_starts_from_teacher_and_target_follows_mu():
    m = build_method("cd", "cpu-tiny")
    teacher_stage, distill = m.stages()
    assert (teacher_stage.name, distill.name) == ("teacher", "distill") and distill.trainable == ("student",)
    _perturbed(m)
    distill.enter()
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(m.student.state_dict()[k], v) and torch.equal(m.target.state_dict()[k], v)
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in m.target.state_dict().items()}
    m.after_step(distill, 1, 4)
    s = m.student.state_dict()
    for k, v in m.target.state_dict().items():
        torch.testing.assert_close(v, 0.95 * before[k] + 0.05 * s[k])
    loss, logs = m.loss(_batch(), distill)
    assert torch.isfinite(loss) and logs["num_scales"] == 18


def test_ct_curriculum_drives_loss_grid_and_target_rate():
    m = build_method("ct", "cpu-tiny")
    stage = m.stages()[0]
    m.stage_progress(stage, 0.0)
    assert m.loss(_batch(), stage)[1]["num_scales"] == 2 and m.target_rate() == pytest.approx(0.81)
    m.stage_progress(stage, 1.0)
    n, mu = ct_curriculum(1.0, 2, 32, 0.9)
    assert m.loss(_batch(), stage)[1]["num_scales"] == n == 33 and m.target_rate() == pytest.approx(mu)
    assert build_method("ct", "imagenet64", {"unet": "cpu-tiny", "unet_overrides": {},
                                             "resolution": 32}).stages()[0].name == "teacher"


def test_student_and_target_passes_replay_the_same_dropout(monkeypatch):
    """With t == t2 the CT target equals the student output exactly only if the dropout masks match."""
    m = build_method("ct", "cpu-tiny", {"dropout": 0.5})
    _perturbed(m)
    m.target.load_state_dict(m.student.state_dict())
    for mod in m.modules().values():
        mod.train()
    monkeypatch.setattr(m, "_grid", lambda n, device: torch.full((n,), 1.0))
    loss, _ = m.loss(_batch(), m.stages()[0])
    assert float(loss) == 0.0
    # and the masks are really random: two student passes without the replay differ
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(m.student(x, torch.ones(2)), m.student(x, torch.ones(2)))


def test_ict_has_no_target_and_follows_doubling():
    m = build_method("ict", "cpu-tiny")
    assert set(m.modules()) == {"student"}
    stage = m.stages()[0]
    seen = []
    for frac in (0.0, 0.3, 0.99):
        m.stage_progress(stage, frac)
        loss, logs = m.loss(_batch(), stage)
        assert torch.isfinite(loss)
        seen.append(logs["num_scales"])
    K = m.config.total_steps
    assert seen == [ict_num_scales(math.floor(f * K), K, 4, 64) for f in (0.0, 0.3, 0.99)] == [5, 9, 65]


def test_sampling_index_lists_and_nfe():
    m = _perturbed(build_method("cd", "cpu-tiny"))
    for mod in m.modules().values():
        mod.eval()
    assert m.default_steps() == 2 and m.sampling_indices() == [0, 8, 17]
    assert m.sampling_indices(3) == [0, 6, 12, 17]
    x1, nfe1 = m.sample(StackedRandom([1, 2]), None, steps=1)
    z = StackedRandom([1, 2]).randn((2, 3, 32, 32))
    direct = m.student(z * 80.0, torch.full((2,), 80.0)).clamp(-1, 1)
    assert nfe1 == 1 and torch.allclose(x1, direct, atol=1e-6)
    with pytest.raises(ConfigError, match="sampling_ts"):
        build_method("cd", "cpu-tiny", {"sampling_ts": "0,x"})
    with pytest.raises(ConfigError, match="ending at N-1"):
        build_method("cd", "cpu-tiny", {"sampling_ts": "0,5"}).sample(StackedRandom([0]), None)
