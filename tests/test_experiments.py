"""Compute-matched experiment: FLOPs-to-target on synthetic curves, the matched plan (and its errors),
a very short three-run comparison whose cumulative FLOPs agree within 2%, and the CLI."""

import json

import numpy as np
import pytest
import torch

from helpers import run_cli as cli
from loopmdm.diffusion import predicted_fraction
from loopmdm.diffusion.loop_variants import BalancedUniformLoops, make_loop_distribution
from loopmdm.errors import ConfigError, DataError
from loopmdm.experiments.ablation import ablation_variants, place_loop
from loopmdm.experiments.common import default_loop_grid, load_experiment_config
from loopmdm.experiments.compute_matched import plan_compute_matched, run_compute_matched
from loopmdm.experiments.compute_matched_config import (
    ComputeMatchedConfig,
    load_compute_matched_config,
)
from loopmdm.experiments.curves import Curve, flops_ratio, flops_to_reach, read_curve, spread
from loopmdm.model.flops import expected_train_flops_per_token, train_flops_per_token

# --------------------------------------------------------------------------- synthetic curves


def power_law(flops, a=2.0, b=40.0, alpha=0.3):
    return [a + b * f**-alpha for f in flops]


def test_flops_to_reach_interpolates_linearly_between_bracketing_points():
    c = Curve([1.0, 2.0, 4.0], [5.0, 3.0, 2.0])
    assert flops_to_reach(c, 4.0) == pytest.approx(1.5)
    assert flops_to_reach(c, 2.5) == pytest.approx(3.0)
    assert flops_to_reach(c, 6.0) == 1.0  # already below at the first point
    assert flops_to_reach(c, 1.0) is None  # never reached


def test_flops_to_reach_uses_first_crossing_of_a_noisy_curve():
    c = Curve([1.0, 2.0, 3.0, 4.0], [5.0, 2.0, 3.0, 2.5])
    assert flops_to_reach(c, 2.5) == pytest.approx(1 + 2.5 / 3)


def test_flops_ratio_recovers_a_known_speedup_on_power_laws():
    f = np.geomspace(1e9, 1e12, 60).tolist()
    base = Curve(f, power_law(f))
    faster = Curve(f, power_law([3.0 * x for x in f]))  # reaches every loss with 3x fewer FLOPs
    assert flops_ratio(base, faster) == pytest.approx(3.0, rel=0.02)
    # the slower curve never reaches the faster one's final loss
    assert flops_ratio(faster, base) is None
    slower = Curve(f, power_law([x / 2.0 for x in f]))
    assert flops_ratio(base, slower) is None


