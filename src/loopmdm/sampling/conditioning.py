"""The canvas a sampler starts from: which positions are given (prompt / template) and which are masked.

* unconditional: L mask tokens;
* prompt (prefix): ``[BOS] + encode(prompt)`` kept fixed, the rest of the window masked;
* infill template: a string with spans to fill marked ``[MASK:n]`` (n tokens) or ``[MASK]`` (one token),
  e.g. ``"def add(a, b):\\n    [MASK:12]\\n    return c"``; the text between markers is encoded and kept
  fixed (a BOS is put first, as every training document starts with one). The canvas is as long as the
  template, or ``length`` when that is longer (the tail is then generated too).

The number of tokens in a span is fixed by its marker: masked diffusion fills a given number of positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..data.answers import unknown_characters
from ..errors import ConfigError
from ..model.fields import check_int

SPAN = re.compile(r"\[MASK(?::(\d+))?\]")
MARKER = re.compile(
    r"\[MASK\b[^\]\[]*\]"
)  # anything that looks like a span marker, well formed or not


@dataclass
class Canvas:
    """x [N, L]: the start tokens (mask where to generate); free [N, L]: True at positions to generate."""

    x: torch.Tensor
    free: torch.Tensor


def check_text(text, what: str) -> str:
    """``text`` when it is a string of valid Unicode that encodes as UTF-8; otherwise a one-line ``ConfigError``.
    A shell passes bytes that are not UTF-8 (``$'\\xff'``) to Python as lone surrogates, which no tokenizer
    takes; the message names the first bad byte."""
    if not isinstance(text, str):
        raise ConfigError(f"the {what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = ord(text[e.start])
        byte = (
            f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"lone surrogate U+{ch:04X}"
        )
        raise ConfigError(
            f"the {what} is not valid UTF-8 text ({byte} at character {e.start}); pass UTF-8 "
            "text (convert it with iconv -t UTF-8, or fix the terminal's encoding)"
        ) from None
    return text


def check_known(text: str, tokenizer, what: str) -> str:
    """``text`` when a character-level tokenizer knows each of its characters; otherwise a one-line
    ``ConfigError`` naming them (they would become ``<unk>`` and vanish from the printed sample)."""
    unknown = unknown_characters(text, tokenizer)
    if unknown:
        raise ConfigError(
            f"the {what} has characters {unknown!r} that are not in the model's character vocabulary "
            "(built from its training file); remove them"
        )
    return text


def template_span_count(template: str, max_len: Optional[int] = None) -> int:
    """The number of positions the ``[MASK:n]`` spans of ``template`` ask for, counted from the markers alone
    (no list is built): more than ``max_len`` (the model window) is a one-line ``ConfigError``, so a template
    such as ``[MASK:99999999999]`` is refused before it costs any memory."""
    bad = next(
        (m.group(0) for m in MARKER.finditer(template) if not SPAN.fullmatch(m.group(0))), None
    )
    if (
        bad is not None
    ):  # it would be kept as literal text, the model asked to reproduce "[MASK:-1]"
        raise ConfigError(
            f"template marker {bad[:24]!r} is malformed; write [MASK:n] with n a whole number >= 1, or "
            "[MASK] for one token"
        )
    total = 0
    for m in SPAN.finditer(template):
        digits = m.group(1)
        if digits is not None and len(digits.lstrip("0")) > 12:
            n = None
        else:
            n = int(digits) if digits is not None else 1
        if n is not None and n < 1:
            raise ConfigError(
                f"template span {m.group(0)!r} must fill at least one token, e.g. [MASK:4]"
            )
        shown = m.group(0) if len(m.group(0)) <= 24 else m.group(0)[:20] + "...]"
        if n is None:
            raise ConfigError(
                f"template span {shown} asks for more tokens than any model has, longer than the "
                "model window; shorten the span"
            )
        if max_len is not None and total + n > max_len:
            raise ConfigError(
                f"the template's spans ask for {total + n} tokens (at {shown}), longer than the model "
                f"window of {max_len}; shorten the spans"
            )
        total += n
    return total


def parse_template(
    template: str, tokenizer, max_len: Optional[int] = None
) -> tuple[list[int], list[bool]]:
    """Token ids and a free flag per position for a template with ``[MASK:n]`` spans (mask id at free spots).
    ``max_len``: the model window; spans asking for more are refused before any list is built."""
    template_span_count(check_text(template, "template"), max_len)
    check_known(SPAN.sub("", template), tokenizer, "template")
    ids: list[int] = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    free: list[bool] = [False] * len(ids)
    pos, spans = 0, 0
    for m in SPAN.finditer(template):
        text = template[pos : m.start()]
        if text:
            piece = tokenizer.encode(text)
            ids += piece
            free += [False] * len(piece)
        n = int(m.group(1)) if m.group(1) is not None else 1
        if n < 1:
            raise ConfigError(
                f"template span {m.group(0)!r} must fill at least one token, e.g. [MASK:4]"
            )
        ids += [tokenizer.mask_id] * n
        free += [True] * n
        spans += 1
        pos = m.end()
    tail = template[pos:]
    if tail:
        piece = tokenizer.encode(tail)
        ids += piece
        free += [False] * len(piece)
    if spans == 0:
        raise ConfigError(
            "the infill template has no span to fill; mark one with [MASK:n] (n tokens) or [MASK]"
        )
    return ids, free


def build_canvas(
    tokenizer,
    num_samples: int,
    length: Optional[int],
    max_len: int,
    prompt: Optional[str] = None,
    template: Optional[str] = None,
    device: torch.device | str = "cpu",
    prompt_ids: Optional[Sequence[int]] = None,
) -> Canvas:
    """The start canvas for ``num_samples`` rows. ``length`` = total window L (prompt included), at most
    the model's ``max_len``; default: the whole window (or the template's length). ``prompt_ids``: a prompt
    given as token ids, used verbatim (no BOS added)."""
    check_int(num_samples, "num_samples")
    prompt = prompt or None
    if sum(v is not None for v in (prompt, template, prompt_ids)) > 1:
        raise ConfigError("pass at most one of: a prompt (prefix), prompt_ids, an infill template")
    if length is not None and check_int(length, "length") > max_len:
        raise ConfigError(
            f"length={length!r} must be an integer in 1..{max_len} (the model window)"
        )
    mask = tokenizer.mask_id
    if prompt is not None:
        check_known(check_text(prompt, "prompt"), tokenizer, "prompt")
    if template is not None:
        ids, free = parse_template(template, tokenizer, max_len)
        if len(ids) > max_len:
            raise ConfigError(
                f"the template is {len(ids)} tokens, longer than the model window {max_len}; shorten it"
            )
        L = max(length or 0, len(ids))
        if length is not None and length < len(ids):
            raise ConfigError(
                f"length={length} is shorter than the template ({len(ids)} tokens); raise it or omit it"
            )
        ids += [mask] * (L - len(ids))
        free += [True] * (L - len(free))
    else:
        L = length or max_len
        ids = []
        if prompt:
            ids = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(
                prompt
            )
        elif prompt_ids is not None:
            ids = [int(i) for i in prompt_ids]
            if any(not 0 <= i < tokenizer.vocab_size for i in ids):
                raise ConfigError(f"prompt_ids must be token ids in 0..{tokenizer.vocab_size - 1}")
        if ids:
            if len(ids) >= L:
                raise ConfigError(
                    f"the prompt is {len(ids)} tokens, not shorter than the window L={L}; "
                    "shorten it or raise length"
                )
        free = [False] * len(ids) + [True] * (L - len(ids))
        ids = ids + [mask] * (L - len(ids))
    if any(i == mask and not f for i, f in zip(ids, free)):
        from ..data.sudoku.dataset import (
            is_sudoku_tokenizer,  # lazy: the data package is not needed otherwise
        )

        if is_sudoku_tokenizer(tokenizer):
            raise ConfigError(
                "this is a Sudoku model (vocabulary <pad>, 1-9, <mask>): a prompt / template must be "
                "a board (cell digits 1-9, row by row), not text; to solve puzzles with blanks use "
                "`loopmdm eval --metric sudoku`"
            )
        raise ConfigError(
            "the prompt / template text contains the mask token itself; remove it or mark a span "
            "to fill with [MASK:n]"
        )
    x = torch.tensor(ids, dtype=torch.long, device=device).expand(num_samples, L).clone()  # [N, L]
    f = torch.tensor(free, dtype=torch.bool, device=device).expand(num_samples, L).clone()  # [N, L]
    return Canvas(x=x, free=f)
