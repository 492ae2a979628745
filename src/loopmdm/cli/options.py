"""Parsing helpers shared by subcommands (one-line errors on bad values)."""

from __future__ import annotations

from ..errors import ConfigError


def parse_loops(values: list[str]) -> list[int]:
    """``["1,2", "4"]`` -> ``[1, 2, 4]``; every S must be a positive integer."""
    out = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or int(part) < 1:
                raise ConfigError(f"--loops {part!r} is not a positive integer; pass S >= 1, e.g. --loops 1,4,8")
            out.append(int(part))
    if not out:
        raise ConfigError("--loops is empty; pass at least one S >= 1")
    return out
