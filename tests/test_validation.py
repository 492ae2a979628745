"""Property-based tests (hypothesis): whatever a user types or passes, the library answers with its own
one-line error (``LoopMDMError``) or a correct result, never a raw traceback.

- config validation: random nested dicts, random ``--set`` overrides, random values assigned in Python;
- tokenizer + packing round trips: text -> ids -> text, documents -> packed rows -> documents;
- sampler options: random ``generate`` arguments on a tiny trained model.
"""

import copy
import dataclasses
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from loopmdm.config import RunConfig, load_config, parse_override  # noqa: E402
from loopmdm.data import pack  # noqa: E402
from loopmdm.data.tokenizer import ALIASES  # noqa: E402
from loopmdm.errors import LoopMDMError  # noqa: E402

# raise it to hunt for bugs
SAMPLER_EXAMPLES = int(os.environ.get("LOOPMDM_HYPOTHESIS_EXAMPLES", "60"))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTIONS = {
    f.name: [g.name for g in dataclasses.fields(getattr(RunConfig(), f.name))]
    for f in dataclasses.fields(RunConfig)
}
PATHS = [f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "mdm",
            "ar",
            "adaln",
            "none",
            "fixed",
            "uniform",
            "lognormal_poisson",
            "loglinear",
            "cosine",
            "bf16",
            "fp32",
            "skip",
            "error",
            "cpu",
            "auto",
            "stdlib",
            "hf:",
            "",
        ]
    ),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)


def one_line_error(fn):
    """Run ``fn``; a ``LoopMDMError`` must be one line; any other exception fails the test."""
    try:
        return fn()
    except LoopMDMError as e:
        assert "\n" not in str(e) and str(e), repr(e)
        return None


@st.composite
def config_dicts(draw):
    out = {}
    for section in draw(
        st.lists(st.sampled_from(list(SECTIONS) + ["bogus"]), max_size=4, unique=True)
    ):
        if draw(st.booleans()) and section != "bogus":
            keys = draw(
                st.lists(st.sampled_from(SECTIONS[section] + ["nope"]), max_size=4, unique=True)
            )
            out[section] = {k: draw(values) for k in keys}
        else:
            out[section] = draw(values)
    return out


@FAST
@given(config_dicts())
def test_config_from_any_dict(d):
    cfg = one_line_error(lambda: RunConfig.from_dict(d).validate())
    if cfg is not None:  # a valid config survives the JSON round trip unchanged
        assert RunConfig.from_dict(cfg.to_dict()).validate() == cfg


@FAST
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(PATHS), st.text(max_size=15)).map(
                lambda kv: f"{kv[0]}={kv[1]}"
            ),
            st.tuples(st.sampled_from(PATHS), scalars).map(lambda kv: f"{kv[0]}={kv[1]}"),
            st.text(max_size=25),
        ),
        max_size=3,
    )
)
def test_any_override_strings(items):
    one_line_error(lambda: load_config("tiny", None, items))
    for item in items:
        one_line_error(lambda item=item: parse_override(item))


@FAST
@given(st.sampled_from(PATHS), values)
def test_any_value_assigned_in_python(path, value):
    cfg = RunConfig()
    section, key = path.split(".")
    setattr(getattr(cfg, section), key, copy.deepcopy(value))
    one_line_error(cfg.validate)


# --------------------------------------------------------------------------- tokenizer and packing

SPECIAL_STRINGS = [name for names in ALIASES.values() for name in names]


@pytest.fixture(scope="module")
def tokenizer(tiny_run):
    from loopmdm.checkpoint import load_model

    return load_model(tiny_run)[1]


text_st = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.one_of(
        text_st,
        st.sampled_from(["def f(x):\n    return x\n", "\r\n\t \x00\x7f", "é漢字🙂", " " * 9]),
        st.sampled_from(SPECIAL_STRINGS).map(lambda s: f"x = '{s}'  # {s}"),
    )
)
# text spelling a special token ("<mask>") stays text
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.mask_id not in ids
    assert tokenizer.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 400), max_size=40), max_size=12),
    st.integers(1, 48),
    st.one_of(st.none(), st.integers(401, 410)),
    st.one_of(st.none(), st.integers(411, 420)),
)
def test_pack_round_trip(token_lists, seq_len, bos, eos):
    rows = pack(token_lists, seq_len, bos, eos)
    flat = [
        t
        for ids in token_lists
        for t in ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
    ]
    n = len(flat) // seq_len
    assert rows.shape == (n, seq_len) and rows.dtype == np.int32
    # nothing reordered, only the tail remainder dropped
    assert rows.ravel().tolist() == flat[: n * seq_len]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(text_st.filter(lambda t: t.strip()), min_size=1, max_size=6), st.integers(4, 40))
