"""Request options of ``POST /api/generate`` and the server-side limits they are checked against.

Range checks that need no model live here (pydantic); checks that need the tokenizer or the model window
(prompt longer than the window, malformed infill template, unknown sampler or loop policy) are left to
``loopmdm.sampling.generate``, whose ``ConfigError`` the app turns into a one-line 422 answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError
from ..model.fields import short

OptionValue = float | int | bool | str | None


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for: T steps, samples N, loops S of one network call (``loops`` / ``s_max`` of the
    loop policy; a request is cancelled between denoising steps only, so S bounds how long one step runs) and
    wall time (seconds) before it is cancelled."""

    timeout_s: float = 60.0
    max_steps: int = 1024
    max_samples: int = 4
    max_loops: int = 64

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout {self.timeout_s} must be > 0 seconds")
        if self.max_steps < 1 or self.max_samples < 1 or self.max_loops < 1:
            raise ConfigError("max_steps, max_samples and max_loops must be >= 1")


class GenerateRequest(BaseModel):
    """Options of one generation: the arguments of ``loopmdm.sampling.generate`` that a page may set."""

    model_config = ConfigDict(extra="forbid")

    prompt: Optional[str] = Field(
        None, description="Prefix kept fixed while the rest is generated."
    )
    template: Optional[str] = Field(None, description="Infill template (mask slots are generated).")
    num_samples: int = Field(1, ge=1)
    length: Optional[int] = Field(
        None, ge=1, description="Tokens L to generate (default: the model window)."
    )
    steps: int = Field(32, ge=1, description="Denoising steps T.")
    sampler: str = Field("ancestral", min_length=1)
    sampler_options: dict[str, OptionValue] = Field(default_factory=dict)
    policy: str = Field(
        "fixed", min_length=1, description="Loop policy: how many loops S each step runs."
    )
    policy_options: dict[str, OptionValue] = Field(default_factory=dict)
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_k: Optional[int] = Field(None, ge=1)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**63)
    stop_at_eos: bool = False

    @field_validator("prompt", "template")
    @classmethod
    def _empty_is_none(cls, v: Optional[str]) -> Optional[str]:
        return v if v else None

    def check_limits(self, limits: ServerLimits) -> None:
        """Raise ``ConfigError`` when the request asks for more than this server allows."""
        if self.steps > limits.max_steps:
            raise ConfigError(
                f"steps={self.steps} exceeds this server's limit of {limits.max_steps}"
            )
        if self.num_samples > limits.max_samples:
            raise ConfigError(
                f"num_samples={self.num_samples} exceeds this server's limit of {limits.max_samples}"
            )
        for key in ("loops", "s_max"):
            value = self.policy_options.get(key)
            if isinstance(value, (int, float)) and value > limits.max_loops:
                raise ConfigError(
                    f"policy_options.{key}={value} exceeds this server's limit of {limits.max_loops} loops"
                )
        if self.prompt and self.template:
            raise ConfigError("give either a prompt or an infill template, not both")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate(model, tokenizer, **kwargs)`` (trajectory recording on)."""
        kw = self.model_dump()
        kw["sampler_options"] = dict(self.sampler_options) or None
        kw["policy_options"] = dict(self.policy_options) or None
        kw["record_trajectory"] = True
        return kw


PHRASES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "extra_forbidden": "is not an option of this API",
    "string_too_short": "must not be empty",
}


def describe_validation_error(errors: list[dict[str, Any]]) -> str:
    """One line from pydantic's error list, e.g. ``steps must be >= 1 (got 0)``."""
    if not errors:
        return "invalid request"
    e = errors[0]
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({(e.get('ctx') or {}).get('error', 'cannot parse it')})"
    loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
    if _option_value_errors(
        errors
    ):  # one error per member of OptionValue: say what the value may be
        where = ".".join(str(p) for p in e["loc"][:-1] if p != "body")
        return f"{where} must be a number, true / false, a string or null (got {short(e.get('input'))})"
    phrase = PHRASES.get(str(e.get("type")))
    try:
        msg = (
            phrase.format(**(e.get("ctx") or {}))
            if phrase
            else str(e.get("msg", "is invalid")).rstrip(".")
        )
    except (KeyError, IndexError):
        msg = str(e.get("msg", "is invalid")).rstrip(".")
    got = e.get("input")
    tail = (
        f" (got {got!r})"
        if e.get("type") != "missing" and not isinstance(got, (dict, list))
        else ""
    )
    more = f"; and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    sep = " " if phrase else ": "
    return f"{loc}{sep}{msg}{tail}{more}"


def _option_value_errors(errors: list[dict[str, Any]]) -> bool:
    """pydantic's errors for one value that none of ``OptionValue``'s types takes (a list, a mapping): one per
    type, each tagged with the type's name."""
    locs = [tuple(err.get("loc", ())) for err in errors]
    return (
        len(errors) > 1
        and all(loc and str(loc[-1]) in OPTION_TYPES for loc in locs)
        and len({loc[:-1] for loc in locs}) == 1
    )


OPTION_TYPES = {"float", "int", "bool", "str", "none"}
