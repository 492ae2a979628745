"""Typed values with one-line errors: the one place where integers, integer lists and config fields are checked.

* ``check_int`` / ``check_int_list`` / ``parse_int_list``: a loop count S, a step count T, a list of S from the
  command line (``"1,2,4"``): bools, floats and words are refused with the name of the value and the fix;
* ``coerce`` / ``check_types``: a value of a config dataclass field converted to the field's declared type
  (``"3e-4"`` -> 0.0003, ``2.0`` -> 2, a list -> a tuple, every entry of a list, a mapping -> a section), or
  refused;
* ``check_inputs``: the token ids x_t and times t handed to the model.

It lives in the backbone package because ``ModelConfig`` needs it and ``loopmdm/model/`` is exported verbatim
as Hugging Face remote code (torch, the standard library and its own files only).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Iterable, Optional

import torch

from .errors import ConfigError, InputError

# --------------------------------------------------------------------------- integers


def is_int(value: Any) -> bool:
    """True for ints (and numpy integers), False for bools, floats and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, low: int = 1, hint: str = "") -> int:
    """``value`` as an int >= ``low``; otherwise ``ConfigError("{name}={value!r} must be an integer >= low{hint}")``."""
    if not is_int(value) or value < low:
        raise ConfigError(f"{name}={short(value)} must be an integer >= {low}{hint}")
    return int(value)


