"""loopify: a trained model -> a run whose layers [A, B) loop, exact at S = 1 for every family (offline, tiny
random models built from configs); a loopified checkpoint fine-tunes (`train --init`), round-trips through
save / load / export / import, samples and evaluates; bad inputs get one-line errors."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import transformers  # noqa: E402

from conftest import python_like_text  # noqa: E402
from helpers import run_cli as cli
from loopmdm.backbones import BACKBONES, WrappedLoopMDM, build_model, get_backbone  # noqa: E402
from loopmdm.checkpoint import load_config_file, load_model, resolve_checkpoint  # noqa: E402
from loopmdm.data import train_bpe  # noqa: E402
from loopmdm.diffusion import make_objective  # noqa: E402
from loopmdm.errors import CheckpointError, ConfigError, DataError, LoopMDMError  # noqa: E402
from loopmdm.eval.nelbo import evaluate_nelbo  # noqa: E402
from loopmdm.loopify import check_loop_range, loopify, parse_loop_layers  # noqa: E402
from loopmdm.sampling import generate  # noqa: E402
from loopmdm.train import init_run_config, train  # noqa: E402

FAMILIES = ["bert", "roberta", "modernbert", "dream"]
TOL = 1e-5  # S = 1 exactness, relative, fp32


def rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


# --------------------------------------------------------------------------- tiny transformers sources


@pytest.fixture(scope="module")
def tok():
    return train_bpe([python_like_text(i) for i in range(30)], 320)


def hf_config(family: str, tok):
    V = tok.vocab_size
    ids = dict(pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    if family == "bert":
        return transformers.BertConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **ids,
        )
    if family == "roberta":
        return transformers.RobertaConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=66,
            **ids,
        )
    # local window 8 < the probe's length: sliding-window layers really slide
    if family == "modernbert":
        return transformers.ModernBertConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            local_attention=8,
            global_attn_every_n_layers=2,
            cls_token_id=tok.bos_id,
            sep_token_id=tok.eos_id,
            **ids,
        )
    return transformers.Qwen2Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        **ids,
    )


def make_source(family: str, tok, folder: Path, seed: int = 0, **overrides):
    """A tiny random model of ``family`` saved as a transformers folder (Dream: a Qwen2-layout checkpoint whose
    config says model_type "Dream", as Dream's do), with the BPE tokenizer; returns the in-memory model.
    ``overrides``: config fields set on top of ``hf_config``'s."""
    torch.manual_seed(seed)
    cls = {
        "bert": transformers.BertForMaskedLM,
        "roberta": transformers.RobertaForMaskedLM,
        "modernbert": transformers.ModernBertForMaskedLM,
        "dream": transformers.Qwen2ForCausalLM,
    }[family]
    config = hf_config(family, tok)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = cls(config).eval()
    model.save_pretrained(folder)
    tok.save(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<mask>"}))
    if family == "dream":
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(
            model_type="Dream",
            architectures=["DreamModel"],
            mask_token_id=tok.mask_id,
            auto_map={"AutoModel": "modeling_dream.DreamModel"},
        )
        (folder / "config.json").write_text(json.dumps(cfg))
    return model


def source_logits(family: str, model, x, attention_mask=None):
    """The source's own logits: the masked LM's forward; for Dream the Qwen2 stack with bidirectional
    attention, position i's logits read from position i - 1."""
    with torch.no_grad():
        if family != "dream":
            return model(input_ids=x, attention_mask=attention_mask).logits
        for layer in model.model.layers:
            layer.self_attn.is_causal = False
        logits = model(input_ids=x, attention_mask={"full_attention": None}).logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def probe(tok, T=24, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, tok.vocab_size, (B, T), generator=g)
    x[:, ::3] = tok.mask_id
    return x


@pytest.fixture(scope="module")
def sources(tok, tmp_path_factory):
    """family -> (folder, in-memory model)."""
    root = tmp_path_factory.mktemp("hf_sources")
    out = {}
    for family in FAMILIES:
        folder = root / family
        out[family] = (folder, make_source(family, tok, folder))
    return out


@pytest.fixture(scope="module")
def loopified(sources, tmp_path_factory):
    """family -> a loopified run folder (layers 1:3 loop, S_max 3)."""
    root = tmp_path_factory.mktemp("loopified")
    return {f: _loopify(sources[f][0], root / f) for f in FAMILIES}


def _loopify(src, out, spec="1:3", **kw):
    loopify(str(src), spec, out, s_max=3, log=lambda s: None, **kw)
    return out


# --------------------------------------------------------------------------- --loop-layers


def test_parse_loop_layers():
    assert parse_loop_layers("1:3") == (1, 3)
    assert parse_loop_layers(" 0 : 12 ") == (0, 12)
    for bad in ["1-3", "1:", ":3", "a:b", "1:3:5", "", "1.5:3"]:
        with pytest.raises(ConfigError, match="must look like A:B") as e:
            parse_loop_layers(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "a, b, words",
    [
        (2, 2, "is empty"),
        (3, 1, "is reversed"),
        (0, 7, "outside the source's 6"),
        (-1, 2, "outside the source's 6"),
    ],
)
def test_bad_loop_ranges(a, b, words):
    with pytest.raises(ConfigError, match=words) as e:
        check_loop_range(a, b, 6)
    assert "\n" not in str(e.value)
    assert check_loop_range(0, 6, 6) == (0, 6) and check_loop_range(5, 6, 6) == (5, 6)


# --------------------------------------------------------------------------- S = 1 exactness


@pytest.mark.parametrize("family", FAMILIES)
def test_s1_exact_per_family(family, sources, loopified, tok):
    folder, source = sources[family]
    model, tk, cfg = load_model(loopified[family])
    assert isinstance(model, WrappedLoopMDM) and cfg.model.backbone == family
    assert (cfg.model.n_h, cfg.model.n_m, cfg.model.n_o) == (1, 2, 1)
    assert cfg.diffusion.loop_dist == "uniform" and cfg.diffusion.s_max == 3
    assert tk.mask_id == tok.mask_id and cfg.data.tokenizer == str(folder.resolve())
    summary = json.loads((loopified[family] / "loopify.json").read_text())
    assert summary["s1_max_rel_diff"] <= TOL and summary["loop_layers"] == [1, 3]
    x = probe(tok)
    ref = source_logits(family, source, x)
    with torch.no_grad():
        assert rel(model(x, None, loops=1), ref) <= TOL
        assert rel(model(x, None, loops=2), ref) > 1e-3  # the mid block really runs twice
        loops = []
        model.mid.register_forward_hook(lambda *a: loops.append(1))
        model(x, loops=4)
    assert len(loops) == 4
    if family == "dream":  # bidirectional: a later token changes an earlier prediction
        x2 = x.clone()
        x2[:, -1] = (x2[:, -1] + 1) % tok.vocab_size
        with torch.no_grad():
            assert rel(model(x2, loops=1)[:, 1], model(x, loops=1)[:, 1]) > 1e-4


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_s1_exact_with_padding(family, sources, loopified, tok):
    _, source = sources[family]
    model = load_model(loopified[family])[0]
    x = probe(tok)
    pad = torch.ones_like(x, dtype=torch.bool)
    pad[0, -7:] = False
    with torch.no_grad():
        assert (
            rel(model(x, loops=1, attention_mask=pad), source_logits(family, source, x, pad.long()))
            <= TOL
        )


def test_s1_probe_runs_past_the_local_attention_window(tok, tmp_path, monkeypatch):
    """A ModernBERT whose local window (32 tokens) is longer than a 16-token probe: loopify's probe is window +
    16 = 48 tokens, so an adapter that got the sliding-window layers wrong (here: the global mask everywhere)
    is refused instead of passing the S = 1 check."""
    folder = tmp_path / "wide"
    make_source("modernbert", tok, folder, local_attention=32)
    summary = loopify(str(folder), "1:3", tmp_path / "ok", s_max=2, log=lambda s: None)
    assert summary["s1_probe_tokens"] == 48 and summary["s1_max_rel_diff"] <= TOL
    family = type(get_backbone("modernbert"))
    right = family.masks

    def global_everywhere(self, model, h, pad):
        masks = right(self, model, h, pad)
        return {**masks, "sliding_attention": masks["full_attention"]}

    monkeypatch.setattr(family, "masks", global_everywhere)
    with pytest.raises(CheckpointError, match="differ from the source's") as e:
        loopify(str(folder), "1:3", tmp_path / "bad", s_max=2, log=lambda s: None)
    assert "\n" not in str(e.value) and not (tmp_path / "bad" / "loopify.json").exists()


def test_modernbert_layer_0_is_not_looped(sources, loopified, tmp_path, capsys):
    """ModernBERT's layer 0 has no attention pre-norm: looping it would feed it the un-normalised residual stream
    from the second loop on, so --loop-layers 0:B is refused (before any weights are read), and so is a config
    with model.n_h = 0."""
    folder = sources["modernbert"][0]
    with pytest.raises(ConfigError, match="no attention pre-norm") as e:
        loopify(str(folder), "0:2", tmp_path / "out", log=lambda s: None)
    assert "--loop-layers 1:2" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code, _, err = cli(
        ["loopify", "--from", str(folder), "--loop-layers", "0:3", "--out", str(tmp_path / "cli")],
        capsys,
    )
    assert code == 2 and "--loop-layers 1:3" in err and err.count("\n") == 1, err
    cfg = load_config_file(resolve_checkpoint(loopified["modernbert"]))
    cfg.model.n_h, cfg.model.n_m = 0, 3
    with pytest.raises(ConfigError, match="model.n_h=0"):
        cfg.validate()
    # post-LN BERT feeds its layers normalised states
    _loopify(sources["bert"][0], tmp_path / "bert", "0:2")


def test_s1_exact_ours_and_options(tiny_run, tmp_path):
    src, tok, _ = load_model(tiny_run)  # 4 layers, n_h / n_m / n_o = 1 / 2 / 1, adaLN
    x = probe(tok, T=32)
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        ref = src(x, t, loops=1)
    for i, (spec, kw) in enumerate(
        [("2:4", {}), ("0:1", {"input_injection": True, "loop_embedding": True})]
    ):
        out = _loopify(tiny_run, tmp_path / f"l{i}", spec, **kw)
        model, _, cfg = load_model(out)
        a, b = parse_loop_layers(spec)
        assert (cfg.model.n_h, cfg.model.n_m, cfg.model.n_o) == (a, b - a, 4 - b)
        assert cfg.model.time_conditioning == "adaln"  # time conditioning stays as it was
        with torch.no_grad():
            assert rel(model(x, t, loops=1), ref) <= TOL
            assert rel(model(x, t, loops=3), ref) > 1e-4


def test_loop_options_on_a_wrapped_model_start_as_the_identity(sources, tok, tmp_path):
    folder, source = sources["roberta"]
    model = load_model(_loopify(folder, tmp_path / "o", input_injection=True, loop_embedding=True))[
        0
    ]
    x = probe(tok)
    with torch.no_grad():
        assert rel(model(x, loops=1), source_logits("roberta", source, x)) <= TOL


def test_sparse_prediction_and_fused_loss_match_full_logits(loopified, tok):
    """The training path (labels: fused loss with the decoder bias, Dream's shift) equals the full logits."""
    for family in ("bert", "dream"):
        model = load_model(loopified[family])[0]
        x = probe(tok)
        predict = x == tok.mask_id
        labels = torch.randint(0, tok.vocab_size, (int(predict.sum()),))
        with torch.no_grad():
            full = model(x, loops=2)
            sparse = model(x, loops=2, predict=predict)
            total, ce = model(x, loops=2, predict=predict, labels=labels, exclude=tok.mask_id)
        assert rel(sparse, full[predict]) <= TOL
        z = full[predict].float()
        z[:, tok.mask_id] = -float("inf")
        ref = torch.nn.functional.cross_entropy(z, labels, reduction="none")
        assert torch.allclose(ce, ref, rtol=1e-5, atol=1e-5) and torch.isclose(
            total, ref.sum(), rtol=1e-5
        )


# --------------------------------------------------------------------------- fine-tuning: train --init


@pytest.fixture(scope="module")
def finetuned(loopified, tiny_corpus, tmp_path_factory):
    """The loopified BERT fine-tuned 20 steps with S ~ U{1..3} (`train --init`)."""
    root = tmp_path_factory.mktemp("finetuned")
    cfg = init_run_config(
        loopified["bert"],
        overrides=[
            f"data.source={tiny_corpus}",
            "data.val_fraction=0.2",
            f"data.cache_dir={root / 'cache'}",
            "model.max_seq_len=32",
            "train.max_steps=20",
            "train.batch_size=8",
            "train.lr=3e-3",
            "train.warmup_steps=2",
            "train.eval_every=20",
            "train.eval_batches=2",
            "train.save_every=10",
            "train.ema=0.9",
            "train.device=cpu",
        ],
    )
    return cfg, train(cfg, root / "run", progress=False, log=lambda s: None)


def test_init_refuses_model_changes(loopified):
    with pytest.raises(CheckpointError, match="differs from the checkpoint's") as e:
        init_run_config(loopified["bert"], overrides=["model.d_model=64"])
    assert "\n" not in str(e.value)


def test_loopified_checkpoint_trains_and_records_its_origin(finetuned, loopified):
    cfg, result = finetuned
    run = result.run_dir
    saved = load_config_file(resolve_checkpoint(run))
    assert (
        saved.train.init == str(resolve_checkpoint(loopified["bert"]))
        and saved.train.init_weights == "auto"
    )
    assert saved.train.lr == 3e-3 and saved.model.backbone == "bert"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # a fresh step count and schedule
    assert [r["step"] for r in rows][0] == 1 and rows[-1]["step"] == 20
    assert {r["loops"] for r in rows} <= {1, 2, 3} and len({r["loops"] for r in rows}) > 1
    from loopmdm.train import lr_lambda

    assert [r["lr"] for r in rows[:3]] == pytest.approx(
        [3e-3 * lr_lambda(k, 2, 20, 0.1) for k in (1, 2, 3)]
    )
    # the loss falls: validation NELBO (fixed t and masks) of the start vs the end
    start, tok, _ = load_model(loopified["bert"])
    from loopmdm.data import prepare_data

    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len)
    obj = make_objective(cfg.diffusion, tok.mask_id)
    before = evaluate_nelbo(
        start, data.val, obj, 3, batch_size=8, max_batches=2, seed=cfg.train.seed
    )["nelbo"]
    assert result.val["nelbo"] < before - 0.3, (before, result.val)


def test_finetuned_run_round_trips_save_load_export_import(finetuned, tok, tmp_path):
    _, result = finetuned
    model, tk, cfg = load_model(result.run_dir, ema=None)
    x = probe(tk, T=32)
    with torch.no_grad():
        s1, s3 = model(x, loops=1), model(x, loops=3)
    # save / load: a second load gives the same logits (the tied decoder weight restored)
    again = load_model(result.run_dir, ema=None)[0]
    with torch.no_grad():
        assert torch.equal(again(x, loops=3), s3)
    # export in BERT's own format: plain transformers runs it at S = 1, import restores the loops
    from loopmdm.hf.export import export_hf, import_hf

    hf = export_hf(result.run_dir, tmp_path / "hf", ema=True)
    plain = transformers.AutoModelForMaskedLM.from_pretrained(str(hf)).eval()
    assert type(plain).__name__ == "BertForMaskedLM"
    with torch.no_grad():
        assert rel(plain(input_ids=x).logits, s1) <= TOL
    back = load_model(import_hf(hf, tmp_path / "back"))[0]
    with torch.no_grad():
        assert rel(back(x, loops=3), s3) <= TOL


def test_export_of_dream_is_refused_with_a_reason(loopified, tmp_path):
    from loopmdm.hf.export import export_hf

    with pytest.raises(ConfigError, match="remote code") as e:
        export_hf(loopified["dream"], tmp_path / "hf")
    assert "\n" not in str(e.value)


def test_sample_and_eval_run_on_a_loopified_checkpoint(finetuned, capsys):
    _, result = finetuned
    model, tk, cfg = load_model(result.run_dir)
    out = generate(
        model,
        tk,
        num_samples=2,
        length=16,
        steps=4,
        policy="fixed",
        policy_options={"loops": 2},
        seed=0,
    )
    assert out.report.loop_iterations == 8 and len(out.texts) == 2
    with pytest.raises(LoopMDMError, match="cannot update some positions only") as e:
        generate(
            model,
            tk,
            num_samples=1,
            length=16,
            steps=2,
            policy="per_token",
            policy_options={"s_max": 2},
        )
    assert "\n" not in str(e.value)
    code, stdout, err = cli(
        [
            "eval",
            "--checkpoint",
            str(result.run_dir),
            "--loops",
            "1,3",
            "--batches",
            "1",
            "--rel-stderr",
            "0",
            "--json",
        ],
        capsys,
    )
    assert code is None or code == 0, err
    payload = json.loads(stdout)
    assert [r["loops"] for r in payload["results"]] == [1, 3]


def test_serve_streams_a_loopified_checkpoint(finetuned):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from loopmdm.serve import create_app

    _, result = finetuned
    with TestClient(create_app(result.run_dir, timeout_s=30, max_steps=16)) as c:
        r = c.post(
            "/api/generate",
            json={
                "steps": 3,
                "num_samples": 1,
                "length": 12,
                "seed": 0,
                "policy": "fixed",
                "policy_options": {"loops": 2},
            },
        )
    events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert (
        r.status_code == 200
        and events[-1]["type"] == "done"
        and events[-1]["report"]["loop_iterations"] == 6
    )


# --------------------------------------------------------------------------- bad inputs


def test_cli_loopify_then_train_init_and_bad_inputs(sources, tiny_corpus, tmp_path, capsys):
    folder = sources["bert"][0]
    code, stdout, _ = cli(
        [
            "loopify",
            "--from",
            str(folder),
            "--loop-layers",
            "1:3",
            "--out",
            str(tmp_path / "ok"),
            "--seq-len",
            "32",
            "--curriculum-steps",
            "4",
            "--json",
        ],
        capsys,
    )
    assert code in (None, 0) and json.loads(stdout)["family"] == "bert"
    code, stdout, err = cli(
        [
            "train",
            "--init",
            str(tmp_path / "ok"),
            "--out",
            str(tmp_path / "ft"),
            "--max-steps",
            "3",
            "--data",
            str(tiny_corpus),
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.eval_every=3",
            "--set",
            "train.eval_batches=1",
            "--no-progress",
            "--json",
        ],
        capsys,
    )
    assert code in (None, 0), err
    assert json.loads(stdout)["step"] == 3
    saved = load_config_file(resolve_checkpoint(tmp_path / "ft"))
    assert (
        saved.train.init == str(resolve_checkpoint(tmp_path / "ok"))
        and saved.diffusion.loop_curriculum_steps == 4
    )
    for spec, words in [
        ("0:9", "outside the source's 4 layers"),
        ("2:2", "is empty"),
        ("3:1", "is reversed"),
        ("x", "must look like A:B"),
    ]:
        code, _, err = cli(
            [
                "loopify",
                "--from",
                str(folder),
                "--loop-layers",
                spec,
                "--out",
                str(tmp_path / spec),
            ],
            capsys,
        )
        assert code == 2 and words in err and err.count("\n") == 1, err


def test_unknown_architecture_lists_the_known_ones(sources, tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ConfigError, match="gpt2") as e:
        loopify(str(folder), "0:1", tmp_path / "out", log=lambda s: None)
    msg = str(e.value)
    assert "\n" not in msg and all(f in msg for f in ("bert", "roberta", "modernbert", "Dream"))


def test_source_without_a_mask_token_says_how_to_add_one(sources, tok, tmp_path):
    from tokenizers import Tokenizer, models

    folder = tmp_path / "nomask"
    make_source("bert", tok, folder)
    vocab = {t: i for t, i in tok.tok.get_vocab().items() if t != "<mask>"}
    Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>")).save(str(folder / "tokenizer.json"))
    with pytest.raises(DataError, match="no mask token") as e:
        loopify(str(folder), "1:2", tmp_path / "out", log=lambda s: None)
    assert "add_special_tokens" in str(e.value) and "resize_token_embeddings" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_pickled_weights_and_missing_config_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickled"):
        loopify(str(folder), "0:1", tmp_path / "out", log=lambda s: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        loopify(str(tmp_path / "empty"), "0:1", tmp_path / "out2", log=lambda s: None)


def test_hub_id_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE=1 forbids downloading") as e:
        loopify("loopmdm-test/not-a-cached-model", "0:1", tmp_path / "out", log=lambda s: None)
    assert "\n" not in str(e.value)


def test_init_without_a_checkpoint_and_with_resume(tmp_path, tiny_run, capsys):
    (tmp_path / "nothing").mkdir()
    code, _, err = cli(
        ["train", "--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], capsys
    )
    assert (
        code == 2 and "--init" in err and "holds no checkpoint" in err and err.count("\n") == 1
    ), err
    code, _, err = cli(
        ["train", "--init", str(tiny_run), "--resume", str(tiny_run), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "exclude each other" in err


def test_config_checks_the_backbone():
    from loopmdm.config import RunConfig

    cfg = RunConfig()
    cfg.model.backbone = "gpt9"
    with pytest.raises(ConfigError, match="unknown backbone 'gpt9'"):
        cfg.validate()
    cfg.model.backbone = "bert"
    with pytest.raises(ConfigError, match="needs model.source_config"):
        cfg.validate()
    cfg.model.backbone, cfg.model.source_config = "loopmdm", {"model_type": "bert"}
    with pytest.raises(ConfigError, match="source_config is set"):
        cfg.validate()
    assert set(BACKBONES.names()) == {"loopmdm", *FAMILIES}
    assert get_backbone("loopmdm").build(RunConfig().model).__class__.__name__ == "LoopMDM"
    assert build_model(RunConfig().model).config.backbone == "loopmdm"


# --------------------------------------------------------------------------- the experiment (smoke test)


def test_loopify_experiment_smoke(tiny_corpus, tmp_path, capsys):
    """Both sources, the three arms (curriculum on), one seed, a few steps each: the files, the equal-FLOPs
    plan, S = 1 exactness of each loopified source, and a second call that reuses everything."""
    from conftest import make_tiny_cfg
    from loopmdm.experiments.loopify import plan_summary, run_loopify_experiment
    from loopmdm.experiments.loopify_config import LoopifyExperimentConfig

    run = make_tiny_cfg(tiny_corpus, tmp_path / "cache")
    run.diffusion.loop_dist, run.diffusion.s_fixed = "fixed", 1
    run.train.eval_batches = 1
    cfg = LoopifyExperimentConfig(
        name="smoke",
        run=run,
        mdm_steps=6,
        bert=dict(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        bert_steps=6,
        loop_layers=[1, 3],
        s_max=2,
        finetune_steps=12,
        finetune_lr=1e-3,
        curriculum_frac=0.5,
        n_evals=2,
        final_eval_batches=1,
        seeds=[0],
        flops_tolerance=0.1,
    )
    res = run_loopify_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    assert {p.name for p in (tmp_path / "exp").iterdir()} >= {
        "results.json",
        "summary.md",
        "results_seed_0.json",
        "loss_vs_flops_mdm.png",
        "loss_vs_flops_bert.png",
    }
    for source in ("mdm", "bert"):
        runs = res["per_seed"][0][source]
        assert runs["source"]["loopify"]["s1_max_rel_diff"] <= TOL
        assert set(runs["finetune"]["final"]) == {1, 2, 4}
        budget = runs["finetune"]["flops"]
        # equal extra training FLOPs, as the trainer counted them
        for arm in ("loopify", "curriculum"):
            assert abs(runs[arm]["flops"] - budget) / budget < 0.1
            assert runs[arm]["steps"] < runs["finetune"]["steps"]
        saved = load_config_file(
            resolve_checkpoint(tmp_path / "exp" / "seed_0" / source / "curriculum")
        )
        assert saved.diffusion.loop_curriculum_steps > 0 and saved.train.init is not None
    # read back as a plain BERT
    assert (tmp_path / "exp" / "seed_0" / "bert" / "hf" / "config.json").is_file()
    md = (tmp_path / "exp" / "summary.md").read_text()
    assert (
        "does loopify + random-S fine-tuning beat fine-tuning as it is" in md
        and "source: bert" in md
    )
    # reuses every run and result
    again = run_loopify_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    assert json.loads(json.dumps(again["summary"])) == json.loads(json.dumps(res["summary"]))
    plan = plan_summary(cfg)
    assert plan["finetune"]["finetune"]["steps"] == 12