def test_curve_validation_and_reading(tmp_path):
    with pytest.raises(DataError, match="non-decreasing"):
        Curve([2.0, 1.0], [1.0, 1.0])
    with pytest.raises(DataError, match="as many"):
        Curve([1.0], [1.0, 2.0])
    with pytest.raises(DataError, match="does not exist"):
        read_curve(tmp_path / "missing.jsonl")
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "flops": 10}\n{"step": 2, "flops": 20, "val_nelbo": 3.5}\n{"cut')
    assert read_curve(p).to_dict() == {"flops": [20.0], "nelbo": [3.5], "steps": [2]}


def test_spread_ignores_missing_values():
    s = spread([1.0, 3.0, None])
    assert s["mean"] == 2.0 and s["n"] == 2 and s["min"] == 1.0 and s["values"] == [1.0, 3.0, None]
    assert spread([None])["mean"] is None


# --------------------------------------------------------------------------- plan


def test_balanced_loops_are_uniform_and_sum_exactly_per_block():
    dist = BalancedUniformLoops(4)
    gen = torch.Generator().manual_seed(0)
    draws = [dist.sample(gen, k) for k in range(40)]
    for i in range(0, 40, 4):
        assert sorted(draws[i : i + 4]) == [1, 2, 3, 4]
    assert len(set(tuple(draws[i : i + 4]) for i in range(0, 40, 4))) > 1  # the blocks are shuffled
    assert dist.mean() == 2.5 and dist.max() == 4
    # a function of the step alone: a resumed run (a new instance, another generator) draws the same S
    assert [BalancedUniformLoops(4).sample(torch.Generator(), k) for k in range(17, 40)] == draws[
        17:
    ]
    for s_max in (3, 4, 5):
        # the last, incomplete block keeps the sum within half a loop of E[S] * steps
        for total in range(1, 12):
            d = BalancedUniformLoops(s_max, total_steps=total)
            got = [d.sample(gen, k) for k in range(total)]
            assert all(1 <= s <= s_max for s in got)
            assert abs(sum(got) - total * (s_max + 1) / 2) <= 0.5


def test_default_loop_grid():
    assert default_loop_grid(4) == [1, 2, 4, 8]
    assert default_loop_grid(12) == [1, 2, 4, 8, 12, 16, 24]


def test_paper_plan_matches_the_papers_deeper_baseline():
    plan = plan_compute_matched(load_compute_matched_config("paper"))
    assert plan.deeper_layers == 23 and plan.deeper_extra_layers_exact == pytest.approx(11.0)
    a, b, c = (plan.run(n) for n in ("mdm", "loopmdm", "deeper"))
    assert b.steps < a.steps and b.steps == c.steps
    for r in plan.runs:
        assert r.planned_flops == pytest.approx(plan.total_flops, rel=1e-4)


def test_plan_step_counts_follow_flops(tiny_cfg):
    cfg = ComputeMatchedConfig(run=tiny_cfg, baseline_steps=300)
    plan = plan_compute_matched(cfg)
    m = tiny_cfg.model
    pf = predicted_fraction(tiny_cfg.diffusion)  # the LM head runs only on masked positions
    assert 0.49 < pf < 0.51  # E_t[t] for the log-linear schedule
    f_a = train_flops_per_token(m, 1, predicted_fraction=pf)
    f_b = expected_train_flops_per_token(
        m, make_loop_distribution(tiny_cfg.diffusion), predicted_fraction=pf
    )
    assert plan.run("loopmdm").steps == round(300 * f_a / f_b)
    assert plan.deeper_layers == m.n_layers + (tiny_cfg.diffusion.s_max - 1) * m.n_m // 2


def test_fractional_depth_is_a_clear_error_naming_depth_and_mismatch(tiny_cfg):
    tiny_cfg.model.n_m, tiny_cfg.model.n_o = 1, 2  # (E[S]-1) * n_m = 1.5 extra layers at S_max = 4
    tiny_cfg.diffusion.s_max = 4
    cfg = ComputeMatchedConfig(run=tiny_cfg, baseline_steps=400, depth_tolerance=0.01)
    with pytest.raises(
        ConfigError, match=r"5\.50 layers .*closest integer depth [56] is [+-]\d+\.\d% off"
    ):
        plan_compute_matched(cfg)
    cfg.depth_tolerance = 0.2  # accepted: the residual mismatch is reported instead
    plan = plan_compute_matched(cfg)
    assert plan.deeper_layers in (5, 6) and 0.01 < abs(plan.deeper_per_step_mismatch) < 0.2


def test_too_few_steps_to_match_is_an_error(tiny_cfg):
    with pytest.raises(ConfigError, match="raise baseline_steps"):
        plan_compute_matched(ComputeMatchedConfig(run=tiny_cfg, baseline_steps=3))


def test_placements_keep_the_layer_count():
    cfg = load_compute_matched_config("laptop")
    m = cfg.run.model
    got = {p: place_loop(m, p, 2) for p in ("early", "early-middle", "middle", "late", "all")}
    assert [(x.n_h, x.n_m, x.n_o) for x in got.values()] == [
        (0, 2, 4),
        (1, 2, 3),
        (2, 2, 2),
        (4, 2, 0),
        (0, 6, 0),
    ]
    labels = [lbl for lbl, _ in ablation_variants(cfg)]
    # 5 placements + n_m in {1, 3} (n_m = 2 is early-middle)
    assert len(labels) == len(set(labels)) == 7
    with pytest.raises(ConfigError, match="unknown loop placement"):
        place_loop(m, "sideways", 2)


def test_yaml_config_overrides_and_rejects_unknown_keys(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("base: laptop\nbaseline_steps: 77\nrun:\n  model:\n    d_model: 64\n")
    cfg = load_compute_matched_config(f)
    assert cfg.baseline_steps == 77 and cfg.run.model.d_model == 64 and cfg.run.model.n_layers == 6
    f.write_text("baseline_stepz: 5\n")
    with pytest.raises(ConfigError, match="unknown config key 'baseline_stepz'"):
        load_compute_matched_config(f)
    with pytest.raises(ConfigError, match="neither a preset"):
        load_experiment_config(tmp_path / "nope.yaml", {"laptop": ComputeMatchedConfig}, "x")


# --------------------------------------------------------------------------- a very short real run


def test_three_runs_match_in_cumulative_flops(tiny_cfg, tmp_path):
    tiny_cfg.train.eval_batches = 1
    cfg = ComputeMatchedConfig(
        name="test",
        run=tiny_cfg,
        baseline_steps=40,
        n_evals=3,
        seeds=[0],
        final_eval_batches=1,
        eval_loops=[1, 3],
    )
    res = run_compute_matched(cfg, tmp_path / "out", log=lambda s: None)
    runs = res["per_seed"][0]["runs"]
    flops = [runs[n]["flops"] for n in ("mdm", "loopmdm", "deeper")]
    assert (max(flops) - min(flops)) / max(flops) < 0.02
    assert runs["loopmdm"]["steps"] < runs["mdm"]["steps"]
    assert runs["deeper"]["steps"] == runs["loopmdm"]["steps"]
    # every run logged a validation curve up to its final FLOPs
    for n in ("mdm", "loopmdm", "deeper"):
        assert (
            len(runs[n]["curve"]["nelbo"]) >= 3
            and runs[n]["curve"]["flops"][-1] == runs[n]["flops"]
        )
    assert set(runs["loopmdm"]["final"]) == {1, 3} and set(runs["mdm"]["final"]) == {1}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (
        saved["plan"]["deeper"]["n_layers"] == 6
        and saved["summary"]["flops_agreement"]["mean"] < 0.02
    )
    for name in ("loss_vs_flops.png", "nelbo_vs_loops.png", "summary.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # a second call reuses the finished runs instead of retraining them
    again = run_compute_matched(cfg, tmp_path / "out", log=lambda s: None)
    assert all(again["per_seed"][0]["runs"][n]["reused"] for n in ("mdm", "loopmdm", "deeper"))
    assert again["per_seed"][0]["runs"]["mdm"]["flops"] == runs["mdm"]["flops"]
    assert again["per_seed"][0]["runs"]["mdm"]["train_wall_s"] == pytest.approx(
        runs["mdm"]["train_wall_s"]
    )


# --------------------------------------------------------------------------- CLI


def test_cli_plan_paper_json(capsys):
    code, out, _ = cli(
        [
            "experiment",
            "compute-matched",
            "--config",
            "paper",
            "--out",
            "unused",
            "--plan",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    plan = json.loads(out)
    assert plan["deeper"]["n_layers"] == 23 and [r["name"] for r in plan["runs"]] == [
        "mdm",
        "loopmdm",
        "deeper",
    ]


def test_cli_unmatched_config_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(
        "run:\n  model: {n_m: 1, n_o: 4}\n  diffusion: {s_max: 4}\ndepth_tolerance: 0.01\n"
    )
    code, _, err = cli(
        ["experiment", "compute-matched", "--config", str(f), "--out", str(tmp_path), "--plan"],
        capsys,
    )
    assert code == 2 and err.startswith("error: cannot match") and "closest integer depth" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli(
        ["experiment", "ablation", "--config", "nope", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "neither a preset" in err
    code, _, err = cli(
        ["experiment", "compute-matched", "--out", str(tmp_path / "out"), "--seeds", "0,x"], capsys
    )
    assert code == 2 and "--seeds 'x' is not an integer" in err


def test_train_or_reuse_refuses_a_run_stopped_by_a_signal(tiny_cfg, tmp_path, monkeypatch):
    """A signal-stopped run (saved at its last step) must stop the experiment, not be evaluated as finished."""
    import loopmdm.experiments.common as common
    from loopmdm.errors import LoopMDMError
    from loopmdm.train.trainer import TrainResult

    monkeypatch.setattr(
        common, "train", lambda rc, run_dir, **kw: TrainResult(run_dir, 3, 1.0, None, 0.0, True)
    )
    with pytest.raises(
        LoopMDMError, match=r"stopped at step 3 of \d+ \(signal received\); run the same command"
    ):
        common.train_or_reuse(tiny_cfg, tmp_path / "run", log=lambda s: None)
