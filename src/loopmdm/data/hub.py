"""Tokenizers from the Hugging Face Hub or a local folder, with clear errors offline (``HF_HUB_OFFLINE=1``).

Any Hugging Face tokenizer works, by Hub id (``bert-base-uncased``, ``gpt2``, ``org/name``) or local path (a
``tokenizer.json``, or a folder holding one, or a folder of vocabulary files that transformers converts).
A masked diffusion model needs a mask token. Tokenizers that have one (BERT's ``[MASK]``, RoBERTa's
``<mask>``) are used as they are; the GPT-2 family gets ``<|mask|>`` appended, exactly as MDLM does for
OpenWebText (vocabulary 50257 -> 50258); any other tokenizer without one is refused with the recipe to add it.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer

from ..errors import DataError, install_hint
from .tokenizer import ALIASES, TextTokenizer

MASK_TOKEN = "<|mask|>"
# Tokenizers that MDLM extends with a mask token (GPT-2 has none); matched on the last path component.
ADD_MASK_FAMILIES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or transformers' ``TRANSFORMERS_OFFLINE``) forbids network access."""
    return any(
        os.environ.get(v, "0").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def adds_mask_token(name: str) -> bool:
    """True for the GPT-2 family, where a ``<|mask|>`` token is appended (MDLM's convention)."""
    return Path(name.rstrip("/")).name in ADD_MASK_FAMILIES


def tokenizer_from_hub(name: str, add_mask: Optional[bool] = None) -> TextTokenizer:
    """A ``TextTokenizer`` for a Hub id or local path. ``add_mask``: None = only for the GPT-2 family,
    True = append ``<|mask|>`` whenever the tokenizer has no mask token, False = never."""
    tok = _load_tokenizers_object(name)
    if not has_mask_token(tok):
        if add_mask or (add_mask is None and adds_mask_token(name)):
            tok.add_special_tokens([MASK_TOKEN])
        else:
            raise DataError(
                f"tokenizer {name!r} has no mask token (looked for {', '.join(ALIASES['mask'])}); masked diffusion "
                "needs one. Add it and save a copy: tok = AutoTokenizer.from_pretrained(NAME); "
                f"tok.add_special_tokens({{'mask_token': '{MASK_TOKEN}'}}); tok.save_pretrained(DIR); "
                "then pass data.tokenizer=DIR (model.vocab_size grows by one)"
            )
    return TextTokenizer(tok)


def has_mask_token(tok: Tokenizer) -> bool:
    """True when a ``tokenizers.Tokenizer`` holds one of the mask-token names ``TextTokenizer`` looks for."""
    return any(tok.token_to_id(n) is not None for n in ALIASES["mask"])


def load_hf_tokenizer(name: str) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` of a Hub id or local path, as it is (no mask token added)."""
    return _load_tokenizers_object(name)


def _load_tokenizers_object(name: str) -> Tokenizer:
    path = Path(name).expanduser()
    if path.exists():
        return _from_local(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DataError(
            f"tokenizer path {name!r} does not exist; pass a tokenizer.json, a folder, or a Hub id"
        )
    return _from_hub(name)


def _from_local(path: Path) -> Tokenizer:
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        try:
            return Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises plain Exception on malformed JSON
            raise DataError(
                f"tokenizer file {str(file)!r} cannot be read ({str(e).splitlines()[0][:100]})"
            ) from None
    # vocab.txt / vocab.json + merges.txt folders
    return _via_transformers(str(path), local_only=True)


def _from_hub(name: str) -> Tokenizer:
    """``tokenizer.json`` from the Hub (or its local cache when offline); fall back to transformers' conversion
    for repositories that only hold vocabulary files."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = hub_offline()
    if not offline:
        require_hub(f"tokenizer {name!r}")
    try:
        file = hf_hub_download(name, "tokenizer.json", local_files_only=offline, etag_timeout=10)
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: test it first)
        raise DataError(_unreachable(name, offline)) from None
    except EntryNotFoundError:
        return _via_transformers(name, local_only=offline)
    except RepositoryNotFoundError:
        raise DataError(
            f"tokenizer {name!r} is not a Hub repository (or it is gated / private); check the name, "
            "or pass a local tokenizer.json / folder"
        ) from None
    except (OSError, ValueError) as e:  # HTTP / connection errors
        raise DataError(
            f"could not fetch tokenizer {name!r} from the Hugging Face Hub "
            f"({str(e).splitlines()[0][:100]}); check the network, or pass a local path"
        ) from None
    return Tokenizer.from_file(file)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection attempt to the Hub endpoint (cached per process): no DNS or no route fails in
    seconds here, instead of after huggingface_hub's retries with back-off (about half a minute)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s
        ).close()
        return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise a one-line ``DataError`` quickly when ``what`` must come from the Hub and the Hub is unreachable."""
    if hub_offline():
        raise DataError(
            f"{what} is not available locally and HF_HUB_OFFLINE=1 forbids downloading it; use local "
            "files, or unset HF_HUB_OFFLINE once online"
        )
    if not hub_reachable():
        raise DataError(
            f"{what} must be downloaded but the Hugging Face Hub is unreachable (no network, DNS or "
            "proxy); use local files, or set HF_HUB_OFFLINE=1 to use the local cache only"
        )


def _unreachable(name: str, offline: bool) -> str:
    if offline:
        return (
            f"tokenizer {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
            "downloading it; pass a local tokenizer.json or folder, or unset HF_HUB_OFFLINE once online"
        )
    return (
        f"tokenizer {name!r} could not be downloaded (no connection to the Hugging Face Hub); pass a local "
        "tokenizer.json or folder"
    )


def _via_transformers(name: str, local_only: bool) -> Tokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            f"tokenizer {name!r} has no tokenizer.json; converting vocabulary files needs transformers: "
            + install_hint("hf")
        ) from None
    try:
        fast = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as e:
        if local_only and not Path(name).exists():
            raise DataError(_unreachable(name, True)) from None
        raise DataError(
            f"tokenizer {name!r} cannot be loaded ({str(e).splitlines()[0][:100]})"
        ) from None
    backend = getattr(fast, "backend_tokenizer", None)
    if backend is None:
        raise DataError(
            f"tokenizer {name!r} has no fast (Rust) version; save it as tokenizer.json first"
        )
    return backend
