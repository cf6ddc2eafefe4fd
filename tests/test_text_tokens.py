"""Token-level text conditioning (bench.nets.text_cond) in the three text-to-image adapters: cross-attention
honours the padding mask, dropped captions take the null path, shapes and gradients."""
from __future__ import annotations

import pytest
import torch

from bench.diffusion.rng import StackedRandom
from bench.method import Condition, build_method
from bench.nets.text_cond import CrossAttention, NullText, TextContext, TextTokens, masked_mean, token_mask

D, L = 16, 6
TOKENS = dict(conditioning="text", text_conditioning="tokens", text_dim=D, text_length=L, label_dropout=0.5)
CASES = {"simple": ("cpu-tiny", {}), "mdm": ("cpu-tiny", dict(num_classes=0)), "greedy": ("cpu-tiny", {})}


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every weight off its (often zero) initialisation so each path affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _method(name: str, **kw):
    preset, extra = CASES[name]
    torch.manual_seed(0)
    m = build_method(name, preset, {**TOKENS, **extra, **kw})
    for mod in m.modules().values():
        _perturb(mod)
        mod.eval()
    return m


@torch.no_grad()
def _forward(m, text: torch.Tensor, n: int = 2) -> torch.Tensor:
    """One network evaluation at the method's top working resolution (fixed inputs)."""
    g = torch.Generator().manual_seed(3)
    if m.name == "mdm":
        zs = [torch.randn(n, 3, r, r, generator=g) for r in m.resolutions]
        return torch.cat([o.flatten(1) for o in m.net(zs, torch.full((n,), 500.0), None, text)], 1)
    res = m.config.resolution if m.name == "simple" else m.working_resolution()
    z = torch.randn(n, 3, res, res, generator=g)
    lam = torch.full((n,), 0.5)
    return (m.model(z, lam, None, text) if m.name == "simple" else m.predict_v(z, lam, None, text)).flatten(1)


def _tokens(n: int = 2, lengths=(4, 2), width: int = L, seed: int = 1) -> torch.Tensor:
    t = torch.randn(n, width, D, generator=torch.Generator().manual_seed(seed))
    for i, k in enumerate(lengths):
        t[i, k:] = 0
    return t


@pytest.mark.parametrize("name", sorted(CASES))
def test_padding_does_not_change_outputs(name):
    m = _method(name)
    text = _tokens()
    out = _forward(m, text)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    # The same captions without the padding (truncated to the longest) and with extra padding.
    short = _forward(m, text[:, :4])
    longer = _forward(m, torch.cat([text, torch.zeros(2, 5, D)], 1))
    tol = 1e-5 * float(out.abs().max()) + 1e-6     # fp32 re-association over a handful of keys
    torch.testing.assert_close(short, out, atol=tol, rtol=0)
    torch.testing.assert_close(longer, out, atol=tol, rtol=0)
    # ...while a change to a valid token does change them (the cross-attention path is live).
    text2 = text.clone()
    text2[0, 1] += 1.0
    assert (_forward(m, text2)[0] - out[0]).abs().max() > 100 * tol


@pytest.mark.parametrize("name", sorted(CASES))
def test_null_text_path(name):
    m = _method(name)
    null_out = _forward(m, torch.zeros(2, L, D))
    assert torch.isfinite(null_out).all()
    # A dropped caption equals a one-token caption holding the learned null token.
    core = {"simple": lambda: m.model.net.text_tokens, "mdm": lambda: m.net.base.text_tokens,
            "greedy": lambda: m.core.text_tokens}[name]()
    explicit = torch.zeros(2, 3, D)
    explicit[:, 0] = core.null.token.detach()
    tol = 1e-5 * float(null_out.abs().max()) + 1e-6
    torch.testing.assert_close(_forward(m, explicit), null_out, atol=tol, rtol=0)
    assert (null_out - _forward(m, _tokens())).abs().max() > 100 * tol


@pytest.mark.parametrize("name", sorted(CASES))
def test_guided_sampling_and_training_gradients(name):
    m = _method(name)
    n = 2
    cond = Condition(text=_tokens())
    x, nfe = m.sample(StackedRandom([0, 1]), cond, steps=2, guidance=3.0)
    assert x.shape == (n, 3, m.config.resolution, m.config.resolution) and torch.isfinite(x).all()
    assert nfe == 4
    # Training: with dropout 0.5 over 8 examples some captions drop; the learned null token gets gradient.
    for mod in m.modules().values():
        mod.train()
    stage = m.stages()[0]
    if stage.enter is not None:
        stage.enter()
    batch = m.example_batch(stage, n=8)
    assert batch.text.shape == (8, L, D)
    loss, _ = m.loss(batch, stage)
    loss.backward()
    null = {"simple": lambda: m.model.net.text_tokens, "mdm": lambda: m.net.base.text_tokens,
            "greedy": lambda: m.core.text_tokens}[name]().null.token
    assert null.grad is not None and float(null.grad.abs().sum()) > 0


def test_pooled_mode_unchanged_shape():
    m = build_method("simple", "cpu-tiny", dict(conditioning="text", text_dim=D))
    assert m.model.net.text_tokens is None
    b = m.example_batch(m.stages()[0], n=2)
    assert b.text.shape == (2, D)


def test_cross_attention_ignores_masked_keys():
    torch.manual_seed(0)
    ca = CrossAttention(8, D, 2)
    q = torch.randn(2, 2, 5, 4)
    tok = torch.randn(2, L, D)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    out = ca(q, TextContext(torch.zeros(2, D), tok, mask))
    junk = tok.clone()
    junk[~mask] = 1e3 * torch.randn(int((~mask).sum()), D)
    torch.testing.assert_close(ca(q, TextContext(torch.zeros(2, D), junk, mask)), out, atol=1e-6, rtol=0)


def test_text_tokens_mask_pool_and_null():
    tt = TextTokens(D, proj_dim=None, null_text="zero")
    text = _tokens(3, (4, 2, 0))
    ctx = tt(text)
    assert ctx.mask.tolist()[0] == [True] * 4 + [False] * 2
    assert ctx.mask[2].tolist() == [True] + [False] * (L - 1)        # dropped → one (zero) null token
    torch.testing.assert_close(ctx.pooled[0], text[0, :4].mean(0))
    torch.testing.assert_close(masked_mean(text, token_mask(text))[1], text[1, :2].mean(0))
    with pytest.raises(ValueError, match="null_text"):
        NullText(D, "bogus")
    with pytest.raises(ValueError, match="text_conditioning: pooled"):
        tt(torch.randn(2, D))
