"""The loop-scaling study: the budget plan (equal FLOPs within 2% at every budget), its bad inputs, the trend fit
and its zero crossing on synthetic points, and an end-to-end tiny study that resumes from its run folders."""

import copy
import json
import math

import numpy as np
import pytest

from loopmdm.errors import ConfigError
from loopmdm.experiments.loop_scaling import (LoopScalingConfig, budget_plans, fit_trend, load_loop_scaling_config,
                                              parse_shard, run_list, run_loop_scaling)


def study(tiny_cfg, **kw) -> LoopScalingConfig:
    cfg = LoopScalingConfig(name="test", run=copy.deepcopy(tiny_cfg), seeds=[0, 1], n_evals=2, final_eval_batches=1,
                            budgets=[3e9, 6e9], seeds_per_budget=[1, 2], bootstrap=200)
    cfg.run.train.eval_batches = 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg.validate()


def test_every_budget_is_matched_within_two_percent():
    cfg = load_loop_scaling_config("laptop")
    plans = budget_plans(cfg)
    assert len(plans) == 4 and cfg.budgets[-1] / cfg.budgets[0] >= 30
    for budget, plan in zip(cfg.budgets, plans):
        flops = {r.name: r.planned_flops for r in plan.runs}
        assert abs(flops["mdm"] - budget) / budget < 0.02
        assert (max(flops.values()) - min(flops.values())) / max(flops.values()) < 0.02
        steps = {r.name: r.steps for r in plan.runs}
        assert steps["mdm"] > steps["loopmdm"] == steps["deeper"]
    runs = run_list(cfg, plans)
    assert len(runs) == 3 * sum(cfg.seeds_per_budget)


def test_bad_budgets_are_one_line_errors(tiny_cfg):
    with pytest.raises(ConfigError, match="must be increasing"):
        study(tiny_cfg, budgets=[1e9, 5e8])
    with pytest.raises(ConfigError, match="one per budget"):
        study(tiny_cfg, seeds_per_budget=[1])
    with pytest.raises(ConfigError, match=r"budget 1e\+06 FLOPs cannot be matched: .*raise baseline_steps"):
        budget_plans(study(tiny_cfg, budgets=[1e6, 6e9]))
    with pytest.raises(ConfigError, match="K/N"):
        parse_shard("half")


def test_trend_fit_recovers_a_known_line_and_its_crossing():
    budgets = [1e12, 1e13, 1e14, 1e15]
    rng = np.random.default_rng(0)
    rows = [{"budget": b, "per_seed": {s: {"gain_equal_flops": -0.3 + 0.1 * (math.log10(b) - 12)
                                          + rng.normal(0, 0.005)} for s in (0, 1)}} for b in budgets]
    trend = fit_trend(rows, bootstrap=500)
    assert trend["slope_per_decade"] == pytest.approx(0.1, abs=0.01)
    assert trend["crossing_budget"] == pytest.approx(1e15, rel=0.3)  # -0.3 + 0.1 * 3 = 0 at 1e15
    lo, hi = trend["crossing_interval_68"]
    assert lo < trend["crossing_budget"] < hi
    flat = [{"budget": b, "per_seed": {0: {"gain_equal_flops": -0.3 - 0.01 * i}}} for i, b in enumerate(budgets)]
    assert fit_trend(flat, bootstrap=100)["crossing_budget"] is None  # heading away from zero: no crossing


def test_a_tiny_study_runs_resumes_and_refuses_a_changed_config(tiny_cfg, tmp_path):
    cfg = study(tiny_cfg)
    out = tmp_path / "study"
    assert run_loop_scaling(cfg, out, shard="0/2", log=lambda s: None) is None  # half the runs, no report
    res = run_loop_scaling(cfg, out, log=lambda s: None)  # the other half, then the report
    rows = res["rows"]
    assert [r["budget"] for r in rows] == cfg.budgets and [len(r["seeds"]) for r in rows] == [1, 2]
    for r in rows:
        for p in r["per_seed"].values():
            assert set(p["loopmdm"]) == {1, 3, 6} and math.isfinite(p["gain_equal_flops"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["trend"]["points"] == 3 and (out / "loop_gain.png").is_file() and (out / "summary.md").is_file()
    again = run_loop_scaling(cfg, out, log=lambda s: None)  # everything reused: same numbers
    assert again["rows"][1]["gain_equal_flops"]["mean"] == res["rows"][1]["gain_equal_flops"]["mean"]
    changed = copy.deepcopy(cfg)
    changed.run.train.lr *= 2
    with pytest.raises(ConfigError, match="holds a run with another config .*train.lr"):
        run_loop_scaling(changed, out, log=lambda s: None)
