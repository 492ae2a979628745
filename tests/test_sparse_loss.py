"""Sparse prediction: the LM head and the cross-entropy run only at the positions in the loss, chunk by chunk.
The NELBO and its gradients equal the dense path's; the chunked cross-entropy equals the full one; the FLOP
count of a sparse training step matches FlopCounterMode; the AR objective keeps its loss."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import loopmdm.diffusion.positions as positions
from loopmdm.diffusion import Autoregressive, Batch, MaskedDiffusion, get_schedule, q_sample
from loopmdm.diffusion.positions import LossPositions, bucketed
from loopmdm.model import LoopMDM, ModelConfig
from loopmdm.model.flops import train_flops_per_token
from loopmdm.model.loss import linear_cross_entropy


def cfg(**kw) -> ModelConfig:
    base = dict(
        vocab_size=97,
        max_seq_len=24,
        d_model=32,
        n_heads=2,
        n_layers=3,
        n_h=1,
        n_m=1,
        n_o=1,
        cond_dim=16,
    )
    return ModelConfig(**{**base, **kw})


class Dense(torch.nn.Module):
    """The same weights behind a forward that only returns full logits: the objective's dense path."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, x_t, t=None, loops=1, attention_mask=None):
        return self.inner(x_t, t, loops=loops)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kw", [dict(), dict(time_conditioning="none", tie_embeddings=False)])
@pytest.mark.parametrize(
    "loss_weight, frozen", [("elbo", False), ("uniform", False), ("elbo", True)]
)
def test_sparse_and_dense_nelbo_and_gradients_agree(kw, loss_weight, frozen):
    torch.manual_seed(0)
    model = LoopMDM(cfg(**kw))
    dense = Dense(copy.deepcopy(model))
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=96, loss_weight=loss_weight)
    x0 = torch.randint(0, 96, (4, 24))
    given = torch.rand(4, 24) < 0.3 if frozen else None
    noise = obj.draw(4, 24, torch.Generator().manual_seed(1))
    a = obj.loss(model, Batch(x0, given), 2, noise)
    b = obj.loss(dense, Batch(x0, given), 2, noise)
    assert a.n_tokens == b.n_tokens
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.nll_sum, b.nll_sum, rtol=1e-5, atol=1e-5)
    a.loss.backward()
    b.loss.backward()
    ga, gb = grads(model), {k.removeprefix("inner."): v for k, v in grads(dense).items()}
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6, msg=k)


def test_loss_positions_are_row_major_and_padded_to_one_of_32_sizes():
    # at most all
    assert [bucketed(n, 1000) for n in (0, 1, 32, 33, 990, 999)] == [0, 32, 32, 64, 992, 1000]
    scored = np.zeros((4, 64), dtype=bool)  # 256 positions: sizes in steps of 8
    scored[0, [5, 1]] = scored[2, 7] = True
    pos = LossPositions.of(scored)
    # the padding repeats the last one
    assert pos.n == 3 and pos.index.tolist() == [1, 5, 135] + [135] * 5
    assert pos.valid.tolist() == [True] * 3 + [False] * 5
    assert pos.rows(64).tolist() == [0, 0, 2] + [2] * 5
    assert pos.labels(torch.arange(256).reshape(4, 64)).tolist() == pos.index.tolist()


def test_the_padding_of_the_loss_positions_changes_nothing(monkeypatch):
    torch.manual_seed(0)
    model = LoopMDM(cfg())
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=96)
    x0 = torch.randint(0, 96, (4, 24))
    noise = obj.draw(4, 24, torch.Generator().manual_seed(1))
    outs = {}
    for padded in (True, False):
        if not padded:
            monkeypatch.setattr(positions, "bucketed", lambda n, total: n)
        model.zero_grad()
        out = obj.loss(model, Batch(x0), 2, noise)
        out.loss.backward()
        outs[padded] = (out, grads(model))
    (a, ga), (b, gb) = outs[True], outs[False]
    assert a.n_tokens == b.n_tokens
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.nll_sum, b.nll_sum, rtol=1e-6, atol=1e-6)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_cross_entropy_equals_the_full_one(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(13, 8, generator=g, requires_grad=True)
    w = torch.randn(11, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 10, (13,), generator=g)
    rw = torch.rand(13, generator=g)
    total, ce = linear_cross_entropy(h, w, y, rw, exclude=10, chunk=chunk)
    logits = h @ w.t()
    logits = logits.masked_fill(torch.arange(11) == 10, float("-inf"))
    ref_ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(ce, ref_ce.detach())
    (2.0 * total).backward()  # the upstream gradient scales what the forward stored
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    (2.0 * (ref_ce * rw).sum()).backward()
    torch.testing.assert_close(gh, h.grad)
    torch.testing.assert_close(gw, w.grad)
    with torch.no_grad():  # evaluation: no gradient work, same numbers
        t2, ce2 = linear_cross_entropy(h, w, y, rw, exclude=10, chunk=chunk)
    torch.testing.assert_close(t2, total.detach())


def test_bf16_autocast_sparse_loss_is_close_to_fp32():
    torch.manual_seed(0)
    model = LoopMDM(cfg())
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=96)
    x0 = torch.randint(0, 96, (4, 24))
    noise = obj.draw(4, 24, torch.Generator().manual_seed(1))
    ref = obj.loss(model, Batch(x0), 2, noise).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = obj.loss(model, Batch(x0), 2, noise).loss
    low.backward()
    assert abs(float(low.detach()) - float(ref.detach())) / float(ref.detach()) < 0.03
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("loops", [1, 3])
def test_sparse_training_step_flops_match_the_counter(loops):
    c = cfg(vocab_size=512, max_seq_len=64, d_model=64, n_heads=4, n_layers=4, n_h=1, n_m=2)
    model = LoopMDM(c)
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=511)
    B, T = 4, 64
    x0 = torch.randint(0, 511, (B, T))
    noise = obj.draw(B, T, torch.Generator().manual_seed(0))
    masked = q_sample(Batch(x0), noise, obj.schedule.alpha(noise.t), 511) == 511
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        obj.loss(model, Batch(x0), loops, noise).loss.backward()
    frac = float(masked.float().mean())  # the positions the head really ran on in this batch
    assert fc.get_total_flops() / (B * T) == pytest.approx(
        train_flops_per_token(c, loops, T, frac), rel=0.05
    )


