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

    with mock.patch.object(sys, "argv", ["loopmdm", *map(str, argv)]), mock.patch.dict(os.environ, HF_HUB_OFFLINE="1"):
        with pytest.raises(SystemExit) as e:
            main()
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def t_free_model(tok, seed: int = 0) -> LoopMDM:
    """A random model whose prediction depends on x_t only (no time conditioning), with peaked logits."""
    torch.manual_seed(seed)
    m = LoopMDM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=32, n_heads=2, n_layers=4,
                            n_h=1, n_m=2, n_o=1, cond_dim=16, time_conditioning="none", tie_embeddings=False))
    with torch.no_grad():
        m.lm_head.weight.normal_(0.0, 0.5)
    return m.eval()
