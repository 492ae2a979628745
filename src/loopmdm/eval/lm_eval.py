"""lm-evaluation-harness model ``loopmdm``: score and sample a LoopMDM checkpoint at loop count S.

    loopmdm-lm-eval --model loopmdm --model_args pretrained=RUN_DIR,loops=8 --tasks TASK
    # (or python -m loopmdm.eval.lm_eval ...); in Python, after ``import loopmdm.eval.lm_eval``:
    lm_eval.simple_evaluate(model="loopmdm", model_args="pretrained=RUN_DIR,loops=8", tasks=[...])

(lm-eval 0.4 has no plugin discovery for models, so the plain ``lm_eval`` command cannot see a model
registered outside its package; ``loopmdm-lm-eval`` is that same command with ``loopmdm`` registered.)

* ``loglikelihood``: the Monte-Carlo ELBO over masked completions (``loopmdm.diffusion.likelihood``), ``mc_samples``
  draws per request, seeded so that equal-length candidates share masks; exact for AR checkpoints.
* ``loglikelihood_rolling``: lm-eval's disjoint rolling windows, each scored like a completion.
* ``generate_until``: ``loopmdm.sampling.generate`` (``sampler``, default ancestral; the prompt kept fixed;
  temperature 0 = greedy), cut at the first EOS and the first stop string.
* Requests longer than the model window are truncated from the left (oldest context first), with one
  warning per model instance, as lm-eval's own models do.

model_args: pretrained (run or checkpoint folder), loops (S; default the training S_max), mc_samples (32),
mc_batch (32: Monte-Carlo samples per network call; lm-eval's own batch_size is accepted and unused, requests
are scored one at a time), steps (denoising steps for generation; default one per generated token), max_gen_toks
(default 64), seed (0), ema (false), device (auto: CUDA when available), greedy (true: compute is_greedy),
add_bos (true), sampler (ancestral; any name in loopmdm.sampling.SAMPLERS).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from ..checkpoint import load_model
from ..diffusion import get_schedule
from ..diffusion.likelihood import ar_completion_nll, mdm_completion_nll, mdm_greedy_matches
from ..errors import ConfigError, install_hint
from ..model.fields import check_int
from ..sampling import SAMPLERS, generate

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - exercised only without the [eval] extra
    raise ImportError("the lm-eval adapter needs lm-eval: " + install_hint("eval")) from e

logger = logging.getLogger(__name__)


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _positive_int(name: str, v) -> int:
    """A model_arg >= 1; lm-eval passes numbers parsed from ``key=value`` text, or the text itself."""
    # not "²": int() refuses it
    if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        v = int(v)
    return check_int(v, f"lm-eval model_args {name}")


def _resolve_device(name) -> torch.device:
    """``auto`` / None: CUDA when available. lm-eval's command line passes ``cuda`` by default, so a CUDA request on
    a machine without CUDA falls back to the CPU with a warning instead of failing."""
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "loopmdm: device %r requested but CUDA is not available; using the CPU", name
        )
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"lm-eval device {name!r} is not a device; use cpu, cuda, cuda:N or auto"
        ) from None


@register_model("loopmdm")
class LoopMDMLM(TemplateLM):
    """A LoopMDM (or loopmdm AR) checkpoint behind lm-eval's ``LM`` interface."""

    backend = "causal"

    def __init__(
        self,
        pretrained: str,
        loops=None,
        mc_samples=32,
        mc_batch=32,
        steps=None,
        max_gen_toks=64,
        seed=0,
        ema=False,
        device="auto",
        greedy=True,
        add_bos=True,
        sampler="ancestral",
        batch_size=None,
        max_batch_size=None,
        **kwargs,
    ):
        """Load ``pretrained`` (run or checkpoint folder); the other model_args are described in the module
        docstring. ``batch_size`` / ``max_batch_size`` come from lm-eval and are not used."""
        super().__init__()

        if kwargs:
            logger.warning("loopmdm: ignoring unknown model_args %s", sorted(kwargs))
        device = _resolve_device(device)
        self.model, self.tok, self.cfg = load_model(pretrained, device=device, ema=_as_bool(ema))
        self._device = device
        self.loops = (
            _positive_int("loops", loops) if loops is not None else self.cfg.diffusion.max_loops
        )
        self.mc_samples = _positive_int("mc_samples", mc_samples)
        # lm-eval's batch_size (requests) is not used
        self.mc_batch = _positive_int("mc_batch", mc_batch)
        self.steps = _positive_int("steps", steps) if steps is not None else None
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        try:
            self.seed = int(seed)
        except (TypeError, ValueError):
            raise ConfigError(f"lm-eval model_args seed={seed!r} must be an integer") from None
        self.greedy = _as_bool(greedy)
        self.add_bos = _as_bool(add_bos)

        self.sampler = str(sampler)
        SAMPLERS.get(self.sampler)  # unknown names fail now, with the list of valid ones
        self.causal = bool(self.cfg.model.causal)
        self.schedule = get_schedule(self.cfg.diffusion.schedule)
        self.window = self.cfg.model.max_seq_len
        self._warned_truncation = False
        self.pretrained = str(pretrained)

    # ------------------------------------------------------------------ TemplateLM hooks
    @property
    def eot_token_id(self) -> int:
        eos = self.tok.eos_id if self.tok.eos_id is not None else self.tok.bos_id
        if eos is None:
            raise ConfigError(
                "the checkpoint's tokenizer has no EOS / BOS token; lm-eval needs one"
            )
        return eos

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.window

    @property
    def tokenizer_name(self) -> str:
        return f"loopmdm:{self.pretrained}"

    def tok_encode(
        self, string: str, add_special_tokens: Optional[bool] = None, **kwargs
    ) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    # ------------------------------------------------------------------ helpers
    def _warn_truncation(self, n_tokens: int) -> None:
        if not self._warned_truncation:
            logger.warning(
                "loopmdm: a request of %d tokens exceeds the model window of %d; truncating it from the "
                "left (oldest context first). This warning is shown once.",
                n_tokens,
                self.window,
            )
            self._warned_truncation = True

    def _fit(
        self, context: list[int], continuation: list[int], bos: bool = True
    ) -> tuple[list[int], list[int]]:
        """Prepend BOS (documents start with it in training; unless ``bos`` is false) and truncate from the left
        to the window; a continuation longer than the window keeps its last tokens."""
        if (
            bos
            and self.add_bos
            and self.tok.bos_id is not None
            and (not context or context[0] != self.tok.bos_id)
        ):
            context = [self.tok.bos_id] + list(context)
        total = len(context) + len(continuation)
        if total > self.window:
            self._warn_truncation(total)
            keep_ctx = max(self.window - len(continuation), 0)
            context = context[len(context) - keep_ctx :] if keep_ctx else []
            continuation = continuation[-self.window :]
            if self.causal and not context:  # a causal score needs one token of context
                context, continuation = continuation[:1], continuation[1:]
        return list(context), list(continuation)

    def _score(
        self, context: list[int], continuation: list[int], want_greedy: bool, bos: bool = True
    ) -> tuple[float, bool]:

        context, continuation = self._fit(context, continuation, bos)
        if self.causal:
            nll, greedy = ar_completion_nll(self.model, context, continuation, loops=self.loops)
            return -nll, greedy
        gen = torch.Generator().manual_seed(self.seed)
        nll = mdm_completion_nll(
            self.model,
            context,
            continuation,
            mask_id=self.tok.mask_id,
            loops=self.loops,
            schedule=self.schedule,
            mc_samples=self.mc_samples,
            batch_size=self.mc_batch,
            gen=gen,
        )
        greedy = want_greedy and mdm_greedy_matches(
            self.model,
            context,
            continuation,
            mask_id=self.tok.mask_id,
            loops=self.loops,
            schedule=self.schedule,
        )
        return -nll, bool(greedy)

    # ------------------------------------------------------------------ the three request types
    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        out = []
        for key, context_enc, continuation_enc in requests:
            res = self._score(context_enc, continuation_enc, self.greedy)
            self.cache_hook.add_partial("loglikelihood", key, res)
            out.append(res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            tokens = self.tok_encode(text)
            # windows of window-1 predicted tokens so that context + continuation fits the (bidirectional) window
            pairs = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(tokens, self.prefix_token_id, self.window - 1, 1)
            ]
            total = 0.0
            for ctx, cont in pairs:
                ll, _ = self._score(ctx, cont, want_greedy=False, bos=False)  # windows already fit
                total += ll
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = _positive_int(
                "max_gen_toks", gen_kwargs.pop("max_gen_toks", self.max_gen_toks)
            )
            temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
            if not _as_bool(gen_kwargs.pop("do_sample", temperature > 0)):
                temperature = 0.0
            text = self._generate(context, max_new, temperature)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out

    def _generate(self, context: str, max_new: int, temperature: float) -> str:
        """Generate ``max_new`` tokens after ``context`` (left-truncated to fit the window) and decode them,
        stopping at the first EOS."""
        max_new = min(max_new, self.window - 1)
        ctx_ids, _ = self._fit(self.tok_encode(context), [0] * max_new)
        gen_ids = self._sample(ctx_ids, max_new, temperature)
        if self.tok.eos_id is not None and self.tok.eos_id in gen_ids:
            gen_ids = gen_ids[: gen_ids.index(self.tok.eos_id)]
        return self.tok.decode(gen_ids)

    def _sample(self, prompt_ids: list[int], max_new: int, temperature: float) -> list[int]:
        """Token ids generated after ``prompt_ids`` (kept fixed) by ``loopmdm.sampling.generate`` at S = loops."""
        if self.causal:
            return self._sample_ar(prompt_ids, max_new, temperature)

        out = generate(
            self.model,
            self.tok,
            num_samples=1,
            length=len(prompt_ids) + max_new,
            steps=self.steps or max_new,
            sampler=self.sampler,
            policy="fixed",
            policy_options={"loops": self.loops},
            prompt_ids=prompt_ids,
            temperature=temperature,
            seed=self.seed,
            schedule=self.schedule,
        )
        return out.tokens[0, len(prompt_ids) :].tolist()

    @torch.no_grad()
    def _sample_ar(self, prompt_ids: list[int], max_new: int, temperature: float) -> list[int]:
        """Left-to-right sampling for AR checkpoints (greedy at temperature 0)."""
        gen = torch.Generator().manual_seed(self.seed)
        seq = list(prompt_ids)
        for _ in range(max_new):
            # [V]
            logits = self.model(torch.tensor(seq[-self.window :])[None], loops=self.loops)[
                0, -1
            ].float()
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                nxt = int(
                    torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)
                )
            seq.append(nxt)
            if nxt == self.tok.eos_id:
                break
        return seq[len(prompt_ids) :]


def main() -> None:
    """``loopmdm-lm-eval ...``: the ``lm_eval`` command line with ``--model loopmdm`` available."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
