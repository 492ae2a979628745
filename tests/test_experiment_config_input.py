"""Bad experiment config files (``base: PRESET`` plus overrides) are one-line ConfigErrors naming the key, refused
when the config is loaded, before anything trains; the presets load as before."""

from __future__ import annotations

import pytest

from loopmdm.errors import ConfigError
from loopmdm.experiments import loop_scaling_config, reasoning_config
from loopmdm.experiments.compute_matched_config import load_compute_matched_config
from loopmdm.experiments.loop_scaling_config import load_loop_scaling_config
from loopmdm.experiments.reasoning_config import TaskSpec, load_reasoning_config


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def refused(load, path, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as e:
        load(path)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "load", [load_reasoning_config, load_loop_scaling_config, load_compute_matched_config]
)
def test_a_base_that_is_not_a_preset_name_is_refused(tmp_path, load):
    refused(load, write(tmp_path, "base: [laptop]\n"), r"base=\['laptop'\] is not a preset name")
    refused(
        load, write(tmp_path, "base: {laptop: 1}\n"), "base=.* is not a preset name; use one of"
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("seeds: 5", "seeds=5 must be a list of integers"),
        ("models: null", "models=None must be a list of strings"),
        ("candidates: [null]", r"candidates\[0\]=None must be a mapping"),
        ("seeds: [0, one]", r"seeds\[1\]='one' must be an integer"),
        ("tasks: [hello]", r"tasks\[0\]='hello' must be a mapping"),
        ("loops: 8", "loops=8 must be a list of integers"),
    ],
)
def test_list_fields_and_their_entries_are_checked(tmp_path, text, match):
    refused(load_reasoning_config, write(tmp_path, text + "\n"), match)


@pytest.mark.parametrize(
    "text, match",
    [
        ("n_evals: 0", "n_evals=0 must be an integer >= 1"),
        ("order: bogus", "order='bogus' is unknown; use one of .*margin"),
        ("calibration_t: -1", "calibration_t=-1 must be an integer >= 0"),
        ("calibration_steps: 0", "calibration_steps=0 must be an integer >= 1"),
        ("eval_batch_size: 0", "eval_batch_size=0 must be an integer >= 1"),
        ("warmup_frac: 5", r"warmup_frac=5.0 must be in \[0, 1\)"),
        ("policies: {bogus: {}}", "policies.bogus is not a loop policy; use one of .*converge"),
        ("policies: {converge: {thresh: 1}}", "policies.converge: unknown option 'thresh'"),
        ("policies: {converge: 3}", "policies.converge: loop policy options must be a dict"),
        ("s_max: 1000000000", r"s_max=1000000000 must be an integer in \[2, 1024\]"),
        ("s_max: 1", r"s_max=1 must be an integer in \[2, 1024\]"),
        ("seeds: [0, 0]", r"seeds=\[0, 0\] repeats a seed"),
        ("seeds: [-1]", "seeds entry=-1 must be an integer >= 0"),
    ],
)
def test_bad_reasoning_settings_are_refused_when_loaded(tmp_path, text, match):
    refused(load_reasoning_config, write(tmp_path, text + "\n"), match)


def test_tasks_from_yaml_become_task_specs(tmp_path):
    cfg = load_reasoning_config(
        write(
            tmp_path,
            "tasks:\n"
            "  - {name: sums, family: prefix, level_field: size, params: {kind: sum, n_train: 10}}\n",
        )
    )
    assert cfg.tasks == [TaskSpec("sums", "prefix", {"kind": "sum", "n_train": 10}, "size")]


@pytest.mark.parametrize(
    "task, match",
    [
        ("{family: prefix}", r"tasks\[0\]=.* has no 'name'; every entry needs name"),
        (
            "{name: x, family: bogus}",
            r"tasks\[0\].family='bogus' is unknown; use one of prefix, vars",
        ),
        ("{name: x, family: vars, level: 3}", r"unknown config key 'tasks\[0\].level'"),
        ("{name: x, family: prefix}", r"tasks\[0\].level_field='depth' .* set level_field: size"),
        ("{name: '../x', family: vars}", r"tasks\[0\].name='../x' must be a folder name"),
        ("{name: 5, family: vars}", r"tasks\[0\].name=5 must be a string"),
        ("{name: x, family: vars, calibration_level: one}", r"calibration_level='one' must be an"),
        ("null", r"tasks\[0\]=None must be a mapping"),
        (
            "{name: x, family: vars, calibration_level: -1}",
            r"calibration_level=-1 must be an integer >= 0",
        ),
        (
            "{name: x, family: vars, max_seq_len: 1}",
            r"tasks\[0\].max_seq_len=1 must be an integer >= 2",
        ),
    ],
)
def test_malformed_tasks_are_refused(tmp_path, task, match):
    refused(load_reasoning_config, write(tmp_path, f"tasks: [{task}]\n"), match)


