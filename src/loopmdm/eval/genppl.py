"""Generative perplexity of samples under an autoregressive evaluator, and unigram entropy per sample.

    gen-PPL = exp( sum_samples sum_i -log p_eval(y_i | y_<i) / sum_samples |y| )

Samples are decoded to text and re-tokenized with the evaluator's own tokenizer (MDLM does this for
GPT-2), prefixed with the evaluator's BOS / end-of-text token so the first token is scored too, and cut
into non-overlapping windows of the evaluator's context. Low gen-PPL alone can be gamed by repetitive
text, so every sample's unigram entropy (of its token counts) is reported beside it.

Evaluators are found through the ``EVALUATORS`` registry: ``loopmdm`` (a checkpoint trained with
``loopmdm train --objective ar``: the same backbone, causal) and ``hf`` (any ``transformers`` causal LM,
e.g. GPT-2 of any size, from a local folder or the Hub).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_model
from ..data.documents import jsonl_objects
from ..data.hub import hub_offline
from ..errors import CheckpointError, ConfigError, DataError, install_hint
from ..registry import Registry

# --------------------------------------------------------------------------- entropy


def unigram_entropy(ids: Sequence[int]) -> float:
    """Entropy (nats) of the empirical token distribution of one sample: -sum_v p_v log p_v, p_v = count_v / n.
    Repetitive samples have low entropy; zero for an empty or single-token-type sample."""
    n = len(ids)
    if n == 0:
        return 0.0
    p = np.array(list(Counter(int(i) for i in ids).values()), dtype=np.float64) / n
    return float(-(p * np.log(p)).sum())


# --------------------------------------------------------------------------- evaluators


class Evaluator:
    """A causal scorer: ``encode(text) -> ids`` (refusing text it cannot represent), ``logits(x [B, T]) ->
    [B, T, V]`` next-token logits, ``bos_id`` (scored-from token) and ``context`` (window length)."""

    name: str = "evaluator"
    bos_id: int
    context: int
    device: torch.device

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


EVALUATORS: Registry[Callable[..., Evaluator]] = Registry("evaluator")


def _canon(text: str) -> str:
    """Text with all whitespace removed and NFKC-normalised, for a lossless round-trip check."""
    return "".join(unicodedata.normalize("NFKC", text).split())


def check_round_trip(
    text: str,
    ids: list[int],
    decoded: str,
    unk_pieces: list[str],
    normalize: Callable[[str], str],
    who: str,
) -> None:
    """Raise DataError when the evaluator's tokenizer cannot represent ``text``: some pieces became its unknown
    token (``unk_pieces``: the text they came from), or decoding its ids does not give the text back
    (characters silently dropped)."""
    if unk_pieces:
        shown = ", ".join(repr(p) for p in unk_pieces[:5])
        raise DataError(
            f"the {who} tokenizer cannot encode the samples: {len(unk_pieces)} pieces became its unknown "
            f"token (e.g. {shown}); use an evaluator whose tokenizer covers the samples' alphabet, e.g. "
            "a byte-level BPE like GPT-2's or a loopmdm AR checkpoint"
        )
    want, got = _canon(normalize(text)), _canon(decoded)
    if want != got:
        missing = sorted(set(want) - set(got))[:8]
        raise DataError(
            f"the {who} tokenizer cannot encode the samples losslessly (decoding gives different text"
            + (f"; characters {''.join(missing)!r} are lost" if missing else "")
            + "); use an evaluator whose tokenizer covers the samples' alphabet, e.g. a byte-level BPE"
        )


def _unk_pieces(
    text: str, ids: list[int], offsets: Optional[list[tuple[int, int]]], unk_id: Optional[int]
) -> list[str]:
    """The substrings of ``text`` that were encoded as the unknown token (``'?'`` when offsets are unavailable)."""
    if unk_id is None:
        return []
    if offsets is None:
        return ["?" for i in ids if i == unk_id]
    return [text[a:b] for i, (a, b) in zip(ids, offsets) if i == unk_id]


@EVALUATORS.register("loopmdm")
class LoopMDMEvaluator(Evaluator):
    """A loopmdm checkpoint trained with ``--objective ar`` (causal backbone, no time conditioning)."""

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", loops: Optional[int] = None
    ):
        model, tok, cfg = load_model(path, device=device)
        if not cfg.model.causal or cfg.diffusion.objective != "ar":
            raise ConfigError(
                f"evaluator checkpoint {str(path)!r} is a masked diffusion model, not autoregressive; "
                "train one with `loopmdm train --objective ar` and pass it as --evaluator"
            )
        self.model, self.tok, self.cfg = model, tok, cfg
        self.name = f"loopmdm:{path}"
        self.loops = loops or cfg.diffusion.max_loops
        bos = tok.bos_id if tok.bos_id is not None else tok.eos_id
        if bos is None:
            raise ConfigError(
                "the evaluator tokenizer has neither a BOS nor an EOS token to score the first "
                "token from; add one to its tokenizer"
            )
        self.bos_id = bos
        self.context = cfg.model.max_seq_len
        self.device = torch.device(device)
        normalizer = tok.tok.normalizer
        self._normalize = normalizer.normalize_str if normalizer is not None else (lambda s: s)
        unk = getattr(tok.tok.model, "unk_token", None)
        self._unk_id = tok.tok.token_to_id(unk) if unk else None

    def encode(self, text: str) -> list[int]:
        enc = self.tok.tok.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        check_round_trip(
            text,
            ids,
            self.tok.decode(ids, skip_special=False),
            _unk_pieces(text, ids, enc.offsets, self._unk_id),
            self._normalize,
            "evaluator",
        )
        return ids

    @torch.no_grad()
    def logits(self, x):
        return self.model(x.to(self.device), loops=self.loops)  # [B, T, V]


@EVALUATORS.register("hf")
class HFEvaluator(Evaluator):
    """Any ``transformers`` causal LM with its tokenizer (GPT-2 of any size: ``gpt2``, ``gpt2-large``, or a
    local folder saved with ``save_pretrained``). Hub names need the network; offline only local folders work."""

    def __init__(
        self, name_or_path: str, device: str | torch.device = "cpu", dtype: str = "float32"
    ):
        try:
            import transformers
        except ImportError:
            raise ConfigError(
                "the hf evaluator needs `transformers`: " + install_hint("hf")
            ) from None

        local = Path(name_or_path).expanduser()
        if not local.exists() and hub_offline():
            raise CheckpointError(
                f"evaluator {name_or_path!r} is not a local folder and HF_HUB_OFFLINE=1; "
                "pass a folder saved with save_pretrained, or unset HF_HUB_OFFLINE to download it"
            )
        src = str(local) if local.exists() else name_or_path
        try:
            self.tok = transformers.AutoTokenizer.from_pretrained(src)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                src, dtype=getattr(torch, dtype)
            )
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"could not load evaluator {name_or_path!r} with transformers "
                f"({str(e).splitlines()[0][:120]}); pass a causal LM folder or Hub name"
            ) from None
        self.model.to(device).eval()
        self.name = f"hf:{name_or_path}"
        bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        if bos is None:
            raise ConfigError(
                f"evaluator {name_or_path!r} has neither a BOS nor an EOS token to score from"
            )
        self.bos_id = bos
        mc = self.model.config
        self.context = int(
            getattr(mc, "n_positions", None) or getattr(mc, "max_position_embeddings", None) or 1024
        )
        self.device = torch.device(device)
        backend = getattr(self.tok, "backend_tokenizer", None)
        norm = backend.normalizer if backend is not None else None
        self._normalize = norm.normalize_str if norm is not None else (lambda s: s)

    def encode(self, text: str) -> list[int]:
        if self.tok.is_fast:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        else:
            enc, offsets = self.tok(text, add_special_tokens=False), None
        ids = list(enc["input_ids"])
        check_round_trip(
            text,
            ids,
            self.tok.decode(ids, skip_special_tokens=False),
            _unk_pieces(text, ids, offsets, self.tok.unk_token_id),
            self._normalize,
            "evaluator",
        )
        return ids

    @torch.no_grad()
    def logits(self, x):
        return self.model(input_ids=x.to(self.device)).logits  # [B, T, V]


def _looks_like_loopmdm(path: Path) -> bool:
    """A loopmdm run folder (``checkpoints/``) or checkpoint folder (config.json with model + diffusion)."""
    if (path / "checkpoints").is_dir():
        return True
    cfg = path / "config.json"
    if (path / "model.safetensors").is_file() and cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(d, dict) and "diffusion" in d and "model" in d
    return False


def load_evaluator(spec: str, device: str | torch.device = "cpu") -> Evaluator:
    """``loopmdm:PATH`` or ``hf:NAME_OR_PATH`` explicitly; otherwise a loopmdm run / checkpoint folder is
    detected by its files, any other existing folder is loaded with transformers, and anything else is
    taken as a Hugging Face Hub name (``gpt2``, ``gpt2-large``)."""
    if not spec:
        raise ConfigError(
            "--evaluator is empty; pass a loopmdm AR run folder or a GPT-2 name / folder"
        )
    kind, _, rest = spec.partition(":")
    if rest and kind in EVALUATORS:
        return EVALUATORS.get(kind)(rest, device=device)
    path = Path(spec).expanduser()
    if path.exists():
        return EVALUATORS.get("loopmdm" if _looks_like_loopmdm(path) else "hf")(spec, device=device)
    return EVALUATORS.get("hf")(spec, device=device)


# --------------------------------------------------------------------------- scoring


def windows(ids: list[int], bos_id: int, context: int) -> list[tuple[list[int], list[int]]]:
    """Cut ``[bos] + ids`` into non-overlapping (input, target) windows of at most ``context`` inputs;
    every token of ``ids`` is a target exactly once."""
    seq = [bos_id] + list(ids)
    out = []
    for start in range(0, len(ids), context):
        inp = seq[start : start + context]
        tgt = seq[start + 1 : start + 1 + context]
        out.append((inp[: len(tgt)], tgt))
    return out


@torch.no_grad()
def score_token_lists(
    evaluator: Evaluator, token_lists: list[list[int]], batch_size: int = 8
) -> list[float]:
    """Sum of next-token NLL (nats) of each token list under the evaluator, window by window."""
    jobs = [
        (k, w)
        for k, ids in enumerate(token_lists)
        for w in windows(ids, evaluator.bos_id, evaluator.context)
    ]
    jobs.sort(key=lambda j: -len(j[1][0]))  # similar lengths together: little padding
    nll = [0.0] * len(token_lists)
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        T = max(len(inp) for _, (inp, _) in chunk)
        x = torch.full((len(chunk), T), evaluator.bos_id, dtype=torch.long)  # [B, T], right-padded
        y = torch.full((len(chunk), T), -100, dtype=torch.long)  # [B, T], -100 = ignored padding
        for r, (_, (inp, tgt)) in enumerate(chunk):
            x[r, : len(inp)] = torch.tensor(inp)
            y[r, : len(tgt)] = torch.tensor(tgt)
        # [B, T, V]; causal, so right padding changes nothing
        logits = evaluator.logits(x).float().cpu()
        # [B, T]
        ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none", ignore_index=-100)
        for r, (k, _) in enumerate(chunk):
            nll[k] += float(ce[r].sum())
    return nll


@dataclass
class GenPPLResult:
    """``gen_ppl``: exp of the token-weighted mean NLL; ``entropy``: mean unigram entropy (nats) per sample."""

    gen_ppl: float
    nll: float
    tokens: int
    samples: int
    empty_samples: int
    entropy: float
    per_sample_ppl: list[float]
    per_sample_entropy: list[float]
    entropy_tokens: str
    evaluator: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def generative_perplexity(
    texts: Sequence[str],
    evaluator: Evaluator,
    *,
    token_ids: Optional[Iterable[Sequence[int]]] = None,
    batch_size: int = 8,
) -> GenPPLResult:
    """Gen-PPL of ``texts`` under ``evaluator`` (re-tokenized with its tokenizer) and unigram entropy per sample.

    token_ids: the generator's own token ids of each sample (entropy is then measured in the generator's
    tokens, as MDLM / DUO do); without them, the evaluator's tokens are used. Empty samples are counted and
    skipped; a list with no text at all is an error."""
    texts = list(texts)
    if not texts:
        raise DataError(
            "no samples to score; pass at least one text (or let `loopmdm eval` generate them)"
        )
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if not keep:
        raise DataError(f"all {len(texts)} samples are empty text; nothing to score")
    encoded = []
    for i in keep:
        try:
            encoded.append(evaluator.encode(texts[i]))
        except DataError as e:
            raise DataError(f"sample {i}: {e}") from None
    nll = score_token_lists(evaluator, encoded, batch_size)
    n_tok = sum(len(e) for e in encoded)
    if token_ids is not None:
        gen_ids = list(token_ids)
        ent = [unigram_entropy(gen_ids[i]) for i in keep]
        kind = "generator"
    else:
        ent = [unigram_entropy(e) for e in encoded]
        kind = "evaluator"
    mean_nll = sum(nll) / max(n_tok, 1)
    return GenPPLResult(
        gen_ppl=math.exp(min(mean_nll, 50.0)),
        nll=mean_nll,
        tokens=n_tok,
        samples=len(keep),
        empty_samples=len(texts) - len(keep),
        entropy=float(np.mean(ent)),
        per_sample_ppl=[math.exp(min(s / max(len(e), 1), 50.0)) for s, e in zip(nll, encoded)],
        per_sample_entropy=ent,
        entropy_tokens=kind,
        evaluator=evaluator.name,
    )


def read_samples(path: str | Path, text_field: str = "text") -> list[str]:
    """Sample texts from a file: ``.jsonl`` (one object per line with ``text_field``), ``.json`` (a list of
    strings or objects, or the output of ``loopmdm sample --json``), or plain text (one sample per line)."""
    p = Path(path).expanduser()
    if not p.is_file():
        from ..fileio import path_kind

        kind = path_kind(p)
        raise DataError(
            f"samples file {str(p)!r} "
            + ("does not exist" if kind is None else f"is {kind}, not a file")
            + "; pass a .jsonl, .json or .txt file"
        )
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"samples file {str(p)!r} is not UTF-8 text") from None
    if p.suffix == ".jsonl":
        out = []
        for i, row in jsonl_objects(raw, p):
            text = (
                row
                if isinstance(row, str)
                else row.get(text_field)
                if isinstance(row, dict)
                else None
            )
            if not isinstance(text, str):
                raise DataError(f"{p}:{i} has no string field {text_field!r}; pass --text-field")
            out.append(text)
    elif p.suffix == ".json":
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as e:
            why = getattr(e, "msg", None) or "a number too long, or nested too deeply"
            raise DataError(f"samples file {str(p)!r} is not valid JSON ({why})") from None
        out = _texts_from_json(obj, text_field)
        if out is None:
            raise DataError(
                f"samples file {str(p)!r}: expected a list of strings / objects with {text_field!r}, "
                "or the JSON of `loopmdm sample --json`"
            )
    else:
        out = [line for line in raw.splitlines() if line.strip()]
    if not out:
        raise DataError(f"samples file {str(p)!r} holds no samples")
    return out


def _texts_from_json(obj, text_field: str) -> Optional[list[str]]:
    if isinstance(obj, dict):
        if isinstance(obj.get("results"), list):  # `loopmdm sample --json`: results[].samples[]
            out = []
            for r in obj["results"]:
                got = _texts_from_json(
                    r.get("samples", r.get("texts")) if isinstance(r, dict) else None, text_field
                )
                if got is None:
                    return None
                out.extend(got)
            return out
        for key in ("samples", "texts"):
            if key in obj:
                return _texts_from_json(obj[key], text_field)
        return None
    if isinstance(obj, list):
        out = []
        for x in obj:
            text = x if isinstance(x, str) else x.get(text_field) if isinstance(x, dict) else None
            if not isinstance(text, str):
                return None
            out.append(text)
        return out
    return None
