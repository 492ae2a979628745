"""Samplers: every mask filled, conditioning kept, determinism, cached == uncached, greedy, EOS, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import t_free_model
from loopmdm.checkpoint import load_model
from loopmdm.diffusion.schedules import get_schedule
from loopmdm.errors import ConfigError
from loopmdm.model import LoopMDM
from loopmdm.sampling import SAMPLERS, TokenFilter, draw, generate, parse_template, transfer_counts


@pytest.fixture(scope="module")
def trained(tiny_run):
    model, tok, cfg = load_model(tiny_run)
    return model, tok, cfg


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_fills_every_mask(trained, sampler):
    model, tok, _ = trained
    out = generate(
        model,
        tok,
        num_samples=3,
        length=20,
        steps=6,
        sampler=sampler,
        policy="fixed",
        policy_options={"loops": 2},
        prompt="def",
        seed=1,
    )
    x = out.tokens
    assert x.shape == (3, 20) and x.dtype == torch.long
    assert not (x == tok.mask_id).any()
    assert ((x >= 0) & (x < tok.vocab_size)).all()
    prefix = [tok.bos_id] + tok.encode("def")
    assert (x[:, : len(prefix)] == torch.tensor(prefix)).all()
    assert len(out.texts) == 3 and all(t.startswith("def") for t in out.texts)


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_infill_template_keeps_fixed_tokens(trained, sampler):
    model, tok, _ = trained
    template = "def f(a):\n[MASK:4]\n    return [MASK]\n"
    ids, free = parse_template(template, tok)
    assert sum(free) == 5 and len(ids) == len(free)
    out = generate(
        model,
        tok,
        num_samples=2,
        steps=5,
        sampler=sampler,
        template=template,
        seed=3,
        sampler_options={"block_length": 4} if sampler == "semi_ar" else None,
    )
    fixed = ~torch.tensor(free)
    assert out.tokens.shape == (2, len(ids))
    assert (out.tokens[:, fixed] == torch.tensor(ids)[fixed]).all()
    assert not (out.tokens == tok.mask_id).any()


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_same_seed_same_output(trained, sampler):
    model, tok, _ = trained
    kw = dict(
        num_samples=2,
        length=16,
        steps=6,
        sampler=sampler,
        policy="converge",
        policy_options={"threshold": 0.1, "s_max": 3},
        top_p=0.9,
    )
    a, b = generate(model, tok, seed=5, **kw), generate(model, tok, seed=5, **kw)
    c = generate(model, tok, seed=6, **kw)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "policy,opts",
    [
        ("fixed", {"loops": 2}),
        ("converge", {"threshold": 0.2, "s_max": 3}),
        ("per_token", {"threshold": 0.2, "s_max": 3}),
        ("schedule", {"s_max": 3}),
    ],
)
@pytest.mark.parametrize("num_samples,granularity", [(1, "row"), (3, "batch")])
def test_cached_equals_uncached(trained, policy, opts, num_samples, granularity):
    """With a prediction that depends on x_t only, the cached sampler gives the same tokens with fewer calls."""
    _, tok, _ = trained
    model = t_free_model(tok)
    kw = dict(
        num_samples=num_samples, length=12, steps=40, policy=policy, policy_options=opts, seed=11
    )
    plain = generate(model, tok, sampler="ancestral", **kw)
    cached = generate(
        model, tok, sampler="cached", sampler_options={"granularity": granularity}, **kw
    )
    assert torch.equal(plain.tokens, cached.tokens)
    assert plain.report.network_calls == 40
    assert cached.report.network_calls < 0.7 * plain.report.network_calls
    assert cached.report.flops < plain.report.flops
    assert sum(cached.report.loops_per_step) == cached.report.loop_iterations


def test_cached_row_granularity_evaluates_only_changed_rows(trained):
    model, tok, _ = trained
    out = generate(
        model,
        tok,
        num_samples=4,
        length=10,
        steps=40,
        sampler="cached",
        policy_options={"loops": 1},
    )
    # some calls ran on a subset of rows
    assert out.report.network_rows < 4 * out.report.network_calls
    assert not (out.tokens == tok.mask_id).any()


def test_topk1_is_greedy(trained):
    model, tok, _ = trained
    kw = dict(num_samples=2, length=16, steps=4, policy_options={"loops": 2})
    greedy = generate(model, tok, temperature=0.0, seed=0, **kw)
    topk = generate(model, tok, top_k=1, seed=1, **kw)
    assert torch.equal(greedy.tokens, topk.tokens)
    # one step reveals everything from one prediction: the argmax of p_theta(x_0 | all masks)
    one = generate(
        model, tok, num_samples=1, length=16, steps=1, top_k=1, policy_options={"loops": 2}
    )
    x = torch.full((1, 16), tok.mask_id)
    with torch.no_grad():
        logits = model(x, torch.ones(1), loops=2)
    logits[..., tok.mask_id] = -math.inf
    assert torch.equal(one.tokens, logits.argmax(-1))


def test_filters():
    logits = torch.log(
        torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]], dtype=torch.float64).clamp_min(1e-30)
    )
    mask_id = 4
    p = TokenFilter(top_p=0.7).log_probs(logits, mask_id).exp()
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0, 0, 0]], dtype=torch.float64))
    p = TokenFilter(top_k=3).log_probs(logits, mask_id).exp()
    assert torch.allclose(p, torch.tensor([[0.5, 0.3, 0.15, 0, 0]], dtype=torch.float64) / 0.95)
    p = TokenFilter(temperature=0).log_probs(logits, mask_id).exp()
    assert p.tolist() == [[1.0, 0, 0, 0, 0]]
    sharp = TokenFilter(temperature=0.5).log_probs(logits, mask_id).exp()
    assert sharp[0, 0] > 0.5 and sharp[0, 4] == 0


def test_float64_inverse_cdf_draw_matches_probabilities():
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(40000, generator=g, dtype=torch.float64)
    idx = draw(probs.log().expand(40000, 4), u)
    freq = torch.bincount(idx, minlength=4).double() / 40000
    assert torch.allclose(freq, probs, atol=0.01) and freq[3] == 0
    assert (
        draw(probs.log()[None], torch.zeros(1)).item() == 2
        and draw(probs.log()[None], torch.tensor([0.99])) == 0
    )


def test_transfer_counts_follow_schedule():
    c = transfer_counts(torch.tensor([10, 7, 0]), 4, get_schedule("loglinear"))
    assert c.sum(1).tolist() == [10, 7, 0] and (c >= 0).all()
    # linear in t (log-linear schedule)
    assert set(c[0].tolist()) == {2, 3} and set(c[1].tolist()) <= {1, 2}


def test_semi_ar_fills_blocks_left_to_right_and_stops_at_eos(trained):
    model, tok, _ = trained

    class EosAfter4(LoopMDM):
        def coda(self, h, ctx):
            logits = super().coda(h, ctx).clone()
            logits[:, 5:, tok.eos_id] += 100.0  # EOS certain from position 5 on
            return logits

    m = EosAfter4(model.config)
    m.load_state_dict(model.state_dict())
    m.eval()
    out = generate(
        m,
        tok,
        num_samples=2,
        length=24,
        steps=12,
        sampler="semi_ar",
        sampler_options={"block_length": 4},
        stop_at_eos=True,
        record_trajectory=True,
        seed=2,
    )
    rs = out.trajectory.reveal_step
    block_of = torch.arange(24) // 4
    for row in range(2):  # a later block never reveals before an earlier one finished
        done = [int(rs[row][block_of == b].max()) for b in range(2)]
        first = [int(rs[row][block_of == b].min()) for b in range(2)]
        assert first[1] > done[0]
    # 2 steps per block, 6 blocks: stopped after block 2 (EOS at position 5)
    assert out.report.steps_run == 4
    assert out.lengths.max() <= 5
    pad = tok.pad_id
    for row, n in zip(out.tokens, out.lengths):
        assert row[n] == tok.eos_id and (row[n + 1 :] == pad).all()
    assert not (out.tokens == tok.mask_id).any()
    assert (
        torch.equal(out.trajectory.snapshots[-1], out.tokens) and len(out.trajectory.snapshots) == 4
    )
    assert all(
        tok.decode(row[:n].tolist()) == text
        for row, n, text in zip(out.tokens, out.lengths, out.texts)
    )


def test_trajectory_and_on_step(trained):
    model, tok, _ = trained
    seen = []
    out = generate(
        model,
        tok,
        num_samples=2,
        length=16,
        steps=5,
        prompt="def",
        record_trajectory=True,
        policy="schedule",
        policy_options={"s_min": 1, "s_max": 3},
        on_step=seen.append,
    )
    tr = out.trajectory
    P = 1 + len(tok.encode("def"))
    assert (tr.reveal_step[:, :P] == -1).all() and (tr.reveal_step[:, P:] >= 0).all()
    assert ((tr.reveal_loops[:, P:] >= 1) & (tr.reveal_loops[:, P:] <= 3)).all()
    assert ((tr.reveal_confidence[:, P:] > 0) & (tr.reveal_confidence[:, P:] <= 1)).all()
    assert len(tr.snapshots) == 5 and torch.equal(tr.snapshots[-1], out.tokens)
    assert tr.loops_per_step == out.report.loops_per_step and len(tr.flops_per_step) == 5
    assert [s.step for s in seen] == list(range(5)) and seen[-1].revealed.all()
    assert seen[-1].flops_so_far == pytest.approx(out.report.flops)
    d = tr.to_dict(tok)
    json.dumps(d)
    assert len(d["tokens"]) == 2 and len(d["snapshots"]) == 5


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(steps=0), "steps"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(prompt="def " * 40), "window"),
        (dict(template="no span here"), "no span to fill"),
        (dict(policy="converge", policy_options={"s_min": 4, "s_max": 2}), "s_min=4 > s_max=2"),
        (dict(policy="schedule", policy_options={"s_min": 3, "s_max": 1}), "s_min=3 > s_max=1"),
        (dict(sampler="beam"), "choose one of: ancestral, cached, confidence, semi_ar"),
        (dict(policy="oracle"), "choose one of: converge, fixed, per_token, schedule, warm"),
        (dict(policy_options={"loop": 3}), "valid options: loops"),
        (dict(policy="fixed", policy_options={"loops": 0}), "loops"),
        (dict(sampler="confidence", sampler_options={"order": "vibes"}), "margin"),
        (dict(sampler="semi_ar", sampler_options={"block_length": 2}, steps=3), "blocks"),
        (dict(length=99), "window"),
        (dict(prompt="a", template="[MASK]"), "at most one"),
    ],
)
def test_bad_input_is_one_line_config_error(trained, kw, match):
    model, tok, _ = trained
    with pytest.raises(ConfigError, match=match) as e:
        generate(model, tok, **{"length": 16, **kw} if "template" not in kw else kw)
    assert "\n" not in str(e.value)


def test_an_option_of_a_sampler_without_options_names_none():
    from loopmdm.errors import ConfigError
    from loopmdm.registry import build
    from loopmdm.sampling import SAMPLERS

    with pytest.raises(ConfigError, match=r"valid options: \(none\) \(parallel decoding"):
        build(SAMPLERS, "ancestral", {"threshold": 0.9})