def test_two_tasks_of_one_name_are_refused(tmp_path):
    text = "tasks: [{name: x, family: vars}, {name: x, family: vars}]\n"
    refused(load_reasoning_config, write(tmp_path, text), "give every task its own name")


def test_budgets_written_as_yaml_strings_are_numbers(tmp_path):
    # PyYAML reads 1.0e6 (no sign after the e) as a string
    cfg = load_loop_scaling_config(
        write(tmp_path, "budgets: [1.0e6, 2.0e6]\nseeds_per_budget: [1, [0, 2]]\n")
    )
    assert cfg.budgets == [1.0e6, 2.0e6] and all(type(b) is float for b in cfg.budgets)
    assert cfg.budget_seeds(1) == [0, 2]


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "budgets: [1.0e6, lots]\nseeds_per_budget: [1, 1]",
            r"budgets\[1\]='lots' must be a number",
        ),
        ("budgets: 1.0e6", "budgets=.* must be a list of numbers"),
        ("seeds: 5", "seeds=5 must be a list of integers"),
        ("seeds: [0, 0, 1, 2, 3]", "repeats a seed"),
        ("seeds_per_budget: 3", "seeds_per_budget=3 must be a list of integers or lists of"),
        (
            "seeds_per_budget: [1, [0, x], 2, 2]",
            r"seeds_per_budget\[1\]\[1\]='x' must be an integer",
        ),
    ],
)
def test_bad_loop_scaling_settings_are_refused_when_loaded(tmp_path, text, match):
    refused(load_loop_scaling_config, write(tmp_path, text + "\n"), match)


@pytest.mark.parametrize(
    "module, name",
    [
        (reasoning_config, "laptop"),
        (reasoning_config, "laptop-bell"),
        (loop_scaling_config, "laptop"),
    ],
)
def test_the_presets_validate_unchanged(module, name):
    load = getattr(module, "load_reasoning_config", None) or module.load_loop_scaling_config
    cfg = load(name)
    assert cfg == module.PRESETS[name]()  # validating changed nothing
    assert cfg.validate() == cfg


def test_compute_matched_seeds_are_distinct(tmp_path):
    refused(load_compute_matched_config, write(tmp_path, "seeds: [0, 0]\n"), "repeats a seed")


def test_a_grid_that_repeats_a_value_is_refused():
    """A repeated T or S in a grid scored its cells twice (found by review: pooled n doubled)."""
    from loopmdm.model.fields import check_int_list, parse_int_list

    with pytest.raises(
        ConfigError, match=r"steps=\[1, 2, 1\] repeats a value; give each value once"
    ):
        check_int_list([1, 2, 1], "steps", 0)
    with pytest.raises(
        ConfigError, match=r"--loops repeats a value \(1,4,4\); pass e.g. --loops 1,4,8"
    ):
        parse_int_list(["1,4", "4"], "--loops")
    assert parse_int_list(["1,4", "8"], "--loops") == [1, 4, 8]


@pytest.mark.parametrize("override", ["deep_supervision: all", "loop_curriculum_steps: 200"])
def test_compute_matched_studies_refuse_what_their_flop_plan_does_not_count(tmp_path, override):
    """Deep supervision adds a tail pass per supervised loop and a curriculum draws smaller S early: the plan
    counted neither, so 'equal FLOPs' runs differed by up to 37% (found by review)."""
    text = f"run:\n  diffusion:\n    {override}\n"
    for load in (load_compute_matched_config, load_loop_scaling_config):
        refused(load, write(tmp_path, text), "the compute-matched plan does not count")
