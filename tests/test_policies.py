"""Loop policies: bounds S_min / S_max, the report's loop count against a hook on model.mid, FLOPs, and the
partial (per-token) mid-block update."""

from __future__ import annotations

import pytest
import torch

from loopmdm.checkpoint import load_model
from loopmdm.errors import ConfigError
from loopmdm.model.flops import forward_flops_per_token
from loopmdm.sampling import LOOP_POLICIES, generate
from loopmdm.sampling.cached_attention import StackCache
from loopmdm.sampling.policies import Schedule


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_model(tiny_run)


class MidCounter:
    """Counts calls of model.mid and the query positions each call updated."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.mid.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


POLICIES = [
    ("fixed", {"loops": 3}),
    ("fixed", {"loops": 7}),  # above the training S_max = 3
    ("schedule", {"s_min": 1, "s_max": 4, "shape": "hump"}),
    ("schedule", {"s_min": 2, "s_max": 4, "shape": "linear"}),
    ("converge", {"threshold": 0.05, "s_min": 2, "s_max": 5}),
    ("converge", {"threshold": 0.01, "criterion": "kl", "s_min": 1, "s_max": 4}),
    ("per_token", {"threshold": 0.05, "s_min": 2, "s_max": 5}),
    ("warm", {"threshold": 0.05, "s_min": 1, "s_max": 4}),
]


@pytest.mark.parametrize("sampler", ["ancestral", "cached", "confidence"])
@pytest.mark.parametrize("policy,opts", POLICIES)
def test_report_counts_hooked_loops_and_respects_bounds(trained, sampler, policy, opts):
    model, tok, _ = trained
    with MidCounter(model) as counter:
        out = generate(
            model,
            tok,
            num_samples=3,
            length=16,
            steps=20,
            sampler=sampler,
            policy=policy,
            policy_options=opts,
            record_trajectory=True,
            seed=4,
        )
    rep = out.report
    assert rep.loop_iterations == counter.calls == sum(rep.loops_per_step)
    s_min = opts.get("s_min", opts.get("loops"))
    s_max = opts.get("s_max", opts.get("loops"))
    loops = out.trajectory.reveal_loops
    assert ((loops >= s_min) & (loops <= s_max)).all()
    assert s_min * rep.network_calls <= rep.loop_iterations <= s_max * rep.network_calls
    assert rep.token_loop_iterations <= rep.loop_iterations + 1e-9
    assert s_min - 1e-9 <= rep.mean_loops <= s_max + 1e-9
    assert not (out.tokens == tok.mask_id).any()


def test_fixed_flops_match_the_formula(trained):
    model, tok, cfg = trained
    out = generate(model, tok, num_samples=2, length=16, steps=5, policy_options={"loops": 3})
    expected = 5 * 2 * 16 * forward_flops_per_token(cfg.model, 3, 16)
    assert out.report.flops == pytest.approx(expected, rel=1e-9)
    assert (
        out.report.network_calls == 5
        and out.report.network_rows == 10
        and out.report.mean_loops == 3
    )


@pytest.mark.parametrize("policy", ["converge", "per_token", "warm"])
def test_threshold_extremes_hit_the_bounds(trained, policy):
    """A threshold nothing reaches runs S_max everywhere (same tokens as fixed S_max); one everything
    reaches runs S_min (same tokens as fixed S_min, except warm whose start state differs). Warm start that never
    converges equals fixed S_max too: its depth bound (max_depth = s_max) restarts every position from h_0."""
    model, tok, _ = trained
    kw = dict(num_samples=2, length=16, steps=6, seed=9)
    never = generate(
        model, tok, policy=policy, policy_options={"threshold": 1e-12, "s_min": 1, "s_max": 4}, **kw
    )
    always = generate(
        model, tok, policy=policy, policy_options={"threshold": 1e9, "s_min": 2, "s_max": 4}, **kw
    )
    fixed4 = generate(model, tok, policy_options={"loops": 4}, **kw)
    fixed2 = generate(model, tok, policy_options={"loops": 2}, **kw)
    assert never.report.loop_iterations == 6 * 4 and never.report.mean_loops == pytest.approx(4)
    assert always.report.loop_iterations == 6 * 2 and always.report.mean_loops == pytest.approx(2)
    assert torch.equal(never.tokens, fixed4.tokens)
    if policy != "warm":
        assert torch.equal(always.tokens, fixed2.tokens)
    unbounded = generate(
        model,
        tok,
        policy="warm",
        policy_options={"threshold": 1e-12, "s_min": 1, "s_max": 4, "max_depth": 10_000},
        **kw,
    )
    assert not torch.equal(unbounded.tokens, fixed4.tokens)  # warm states kept looping past S_max


def test_per_token_exit_saves_position_weighted_compute(trained):
    model, tok, _ = trained
    kw = dict(num_samples=2, length=16, steps=8, seed=1)
    full = generate(model, tok, policy="fixed", policy_options={"loops": 5}, **kw)
    pt = generate(
        model,
        tok,
        policy="per_token",
        policy_options={"threshold": 0.2, "s_min": 1, "s_max": 5},
        record_trajectory=True,
        **kw,
    )
    # some positions exited early: fewer position updates and fewer FLOPs than mid-block calls suggest
    assert pt.report.token_loop_iterations < pt.report.loop_iterations
    assert pt.report.flops < full.report.flops
    # positions got different loop counts
    assert len(set(pt.trajectory.reveal_loops.flatten().tolist())) > 1


def test_partial_update_equals_full_update_when_all_positions_are_active(trained):
    model, _, _ = trained
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    with torch.no_grad():
        ctx = model.prelude(x, torch.tensor([0.3, 0.8]))
        cache = [{} for _ in range(len(model.mid))]
        h1 = model.loop_step(ctx.h0, ctx, 0, cache=StackCache(cache))
        assert torch.equal(h1, model.loop_step(ctx.h0, ctx, 0))  # filling the cache changes nothing
        ref = model.loop_step(h1, ctx, 1)
        pos = torch.arange(12).expand(2, 12)
        part = model.loop_step(h1, ctx, 1, cache=StackCache(cache, pos))
        torch.testing.assert_close(part, ref, rtol=1e-5, atol=1e-5)
        # a subset: at every mid layer the updated positions attend to fresh keys / values of their own and to
        # the cached ones of the others, i.e. to a full layer run on [updated states | cached layer inputs]
        inputs = []
        hooks = [
            b.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
            for b in model.mid.blocks
        ]
        cache = [{} for _ in range(len(model.mid))]
        model.loop_step(
            ctx.h0, ctx, 0, cache=StackCache(cache)
        )  # fills the cache, records each layer's input
        for hk in hooks:
            hk.remove()
        sub = torch.tensor([[0, 3, 5], [1, 2, 11]])
        idx = sub[..., None].expand(-1, -1, h1.shape[-1])  # [B, K, D]
        out = model.loop_step(h1.gather(1, idx), ctx, 1, cache=StackCache(cache, sub))  # [B, K, D]
        z = h1
        for block, cached_in in zip(model.mid.blocks, inputs):
            mixed = cached_in.scatter(1, idx, z.gather(1, idx))
            z = block(mixed, ctx.rope, ctx.cond, ctx.attn_mask, ctx.causal)
        torch.testing.assert_close(out, z.gather(1, idx), rtol=1e-5, atol=1e-5)


def test_schedule_shapes_and_bounds():
    m = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert Schedule(1, 9, "hump").loops_for(m).tolist() == [2, 6, 9, 6, 2]
    assert Schedule(1, 5, "linear").loops_for(m).tolist() == [1, 2, 3, 4, 5]
    assert Schedule(1, 5, "inverse").loops_for(m).tolist() == [5, 4, 3, 2, 1]
    assert Schedule(3, 3, "constant").loops_for(m).tolist() == [3] * 5
    with pytest.raises(ConfigError, match="choose one of: hump"):
        Schedule(1, 4, "zigzag")


@pytest.mark.parametrize(
    "name,opts,match",
    [
        ("schedule", {"s_min": 5, "s_max": 2}, "S_min <= S_max"),
        ("converge", {"s_min": 3, "s_max": 1}, "S_min <= S_max"),
        ("per_token", {"s_min": 2, "s_max": 1}, "S_min <= S_max"),
        ("warm", {"s_min": 9, "s_max": 8}, "S_min <= S_max"),
        ("warm", {"max_depth": 0}, "max_depth"),
        ("converge", {"threshold": 0}, "threshold"),
        ("converge", {"criterion": "vibes"}, "delta, kl"),
        ("fixed", {"loops": 0}, ">= 1"),
        ("schedule", {"s_min": 0}, ">= 1"),
    ],
)
def test_policy_option_errors(name, opts, match):
    with pytest.raises(ConfigError, match=match):
        LOOP_POLICIES.get(name)(**opts)


@pytest.mark.parametrize("max_depth, s_min, s_max", [(4, 1, 4), (6, 2, 4), (3, 1, 4)])
def test_warm_start_never_lets_a_state_exceed_max_depth(trained, max_depth, s_min, s_max):
    """Track every position's accumulated depth over all steps: the warm-started state has at most max_depth
    loops applied since its last start from h_0 (the bug: the check happened only before warm-starting, so the
    depth could reach max_depth - 1 + s_max)."""
    from loopmdm.diffusion import get_schedule
    from loopmdm.sampling import TokenFilter, build_canvas, sample_canvas
    from loopmdm.sampling.policies import Warm
    from loopmdm.sampling.samplers import SAMPLERS

    model, tok, _ = trained
    policy = Warm(threshold=1e-12, s_min=s_min, s_max=s_max, max_depth=max_depth)  # never converges
    depths = []
    original = policy.finish

    def record(h, state, loops):
        original(h, state, loops)
        depths.append(int(policy._depth.max()))

    policy.finish = record
    canvas = build_canvas(tok, 2, 16, model.config.max_seq_len)
    sample_canvas(
        model,
        canvas,
        tok.mask_id,
        steps=12,
        sampler=SAMPLERS.get("ancestral")(),
        policy=policy,
        token_filter=TokenFilter(),
        schedule=get_schedule("loglinear"),
        gen=torch.Generator().manual_seed(0),
    )
    assert len(depths) == 12 and max(depths) <= max_depth
    assert max(depths) == max_depth  # the bound is reached: warm states are really carried over