def check_number(
    value: Any,
    name: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    hint: str = "",
) -> float:
    """``value`` as a finite float within the bounds (``gt`` / ``ge`` below, ``le`` above); bools and words are
    refused with ``ConfigError("{name}={value!r} must be a number ...{hint}")``."""
    low = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else None
    if low and le is not None:
        cond = f"in {low}, {le}]"
    else:
        cond = (
            f"> {gt}"
            if gt is not None
            else f">= {ge}"
            if ge is not None
            else f"<= {le}"
            if le is not None
            else ""
        )
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = (
        ok
        and (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (le is None or value <= le)
    )
    if not ok:
        raise ConfigError(
            f"{name}={short(value)} must be a number {cond}{hint}".replace("number  ", "number ")
        )
    return float(value)


def check_loops(value: Any, name: str = "loops") -> int:
    """A loop count S >= 1 (the mid block runs S times)."""
    return check_int(value, name, 1, " (the loop count S)")


def check_int_list(
    values: Iterable[Any], name: str, low: int = 1, what: str = "a value", fix: str = ""
) -> list[int]:
    """A non-empty list of distinct integers >= ``low`` (a repeated entry of a grid would count its cell twice);
    ``what`` / ``fix``: the words of the error for a repeat."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"{name}={short(values)} must be a list of integers >= {low}")
    out = [check_int(v, f"{name} entry", low) for v in values]
    if not out:
        raise ConfigError(f"{name} is empty; pass at least one integer >= {low}")
    if len(set(out)) != len(out):
        raise ConfigError(
            f"{name}={short(values)} repeats {what}; {fix or f'give each value once (integers >= {low})'}"
        )
    return out


def check_seeds(values: Any, name: str = "seeds") -> list[int]:
    """A non-empty list of distinct integer seeds >= 0 (a repeated seed would train the same run twice)."""
    return check_int_list(values, name, 0, "a seed", "give distinct seeds >= 0")


def parse_int_list(
    values: Iterable[str], flag: str, low: int = 1, example: str = "1,4,8"
) -> list[int]:
    """Command-line integers, repeated and / or comma-separated: ``["1,2", "4"]`` -> ``[1, 2, 4]``."""
    out = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            digits = part.removeprefix("-")
            # "²".isdigit(), but int("²") fails
            if not (digits.isascii() and digits.isdigit()) or int(part) < low:
                what = "a positive integer" if low == 1 else f"an integer >= {low}"
                raise ConfigError(f"{flag} {part!r} is not {what}; pass e.g. {flag} {example}")
            out.append(int(part))
    if not out:
        raise ConfigError(f"{flag} is empty; pass e.g. {flag} {example}")
    if len(set(out)) != len(out):
        raise ConfigError(
            f"{flag} repeats a value ({','.join(map(str, out))}); pass e.g. {flag} {example}"
        )
    return out


# --------------------------------------------------------------------------- config fields


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (errors stay one readable line)."""
    r = repr(value).replace("\n", "\\n")
    return r if len(r) <= limit else r[: limit - 3] + "..."


def parse_number(text: str) -> Any:
    """``"3e-4"`` -> 0.0003, ``"12"`` -> 12; anything else is returned unchanged (and refused by the caller)."""
    t = text.strip().replace("_", "")
    for conv in (int, float):
        try:
            return conv(t)
        except (ValueError, OverflowError):
            continue
    return text


def field_type(obj: Any, key: str) -> Any:
    return typing.get_type_hints(type(obj))[key]


def coerce(path: str, value: Any, tp: Any) -> Any:
    """Check / convert a value to the field's declared type ``tp``; one-line ``ConfigError`` otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return coerce_union(path, value, [a for a in args if a is not type(None)])
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={short(value)} must be a list of {plural(args)}")
        return [coerce(f"{path}[{i}]", v, args[0]) if args else v for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}={short(value)} must be a list of {len(args)} numbers")
        return tuple(coerce(path, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}={short(value)} must be true or false")
    if tp in (int, float) and isinstance(value, str):
        value = parse_number(value)  # YAML 1.1 reads 3e-4 as a string
    if tp is int:
        if is_int(value):
            return int(value)
        if (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and float(value).is_integer()
        ):
            return int(value)
        raise ConfigError(f"{path}={short(value)} must be an integer")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{path}={short(value)} must be a number")
        try:
            out = float(value)
        except OverflowError:
            out = math.inf
        if not math.isfinite(out):
            raise ConfigError(f"{path}={short(value)} must be a finite number")
        return out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):  # e.g. one task of a list of tasks, from YAML
            return build_section(path, value, tp)
        if not isinstance(value, tp):
            raise ConfigError(
                f"{path}={short(value)} must be a mapping (a section of {tp.__name__} settings)"
            )
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={short(value)} must be a string")
        if "\x00" in value:
            raise ConfigError(f"{path}={short(value)} contains a NUL character; remove it")
        return value
    if tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}={short(value)} must be a mapping with string keys")
        return value
    return value


def coerce_union(path: str, value: Any, options: list) -> Any:
    """``value`` as the first of ``options`` (the types of a ``Union``) that takes it; a list tries the list types
    first, so that a bad entry is named by its own error."""
    if isinstance(value, (list, tuple)):
        options = sorted(options, key=lambda a: typing.get_origin(a) not in (list, tuple))
    errors = []
    for option in options:
        try:
            return coerce(path, value, option)
        except ConfigError as e:
            errors.append(e)
    raise errors[0]


def plural(args: tuple) -> str:
    """What a list of the type ``args[0]`` holds, in words (for errors): ``integers``, ``lists of numbers``..."""
    if not args:
        return "values"
    tp = args[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(plural((a,)) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return f"lists of {plural(typing.get_args(tp))}"
    if dataclasses.is_dataclass(tp):
        return f"mappings of {tp.__name__} settings"
    names = {int: "integers", float: "numbers", str: "strings", bool: "true / false values"}
    return names.get(tp, "mappings" if tp is dict else "values")


def build_section(path: str, value: dict, tp: Any) -> Any:
    """A config dataclass ``tp`` from a mapping: its required fields must be there, unknown keys are refused and
    every value is converted to its field's type (as ``apply_dict`` does)."""
    required = [
        f.name
        for f in dataclasses.fields(tp)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in value]
    if missing:
        raise ConfigError(
            f"{path}={short(value)} has no {missing[0]!r}; every entry needs {', '.join(required)}"
        )
    obj = tp(**{name: value[name] for name in required})
    apply_dict(obj, value, prefix=f"{path}.")
    return obj


def check_types(obj: Any, section: str) -> None:
    """Re-check every field of a config section against its declared type (a config built in
    Python, not from YAML / ``--set``, may hold a string where a number belongs); numbers are normalised
    (1 -> 1.0, 2.0 -> 2, list -> tuple). ``section`` prefixes the field names in errors (``model.d_model``)."""
    for f in dataclasses.fields(obj):
        setattr(
            obj,
            f.name,
            coerce(f"{section}.{f.name}", getattr(obj, f.name), field_type(obj, f.name)),
        )


def apply_dict(cfg: Any, d: dict[str, Any], prefix: str = "") -> None:
    """Recursively set dataclass fields from a nested dict (YAML, JSON, ``--set``), converting each value to its
    field's type and rejecting unknown keys with the valid names."""
    if not isinstance(d, dict):
        raise ConfigError(
            f"config section {prefix or '<root>'!r} must be a mapping, got {type(d).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {', '.join(fields)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, prefix=f"{path}.")
        # a mapping field: keys are merged
        elif isinstance(current, dict) and isinstance(value, dict):
            setattr(cfg, key, coerce(path, {**current, **value}, field_type(cfg, key)))
        else:
            setattr(cfg, key, coerce(path, value, field_type(cfg, key)))


def at_least(obj: Any, section: str, low: int, *names: str) -> None:
    """Every named field of ``obj`` is >= ``low``."""
    for name in names:
        v = getattr(obj, name)
        if v < low:
            raise ConfigError(f"{section}.{name}={short(v)} must be >= {low}")


def at_most(obj: Any, section: str, **limits: int) -> None:
    """Sanity upper bounds that catch typos (an extra zero) before they become an out-of-memory crash."""
    for name, limit in limits.items():
        v = getattr(obj, name)
        if v > limit:
            raise ConfigError(
                f"{section}.{name}={short(v)} is larger than the supported {limit}; check for a typo"
            )


# --------------------------------------------------------------------------- model inputs


def check_inputs(
    x_t: torch.Tensor, t: Optional[torch.Tensor], vocab_size: int, values: bool = True
) -> None:
    """One-line ``InputError``s for token ids x_t that are not an integer [B, T] tensor and times t that are not
    a scalar or [B]; with ``values`` (tensors on the CPU, where reading them back costs no device sync) also
    ids outside [0, vocab_size) and t outside [0, 1] or not finite."""
    if (
        not isinstance(x_t, torch.Tensor)
        or x_t.is_floating_point()
        or x_t.is_complex()
        or x_t.dtype == torch.bool
    ):
        raise InputError(
            f"x_t must be a tensor of integer token ids, got {getattr(x_t, 'dtype', type(x_t))}; "
            "pass e.g. torch.tensor(ids, dtype=torch.long)"
        )
    if x_t.dim() != 2:
        raise InputError(
            f"x_t must be [batch, length] token ids, got shape {list(x_t.shape)}; add a batch "
            "dimension with x_t[None]"
        )
    if t is not None and (
        not isinstance(t, torch.Tensor)
        or t.dim() > 1
        or (t.dim() == 1 and t.shape[0] != x_t.shape[0])
    ):
        raise InputError(
            f"t must be a scalar or one time per row [{x_t.shape[0]}], got "
            f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
        )
    if not values or x_t.numel() == 0:
        return
    ids = x_t.detach().numpy()  # read through NumPy: host values, never a device sync
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise InputError(
            f"token ids must be in [0, {vocab_size}) (the model's vocabulary), got ids from {lo} to "
            f"{hi}; encode the text with the checkpoint's tokenizer"
        )
    times = None if t is None or t.device.type != "cpu" else t.detach().double().numpy()
    if times is not None and not ((times >= 0) & (times <= 1)).all():
        raise InputError(
            "t must hold diffusion times in [0, 1] (no NaN); pass t = 1 for an all-masked sequence"
        )
