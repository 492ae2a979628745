"""Tokenizers: a byte-level BPE trained with HF ``tokenizers``, or any saved ``tokenizer.json``.

Special tokens (mask / BOS / EOS / PAD) are looked up by name in the tokenizer, never hard-coded ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import ConfigError, DataError

SPECIALS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "mask": "<mask>"}
# Names other tokenizers use for the same roles (BERT, GPT-2, LLaDA-style), tried in order.
ALIASES = {
    "pad": ["<pad>", "[PAD]", "<|pad|>", "<|endoftext|>"],
    "bos": ["<bos>", "<s>", "[CLS]", "<|startoftext|>", "<|endoftext|>"],
    "eos": ["<eos>", "</s>", "[SEP]", "<|endoftext|>"],
    "mask": ["<mask>", "[MASK]", "<|mask|>", "<|mdm_mask|>"],
}


class TextTokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` that knows its special-token ids."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        # Text that spells a special token ("<mask>" in a docstring) is ordinary text, never the mask id.
        self.tok.encode_special_tokens = True
        self.mask_id = self._find("mask", required=True)
        self.pad_id = self._find("pad")
        self.bos_id = self._find("bos")
        self.eos_id = self._find("eos")

    def _find(self, role: str, required: bool = False) -> Optional[int]:
        for name in ALIASES[role]:
            idx = self.tok.token_to_id(name)
            if idx is not None:
                return idx
        if required:
            raise ConfigError(
                f"the tokenizer has no {role} token (looked for {', '.join(ALIASES[role])}); add one, e.g. "
                f"tok.add_special_tokens(['{SPECIALS[role]}']) and save it again"
            )
        return None

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def special_ids(self) -> set[int]:
        return {i for i in (self.mask_id, self.pad_id, self.bos_id, self.eos_id) if i is not None}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            from ..fileio import path_kind

            kind = path_kind(path)
            raise DataError(
                f"tokenizer file {str(path)!r} "
                + ("does not exist" if kind is None else f"is {kind}, not a file")
                + "; pass a tokenizer.json or a folder with one"
            )
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exception on malformed JSON
            raise DataError(
                f"tokenizer file {str(path)!r} cannot be read ({str(e).splitlines()[0][:120]}); "
                "replace it with a valid tokenizer.json"
            ) from None


def train_bpe(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenizer) with the four special tokens."""
    if vocab_size < 300:
        raise ConfigError(
            f"model.vocab_size={vocab_size} is too small for byte-level BPE; use >= 300 (256 bytes + merges)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return TextTokenizer(tok)
