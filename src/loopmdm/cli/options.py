"""Parsing helpers shared by subcommands (one-line errors on bad values)."""

from __future__ import annotations

from typing import Optional

from ..config import parse_yaml_value
from ..errors import ConfigError
from ..model.fields import parse_int_list
from ..sampling.policies import check_loops


def parse_loops(values: list[str]) -> list[int]:
    """``["1,2", "4"]`` -> ``[1, 2, 4]``; every S must be an integer in [1, MAX_LOOPS]."""
    return [check_loops(s, "--loops") for s in parse_int_list(values, "--loops")]


def parse_names(value: Optional[str], flag: str, example: str) -> Optional[list[str]]:
    """``"a, b"`` -> ``["a", "b"]``; None when the option was not given; a value with no name (``","``) is an
    error, not a run that silently does nothing."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ConfigError(f"{flag} {value!r} names nothing; pass e.g. {flag} {example}")
    return names


def check_sampling_precision(precision: str) -> str:
    """``--precision`` of ``sample`` / ``eval`` / ``serve``: fp32 or bf16 (autocast of the network)."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision {precision!r} is unknown; use fp32 or bf16")
    return precision


def parse_options(items: list[str], flag: str) -> dict:
    """``["threshold=0.05", "criterion=kl"]`` -> ``{"threshold": 0.05, "criterion": "kl"}`` (values as YAML)."""
    out = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(
                f"{flag} {item!r} must look like name=value, e.g. {flag} threshold=0.05"
            )
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_yaml_value(raw)
    return out