def test_documents_survive_tokenize_pack_decode(tokenizer, docs, seq_len):
    encoded = tokenizer.encode_batch(docs)
    rows = pack(encoded, seq_len, tokenizer.bos_id, tokenizer.eos_id)
    flat = rows.ravel().tolist()
    segments, cur = [], None  # split the packed stream back into <bos> ... <eos> documents
    for t in flat:
        if t == tokenizer.bos_id:
            cur = []
        elif t == tokenizer.eos_id and cur is not None:
            segments.append(tokenizer.decode(cur))
            cur = None
        elif cur is not None:
            cur.append(t)
    # where each <eos> ends in the unpacked stream
    ends = np.cumsum([len(ids) + 2 for ids in encoded])
    # every document that fits comes back exactly
    assert segments == docs[: int((ends <= len(flat)).sum())]


# --------------------------------------------------------------------------- sampler options


@pytest.fixture(scope="module")
def model_and_tok(tiny_run):
    from loopmdm.checkpoint import load_model

    model, tok, _ = load_model(tiny_run)
    return model, tok


def option_dicts(keys):
    return st.one_of(
        st.none(), st.dictionaries(st.sampled_from(keys + ["bogus"]), values, max_size=3)
    )


@st.composite
def generate_kwargs(draw):
    from loopmdm.sampling import LOOP_POLICIES, SAMPLERS

    small_int = st.one_of(
        st.integers(-2, 6), st.booleans(), st.floats(-1, 5), st.none(), st.text(max_size=2)
    )
    kw = dict(
        num_samples=draw(st.one_of(st.integers(-1, 3), st.just(1.5), st.just(True), st.none())),
        length=draw(st.one_of(st.none(), st.integers(-3, 40), st.just(2.0))),
        steps=draw(small_int),
        sampler=draw(
            st.one_of(
                st.sampled_from(SAMPLERS.names()), st.text(max_size=6), st.none(), st.integers()
            )
        ),
        sampler_options=draw(option_dicts(["granularity", "order", "block_length"])),
        policy=draw(st.one_of(st.sampled_from(LOOP_POLICIES.names()), st.text(max_size=6))),
        policy_options=draw(
            option_dicts(
                ["loops", "s_min", "s_max", "threshold", "criterion", "shape", "center", "width"]
            )
        ),
        temperature=draw(
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.just(0.0),
                st.just(1.0),
                st.text(max_size=2),
            )
        ),
        top_k=draw(st.one_of(st.none(), st.integers(-2, 500), st.floats(0, 3))),
        top_p=draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))),
        seed=draw(st.one_of(st.integers(-(2**65), 2**65), st.none(), st.floats(0, 2))),
        stop_at_eos=draw(st.booleans()),
        record_trajectory=draw(st.booleans()),
    )
    conditioning = draw(st.sampled_from(["none", "prompt", "template"]))
    if conditioning == "prompt":
        kw["prompt"] = draw(st.text(max_size=40))
    elif conditioning == "template":
        kw["template"] = draw(
            st.one_of(
                st.text(max_size=30),
                st.lists(
                    st.one_of(
                        st.text(max_size=8),
                        st.integers(-1, 12).map(lambda n: f"[MASK:{n}]"),
                        st.sampled_from(["[MASK]", "[MASK:", "[MASK:x]", "[MASK:999]"]),
                    ),
                    max_size=4,
                ).map("".join),
            )
        )
    return kw


@settings(
    max_examples=SAMPLER_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generate_kwargs())
def test_generate_with_any_options(model_and_tok, kw):
    from loopmdm.sampling import generate

    model, tok = model_and_tok
    out = one_line_error(lambda: generate(model, tok, **kw))
    if out is None:
        return
    n, length = out.tokens.shape
    assert n == kw["num_samples"] and 1 <= length <= model.config.max_seq_len
    assert not bool((out.tokens == tok.mask_id).any())
    assert int(out.tokens.min()) >= 0 and int(out.tokens.max()) < tok.vocab_size
    assert len(out.texts) == n and out.report.network_calls >= 0
    if kw["record_trajectory"]:
        assert out.trajectory is not None and out.trajectory.reveal_step.shape == out.tokens.shape
