"""The looped backbone: shapes, S = 1 equivalence, shared weights, loop options."""

import pytest
import torch

from loopmdm.config import ModelConfig
from loopmdm.errors import ConfigError
from loopmdm.model import LoopMDM


def small(**kw) -> ModelConfig:
    base = dict(
        vocab_size=64,
        max_seq_len=16,
        d_model=32,
        n_heads=2,
        n_layers=4,
        n_h=1,
        n_m=2,
        n_o=1,
        cond_dim=16,
    )
    base.update(kw)
    return ModelConfig(**base)


def randomize_gates(model):
    """adaLN-Zero starts every block as the identity; give the modulations weights so that tests see real layers."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "modulation" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def inputs(B=3, T=16, V=64):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (B, T), generator=g), torch.rand(B, generator=g)


@pytest.mark.parametrize("tc", ["adaln", "none"])
@pytest.mark.parametrize("loops", [1, 3])
def test_shapes(tc, loops):
    m = LoopMDM(small(time_conditioning=tc))
    x, t = inputs()
    assert m(x, t, loops=loops).shape == (3, 16, 64)


def test_s1_equals_plain_stack():
    """S = 1 with n_m layers equals the non-looped model of the same n_layers with the same weights."""
    looped = randomize_gates(LoopMDM(small(n_h=1, n_m=2, n_o=1)))
    plain = LoopMDM(small(n_h=4, n_m=0, n_o=0))
    src = looped.state_dict()
    blocks = ["head.blocks.0", "mid.blocks.0", "mid.blocks.1", "tail.blocks.0"]
    dst = {}
    for k, v in src.items():
        for i, b in enumerate(blocks):
            if k.startswith(b + "."):
                k = f"head.blocks.{i}." + k[len(b) + 1 :]
        dst[k] = v
    plain.load_state_dict(dst)
    x, t = inputs()
    torch.testing.assert_close(looped(x, t, loops=1), plain(x, t, loops=1))
    # and n_m = 0 ignores S entirely
    torch.testing.assert_close(plain(x, t, loops=5), plain(x, t, loops=1))


def test_weights_shared_across_loops():
    m = randomize_gates(LoopMDM(small()))
    n = m.num_parameters()
    x, t = inputs()
    out1, out4 = m(x, t, loops=1), m(x, t, loops=4)
    assert m.num_parameters() == n  # parameter count independent of S
    assert not torch.allclose(out1, out4)  # ... but S changes the computation
    calls = []
    m.mid.register_forward_hook(lambda *a: calls.append(1))
    m(x, t, loops=7)
    assert len(calls) == 7


def test_bad_loops_and_length():
    m = LoopMDM(small())
    x, t = inputs()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="loops"):
            m(x, t, loops=bad)
    with pytest.raises(ConfigError, match="max_seq_len"):
        m(torch.zeros(1, 17, dtype=torch.long), torch.rand(1), loops=1)
    with pytest.raises(ConfigError, match="pass t"):
        m(x, None, loops=1)


def test_input_injection_is_identity_at_init():
    base = randomize_gates(LoopMDM(small()))
    inj = LoopMDM(small(input_injection=True, loop_embedding=True))
    missing = inj.load_state_dict(base.state_dict(), strict=False)
    assert set(missing.missing_keys) == {"injection.weight", "loop_embed.weight"}
    x, t = inputs()
    torch.testing.assert_close(inj(x, t, loops=3), base(x, t, loops=3))


def _grads(model, loops):
    x, t = inputs()
    model.zero_grad()
    model(x, t, loops=loops).float().pow(2).mean().backward()
    return {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()}


def test_activation_checkpointing_exact_gradients():
    a = randomize_gates(LoopMDM(small()))
    b = LoopMDM(small(checkpoint_loops=True))
    b.load_state_dict(a.state_dict())
    ga, gb = _grads(a, 4), _grads(b, 4)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-5, atol=1e-6)


def test_truncated_backprop_gradient_flow():
    m = randomize_gates(LoopMDM(small(input_injection=True, backprop_depth=1)))
    with torch.no_grad():  # make injection depend on h0 so the head gets gradient through it
        m.injection.weight[:, 32:] = torch.eye(32) * 0.5
    g = _grads(m, 4)
    assert (
        g["head.blocks.0.attn.qkv.weight"] is not None
        and g["head.blocks.0.attn.qkv.weight"].abs().sum() > 0
    )
    assert g["mid.blocks.0.mlp.fc.weight"].abs().sum() > 0
    # truncated gradient differs from full backprop
    full = LoopMDM(small(input_injection=True))
    full.load_state_dict(m.state_dict())
    gf = _grads(full, 4)
    assert not torch.allclose(gf["mid.blocks.0.mlp.fc.weight"], g["mid.blocks.0.mlp.fc.weight"])


def test_truncation_without_injection_is_rejected():
    with pytest.raises(ConfigError, match="input_injection"):
        LoopMDM(small(backprop_depth=2))


def test_untied_head_and_causal_mask():
    m = LoopMDM(small(tie_embeddings=False, causal=True, time_conditioning="none"))
    assert m.lm_head.weight.data_ptr() != m.embed.weight.data_ptr()
    x, _ = inputs()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 64  # changing the last token must not change earlier causal outputs
    torch.testing.assert_close(m(x)[:, :-1], m(y)[:, :-1])
