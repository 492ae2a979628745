"""The reference sampler (``loopmdm.sampling.reference``) returns exactly the tokens of the production
ancestral sampler with a fixed loop count, for the same seed."""

from __future__ import annotations

import pytest
import torch

from loopmdm.data import char_tokenizer
from loopmdm.model import LoopMDM, ModelConfig
from loopmdm.sampling import generate
from loopmdm.sampling.reference import reference_sample


@pytest.mark.parametrize(
    "temperature, loops, time", [(1.0, 3, "adaln"), (0.0, 1, "none"), (0.7, 6, "adaln")]
)
def test_reference_equals_generate(temperature, loops, time):
    tok = char_tokenizer(["abcdefghij0123456789"])
    torch.manual_seed(0)
    model = LoopMDM(
        ModelConfig(
            vocab_size=tok.vocab_size,
            max_seq_len=16,
            d_model=32,
            n_heads=2,
            n_layers=3,
            n_h=1,
            n_m=1,
            n_o=1,
            cond_dim=16,
            time_conditioning=time,
        )
    ).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    ref = reference_sample(
        model,
        tok.mask_id,
        num_samples=3,
        length=16,
        steps=7,
        loops=loops,
        temperature=temperature,
        seed=5,
    )
    out = generate(
        model,
        tok,
        num_samples=3,
        length=16,
        steps=7,
        sampler="ancestral",
        policy="fixed",
        policy_options={"loops": loops},
        temperature=temperature,
        seed=5,
    )
    assert torch.equal(ref, out.tokens)
    assert not (ref == tok.mask_id).any()
