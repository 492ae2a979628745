"""MDLM objective: antithetic t, forward process, SUBS, NELBO, schedules, loop distributions."""

import math

import pytest
import torch

from loopmdm.config import DiffusionConfig, ModelConfig
from loopmdm.diffusion import Batch, MaskedDiffusion, Noise, q_sample, sample_t, subs_log_probs
from loopmdm.diffusion.loop_variants import make_loop_distribution
from loopmdm.diffusion.schedules import SCHEDULES, get_schedule
from loopmdm.model import LoopMDM


def test_antithetic_t_covers_unit_interval():
    g = torch.Generator().manual_seed(0)
    t = sample_t(64, g, antithetic=True, eps=0.0)
    assert t.min() >= 0 and t.max() < 1
    # exactly one t in each of the 64 equal bins
    assert torch.bincount((t * 64).long(), minlength=64).eq(1).all()
    t2 = sample_t(64, g, antithetic=False, eps=1e-3)
    assert t2.min() >= 1e-3


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedules_boundaries_and_derivative(name):
    s = get_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    assert torch.allclose(
        s.alpha(torch.tensor([0.0], dtype=torch.float64)), torch.tensor([1.0], dtype=torch.float64)
    )
    assert abs(float(s.alpha(torch.tensor([1.0], dtype=torch.float64)))) < 1e-9
    h = 1e-6
    num = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(s.dalpha(t), num, rtol=1e-5, atol=1e-6)
    assert (s.weight(t) > 0).all()


def test_q_sample_masks_at_rate():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 10, (4, 5000), generator=g)
    alpha = torch.tensor([1.0, 0.75, 0.25, 0.0])
    noise = Noise(1 - alpha, torch.rand(x0.shape, generator=g))
    x_t = q_sample(Batch(x0), noise, alpha, 99)
    rate = (x_t == 99).float().mean(1)
    torch.testing.assert_close(rate, 1 - alpha, atol=0.03, rtol=0)
    assert ((x_t == x0) | (x_t == 99)).all()
    frozen = torch.rand(x0.shape, generator=g) < 0.5  # given positions are never masked
    x_c = q_sample(Batch(x0, frozen), noise, alpha, 99)
    assert (x_c[frozen] == x0[frozen]).all() and torch.equal(x_c[~frozen], x_t[~frozen])


def test_subs_invariants():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 8, generator=g)
    x_t = torch.tensor([[7, 1, 7, 2, 7, 3], [0, 7, 7, 7, 5, 7]])
    logp = subs_log_probs(logits, x_t, mask_id=7)
    assert torch.isneginf(logp[..., 7]).all()  # never predict the mask
    keep = x_t != 7
    assert (logp[keep].argmax(-1) == x_t[keep]).all()  # unmasked positions copy the input
    assert torch.allclose(logp[keep].exp().sum(-1), torch.ones(int(keep.sum())))
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 6))


def test_loss_finite_and_falls_when_overfitting():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=40,
        max_seq_len=16,
        d_model=32,
        n_heads=2,
        n_layers=3,
        n_h=1,
        n_m=1,
        n_o=1,
        cond_dim=16,
    )
    m = LoopMDM(cfg)
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=39)
    x0 = torch.randint(0, 39, (8, 16), generator=torch.Generator().manual_seed(0))
    noise = obj.draw(8, 16, torch.Generator().manual_seed(0))  # same t and x_t every step
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        out = obj.loss(m, Batch(x0), 2, noise)
        assert math.isfinite(float(out.loss.detach()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_nelbo_weights_masked_tokens_only():
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=3)
    logits = torch.zeros(1, 4, 4)
    x0 = torch.tensor([[0, 1, 2, 0]])
    x_t = torch.tensor([[3, 1, 3, 0]])
    t = torch.tensor([0.5])
    out = obj.nelbo(logits, Batch(x0), x_t, t)
    # two masked tokens, each CE = log 3 (uniform over the 3 non-mask ids), weight 1/t = 2, averaged over 4 tokens
    assert math.isclose(float(out.loss), 2 * 2 * math.log(3) / 4, rel_tol=1e-6)
    # conditional: a frozen (given) position is not a scored token; 'uniform' is the mean CE over masked ones
    frozen = torch.tensor([[False, False, False, True]])
    assert math.isclose(
        float(obj.nelbo(logits, Batch(x0, frozen), x_t, t).loss),
        2 * 2 * math.log(3) / 3,
        rel_tol=1e-6,
    )
    uniform = MaskedDiffusion(get_schedule("loglinear"), mask_id=3, loss_weight="uniform")
    out_u = uniform.nelbo(logits, Batch(x0), x_t, t)
    assert (
        math.isclose(float(out_u.loss), math.log(3), rel_tol=1e-6) and out_u.nll_sum == out.nll_sum
    )


def test_loop_distributions():
    g = torch.Generator().manual_seed(0)
    u = make_loop_distribution(DiffusionConfig(loop_dist="uniform", s_max=12))
    draws = [u.sample(g) for _ in range(3000)]
    assert min(draws) == 1 and max(draws) == 12
    assert u.mean() == 6.5 and abs(sum(draws) / 3000 - 6.5) < 0.3
    f = make_loop_distribution(DiffusionConfig(loop_dist="fixed", s_fixed=3))
    assert f.sample(g) == 3 and f.mean() == 3
    ln = make_loop_distribution(DiffusionConfig(loop_dist="lognormal_poisson", s_mean=6, s_max=32))
    d = [ln.sample(g) for _ in range(3000)]
    assert 1 <= min(d) and max(d) <= 32
    assert abs(sum(d) / 3000 - ln.mean()) < 0.4
    assert abs(sum(ln.pmf().values()) - 1) < 1e-6
