"""The benchmark scripts' smoke configurations stay valid as presets change (``--quick`` runs are not part of
the test suite: they train models), and a resumable benchmark reads back only rows written under its key."""

import importlib.util
import sys
from pathlib import Path

import pytest

from loopmdm.config import load_config

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def bench_module(name: str):
    if str(BENCH) not in sys.path:  # as when the script runs: its folder first (for bench_common)
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, attrs",
    [
        ("bench_fast_sampling", [("QUICK_TINY",), ("QUICK_TINY", "AR")]),
        ("bench_sampling", [("QUICK_TINY",)]),
    ],
)
def test_quick_configs_of_the_sampling_benchmarks_are_valid(name, attrs):
    module = bench_module(name)
    for combo in attrs:
        overrides = [o for a in combo for o in getattr(module, a)]
        cfg = load_config("tiny", None, ["train.precision=fp32", "train.device=cpu"] + overrides)
        cfg.model.validate()


def test_fast_sampling_rows_are_reused_only_under_the_same_key(tmp_path):
    module = bench_module("bench_fast_sampling")
    calls = []

    def make():
        calls.append(1)
        return {"flops": 1.0 * len(calls)}

    path = tmp_path / "rows" / "L64_plain.json"
    key = {"checkpoint": "run/step_1", "L": 64, "num_samples": 8, "seed": 0}
    first = module.cached_row(path, key, make)
    again = module.cached_row(path, key, make)
    assert len(calls) == 1 and again == {**first, "resumed": True}
    # another key: computed again, and rewritten
    other = module.cached_row(path, {**key, "seed": 1}, make)
    assert len(calls) == 2 and other == {"flops": 2.0}


def test_fast_sampling_workers_split_the_configurations_by_label():
    module = bench_module("bench_fast_sampling")
    configs = module.text_configs(32, [0.9])
    labels = {c[0] for c in configs}
    assert module.select_configs(configs, None) == labels | {"exactness"}
    assert module.select_configs(configs, "exactness, semi_ar,semi_ar+dual") == {
        "exactness",
        "semi_ar",
        "semi_ar+dual",
    }
    with pytest.raises(SystemExit, match="semi_ar\\+triple unknown; choose from confidence,"):
        module.select_configs(configs, "semi_ar,semi_ar+triple")
    with pytest.raises(
        SystemExit, match="semi_ar\\+dual need their plain sampler in the list too \\(semi_ar\\)"
    ):
        module.select_configs(configs, "confidence,semi_ar+dual")
