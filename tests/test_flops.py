"""The FLOP formula against torch.utils.flop_counter.FlopCounterMode (within 5%)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from loopmdm.config import DiffusionConfig, ModelConfig
from loopmdm.diffusion.loop_variants import make_loop_distribution
from loopmdm.model import LoopMDM
from loopmdm.model.flops import (
    effective_depth,
    expected_train_flops_per_token,
    forward_flops_per_token,
    train_flops_per_token,
)


def measured(cfg: ModelConfig, loops: int, train: bool, B=2) -> float:
    m = LoopMDM(cfg)
    T = cfg.max_seq_len
    x = torch.randint(0, cfg.vocab_size, (B, T))
    t = torch.rand(B)
    # the math SDPA backend decomposes attention into matmuls that FlopCounterMode can see on CPU
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        out = m(x, t, loops=loops)
        if train:
            out.float().pow(2).mean().backward()
    return fc.get_total_flops() / (B * T)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(time_conditioning="none", tie_embeddings=False),
        dict(input_injection=True),
        dict(input_injection=True, backprop_depth=2),
    ],
)
@pytest.mark.parametrize("loops", [1, 4])
def test_formula_matches_flop_counter(kw, loops):
    cfg = ModelConfig(
        vocab_size=512,
        max_seq_len=64,
        d_model=64,
        n_heads=4,
        n_layers=4,
        n_h=1,
        n_m=2,
        n_o=1,
        cond_dim=32,
        **kw,
    )
    fwd = measured(cfg, loops, train=False)
    assert fwd == pytest.approx(forward_flops_per_token(cfg, loops), rel=0.05)
    trn = measured(cfg, loops, train=True)
    assert trn == pytest.approx(train_flops_per_token(cfg, loops), rel=0.05)


def test_loop_cost_and_expectation():
    cfg = ModelConfig(n_layers=12, n_h=1, n_m=2, n_o=9, d_model=768, n_heads=12, max_seq_len=1024)
    assert effective_depth(cfg, 12) == 34  # the paper's effective depth at S = 12
    step = forward_flops_per_token(cfg, 2) - forward_flops_per_token(cfg, 1)
    assert step == pytest.approx(forward_flops_per_token(cfg, 5) - forward_flops_per_token(cfg, 4))
    dist = make_loop_distribution(DiffusionConfig(s_max=12))
    # linear in S, so E[F(S)] = F(E[S]) with E[S] = 6.5
    assert expected_train_flops_per_token(cfg, dist) == pytest.approx(
        (train_flops_per_token(cfg, 6) + train_flops_per_token(cfg, 7)) / 2
    )