def test_ar_objective_keeps_its_loss():
    torch.manual_seed(0)
    model = LoopMDM(cfg(causal=True, time_conditioning="none"))
    x0 = torch.randint(0, 97, (3, 24))
    obj = Autoregressive(get_schedule("loglinear"), mask_id=96)
    out = obj.loss(model, Batch(x0), 1)
    with torch.no_grad():
        logits = model(x0[:, :-1])
    ref = F.cross_entropy(logits.transpose(1, 2), x0[:, 1:])
    torch.testing.assert_close(out.loss.detach(), ref, rtol=1e-5, atol=1e-6)
    assert out.n_tokens == 3 * 23 and obj.predicted_fraction() == 1.0


def test_the_masked_diffusion_head_runs_on_half_the_positions_on_average():
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=0, t_eps=1e-3)
    # E[t], t ~ U[eps, 1)
    assert obj.predicted_fraction() == pytest.approx((1 + 1e-3) / 2, rel=1e-6)
    assert MaskedDiffusion(get_schedule("cosine"), 0).predicted_fraction() == pytest.approx(
        1 - 2 / torch.pi, abs=2e-3
    )


@pytest.mark.parametrize("chunk", [4, 1000])
def test_flop_counter_sees_every_product_of_the_chunked_loss(chunk):
    """Forward, dL/dh and dL/dW: 3 products of 2 N V D FLOPs each, however the positions are chunked."""
    n, v, d = 13, 50, 8
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(v, d, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        linear_cross_entropy(h, w, torch.randint(0, v, (n,)), chunk=chunk)[0].backward()
    assert fc.get_total_flops() == 3 * 2 * n * v * d


def test_a_second_backward_through_the_loss_is_refused():
    h = torch.randn(5, 4, requires_grad=True)
    total, _ = linear_cross_entropy(
        h, torch.randn(7, 4, requires_grad=True), torch.randint(0, 7, (5,))
    )
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        total.backward()


def test_bf16_chunked_loss_gradients_are_close_to_fp32():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(64, 16, generator=g)).requires_grad_()
    y = torch.randint(0, 64, (40,), generator=g)
    linear_cross_entropy(h, w, y, chunk=7)[0].backward()
    ref_h, ref_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = linear_cross_entropy(h, w, y, chunk=7)
    total.backward()
    assert h.grad.dtype == w.grad.dtype == torch.float32
    for got, ref in ((h.grad, ref_h), (w.grad, ref_w)):
        assert float((got - ref).norm() / ref.norm()) < 0.02


def test_the_loss_without_grad_mode_costs_one_forward():
    """Validation runs the chunked cross-entropy under no_grad: only the N x V x D forward products (issue: it
    used to form the gradients too, 3x the FLOPs)."""
    torch.manual_seed(0)
    N, D, V = 40, 16, 300
    h = torch.randn(N, D, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(V, D))
    y = torch.randint(0, V, (N,))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        linear_cross_entropy(h, w, y, chunk=7)
    assert fc.get_total_flops() == 2 * N * V * D
    with FlopCounterMode(display=False) as fc:
        linear_cross_entropy(h, w, y, chunk=7)[0].backward()
    assert fc.get_total_flops() == 3 * 2 * N * V * D


def test_chunked_weight_gradient_accumulates_in_fp32_under_bf16():
    torch.manual_seed(0)
    h = torch.randn(64, 16)
    w = torch.nn.Parameter(torch.randn(50, 16))
    y = torch.randint(0, 50, (64,))
    grads = {}
    for chunk in (64, 4):
        w.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            linear_cross_entropy(h, w, y, chunk=chunk)[0].backward()
        grads[chunk] = w.grad.clone()
    w.grad = None
    linear_cross_entropy(h, w, y)[0].backward()
    ref = w.grad
    # 16 chunks summed in fp32 are as close to the fp32 gradient as one bf16 product
    err = {c: float((g - ref).abs().max() / ref.abs().max()) for c, g in grads.items()}
    assert err[4] < 2 * err[64] + 1e-3
