"""Hugging Face Hub access for tokenizers, with clear errors when offline (``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import os

from .errors import DataError
from .tokenizer import TextTokenizer

MASK_TOKEN = "<|mask|>"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def tokenizer_from_hub(name: str, add_mask: bool = True) -> TextTokenizer:
    """Fetch ``name``'s tokenizer.json from the Hub. Tokenizers without a mask token (GPT-2) get ``<|mask|>``
    appended, as MDLM does, when ``add_mask`` is true."""
    if hub_offline():
        raise DataError(f"tokenizer {name!r} is neither a local path nor reachable: HF_HUB_OFFLINE=1; "
                        "pass a local tokenizer.json or folder, or unset HF_HUB_OFFLINE")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_pretrained(name)
    except Exception as e:  # network errors and 404s arrive as plain Exception
        raise DataError(f"could not fetch tokenizer {name!r} from the Hugging Face Hub "
                        f"({str(e).splitlines()[0][:100]}); check the name and network, or pass a local path") from None
    if add_mask and not any(tok.token_to_id(n) is not None for n in ("<mask>", "[MASK]", MASK_TOKEN)):
        tok.add_special_tokens([MASK_TOKEN])
    return TextTokenizer(tok)
