"""Helpers several test files share (imported as ``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import sys
from unittest import mock

import pytest
import torch

from loopmdm.model import LoopMDM, ModelConfig


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``loopmdm ARGV`` in-process through the real entry point: (exit code, stdout, stderr)."""
    from loopmdm.cli import main

    with (
        mock.patch.object(sys, "argv", ["loopmdm", *map(str, argv)]),
        mock.patch.dict(os.environ, HF_HUB_OFFLINE="1"),
    ):
        with pytest.raises(SystemExit) as e:
            main()
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def t_free_model(tok, seed: int = 0) -> LoopMDM:
    """A random model whose prediction depends on x_t only (no time conditioning), with peaked logits."""
    torch.manual_seed(seed)
    m = LoopMDM(
        ModelConfig(
            vocab_size=tok.vocab_size,
            max_seq_len=32,
            d_model=32,
            n_heads=2,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            cond_dim=16,
            time_conditioning="none",
            tie_embeddings=False,
        )
    )
    with torch.no_grad():
        m.lm_head.weight.normal_(0.0, 0.5)
    return m.eval()


def two_solution_pair(solution: str) -> tuple[str, str]:
    """A puzzle with exactly two solutions, and the second one: ``solution`` with the corners of a rectangle that
    reads a b / b a (two rows of one band, two columns of different stacks) blanked; swapping a and b there
    gives another grid that obeys every rule and keeps every given."""
    for r1 in range(9):
        for r2 in range(r1 + 1, (r1 // 3 + 1) * 3):
            for c1 in range(9):
                for c2 in range((c1 // 3 + 1) * 3, 9):
                    cells = [9 * r1 + c1, 9 * r1 + c2, 9 * r2 + c1, 9 * r2 + c2]
                    a, b, c, d = (solution[i] for i in cells)
                    if a == d and b == c:
                        puzzle = "".join("0" if i in cells else ch for i, ch in enumerate(solution))
                        other = list(solution)
                        for i, ch in zip(cells, (b, a, d, c)):
                            other[i] = ch
                        return puzzle, "".join(other)
    raise AssertionError("no a b / b a rectangle in this grid")
