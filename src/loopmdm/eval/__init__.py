"""Evaluation: the validation NELBO / perplexity bound at any S (``nelbo``), the same bound on another corpus
(``zeroshot``), generative perplexity under an autoregressive evaluator (``genppl``), Sudoku board accuracy over
steps x loops (``sudoku``) and the lm-evaluation-harness model (``lm_eval``, needs the [eval] extra)."""

from .nelbo import evaluate_nelbo, nelbo_sweep, paired_difference, rows_text_bytes

__all__ = ["evaluate_nelbo", "nelbo_sweep", "paired_difference", "rows_text_bytes"]
