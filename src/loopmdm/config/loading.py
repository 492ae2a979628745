"""Building a run's configuration: preset (or a checkpoint's config) -> YAML file -> ``--set section.key=value``
overrides, then validated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import ConfigError
from ..model.fields import apply_dict
from .presets import preset
from .sections import RunConfig


def parse_override(item: str) -> dict[str, Any]:
    """``"model.d_model=512"`` -> ``{"model": {"d_model": 512}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(
            f"--set {item!r} must look like section.key=value, e.g. model.d_model=512"
        )
    key, raw = item.split("=", 1)
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = parse_yaml_value(raw)
    return out


def parse_yaml_value(raw: str) -> Any:
    """A command-line value read as YAML (``0.05`` -> float, ``[1,2]`` -> list, ``true``), the raw text when it
    is not valid YAML, None when empty."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def read_yaml_file(path: str | Path, what: str) -> dict:
    """A YAML file holding a mapping (empty file: ``{}``); one-line ``ConfigError`` naming ``what`` otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{what} {str(path)!r} {state}; pass a YAML file path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(
            f"{what} {str(path)!r} is not valid YAML ({type(e).__name__}); fix its syntax"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"{what} {str(path)!r} cannot be read ({e.strerror or e}); check its permissions"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping of settings")
    return data


def load_config(
    preset_name: str = "tiny",
    config_file: str | Path | None = None,
    overrides: list[str | dict] | None = None,
    base: Optional[RunConfig] = None,
) -> RunConfig:
    """Preset (or ``base``, e.g. a checkpoint's config) -> YAML file -> overrides, then validated. An override is
    a ``--set`` string ``section.key=value`` (the value read as YAML) or a nested dict applied as it is (values
    that must never pass through YAML: paths such as ``--data``)."""
    cfg = copy.deepcopy(base) if base is not None else preset(preset_name)
    if config_file is not None:
        apply_dict(cfg, read_yaml_file(config_file, "config file"))
    for item in overrides or []:
        apply_dict(cfg, copy.deepcopy(item) if isinstance(item, dict) else parse_override(item))
    return cfg.validate()
