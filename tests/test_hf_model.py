"""Hugging Face format: export -> AutoModel (remote code, offline, local folder) gives the library's logits;
the exported code runs without loopmdm installed; import turns the folder back into the same checkpoint."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from loopmdm.checkpoint import load_model  # noqa: E402
from loopmdm.config import ModelConfig  # noqa: E402
from loopmdm.errors import CheckpointError, ConfigError  # noqa: E402
from loopmdm.hf.export import MODEL_DEFAULTS, MODEL_DIR, REMOTE_FILES, export_hf, import_hf  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    return export_hf(tiny_run, tmp_path_factory.mktemp("hf") / "model")


def _inputs(cfg, mask_id, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.model.vocab_size, (3, cfg.model.max_seq_len), generator=g)
    x[:, ::3] = mask_id  # a third of the positions masked
    return x, torch.tensor([0.2, 0.5, 0.9])


def test_model_fields_match_library_config():
    assert MODEL_DEFAULTS == {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def test_folder_layout_and_config(exported):
    names = {p.name for p in exported.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        *REMOTE_FILES,
    } <= names
    for name in REMOTE_FILES:  # the remote code is the library's own backbone, copied verbatim
        assert (exported / name).read_bytes() == (MODEL_DIR / name).read_bytes()
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["model_type"] == "loopmdm"
    assert cfg["auto_map"]["AutoModelForMaskedLM"] == "modeling_loopmdm.LoopMDMForMaskedLM"
    assert cfg["auto_map"]["AutoModel"] == "modeling_loopmdm.LoopMDMForMaskedLM"
    assert cfg["default_loops"] == 3 and cfg["d_model"] == 32
    from transformers import AutoConfig

    auto = AutoConfig.from_pretrained(str(exported), trust_remote_code=True)
    assert (auto.hidden_size, auto.num_hidden_layers, auto.num_attention_heads) == (32, 4, 2)


@pytest.mark.parametrize("auto", ["AutoModelForMaskedLM", "AutoModel"])
def test_automodel_round_trip_identical_logits(exported, tiny_run, auto, monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = getattr(transformers, auto).from_pretrained(str(exported), trust_remote_code=True).eval()
    # the folder's code, not the package's
    assert type(hf).__module__.startswith("transformers_modules")
    lib, tok, cfg = load_model(tiny_run)
    x, t = _inputs(cfg, tok.mask_id)
    with torch.no_grad():
        for loops in (1, 3, 5):  # 5 > S_max: extrapolation works the same way
            assert torch.equal(
                hf(input_ids=x, timesteps=t, loops=loops).logits, lib(x, t, loops=loops)
            )
        # defaults: S = the training S_max, t = the masked fraction (log-linear schedule)
        frac = (x == tok.mask_id).float().mean(-1)
        assert torch.equal(hf(input_ids=x).logits, lib(x, frac, loops=3))


def test_tokenizer_loads_with_autotokenizer(exported, tiny_run, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_tok = AutoTokenizer.from_pretrained(str(exported), trust_remote_code=True)
    _, tok, _ = load_model(tiny_run)
    text = "def compute(alpha, beta=None):\n    return alpha"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.mask_token_id == tok.mask_id


def test_loss_and_subs(exported, tiny_run):
    from transformers import AutoModelForMaskedLM

    hf = AutoModelForMaskedLM.from_pretrained(str(exported), trust_remote_code=True).eval()
    _, tok, cfg = load_model(tiny_run)
    x, t = _inputs(cfg, tok.mask_id)
    labels = torch.where(x == tok.mask_id, torch.randint(0, 300, x.shape), torch.full_like(x, -100))
    with torch.no_grad():
        out = hf(input_ids=x, timesteps=t, labels=labels)
        subs = hf(input_ids=x, timesteps=t, apply_subs=True).logits
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep].float(), labels[keep])
    assert torch.allclose(out.loss, expected)
    assert torch.isneginf(subs[..., tok.mask_id]).all()
    unmasked = x != tok.mask_id
    assert (subs[unmasked].argmax(-1) == x[unmasked]).all()


def test_exported_code_runs_without_loopmdm(exported, tiny_run, tmp_path):
    """The folder is self-contained: a fresh interpreter that cannot import loopmdm loads it and agrees."""
    lib, tok, cfg = load_model(tiny_run)
    x, t = _inputs(cfg, tok.mask_id)
    torch.save({"x": x, "t": t}, tmp_path / "inputs.pt")
    script = (
        "import sys, torch; sys.modules['loopmdm'] = None\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(exported)!r}, trust_remote_code=True).eval()\n"
        f"d = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)\n"
        "with torch.no_grad(): y = m(input_ids=d['x'], timesteps=d['t'], loops=2).logits\n"
        f"torch.save(y, {str(tmp_path / 'out.pt')!r})\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    p = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), lib(x, t, loops=2))


def test_import_restores_checkpoint(exported, tiny_run, tmp_path):
    run = import_hf(exported, tmp_path / "run")
    a, tok_a, cfg_a = load_model(tiny_run)
    b, tok_b, cfg_b = load_model(run)
    assert cfg_a.to_dict() == cfg_b.to_dict()
    assert tok_a.tok.get_vocab() == tok_b.tok.get_vocab()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_remote_code_is_closed_and_torch_only():
    """Every file the remote code imports with a relative import is exported, and nothing else is imported but
    the standard library, torch and transformers (so the folder works where loopmdm is not installed)."""
    import ast

    needed, todo = set(), ["modeling_loopmdm.py", "configuration_loopmdm.py"]
    while todo:
        name = todo.pop()
        needed.add(name)
        for node in ast.walk(ast.parse((MODEL_DIR / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{name}: {ast.unparse(node)} leaves the folder"
                if f"{node.module}.py" not in needed:
                    todo.append(f"{node.module}.py")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                roots = (
                    [a.name.split(".")[0] for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module.split(".")[0]]
                )
                assert all(
                    r in sys.stdlib_module_names or r in ("torch", "transformers") for r in roots
                ), f"{name}: {ast.unparse(node)}"
    assert needed == set(REMOTE_FILES)


def test_bad_inputs(exported, tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="not empty"):
        export_hf(tiny_run, exported)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not 'loopmdm'"):
        import_hf(other, tmp_path / "out")
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(tmp_path / "missing", tmp_path / "out2")


def _cli(args, monkeypatch, capsys):
    """Run ``loopmdm ARGS`` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from loopmdm.cli import main

    monkeypatch.setattr(sys, "argv", ["loopmdm", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_export_import(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _cli(
        ["export", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "hf"), "--json"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "model.safetensors" in json.loads(out.strip().splitlines()[-1])["files"]
    code, _, err = _cli(
        ["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert load_model(tmp_path / "run")[2].model == load_model(tiny_run)[2].model
    code, _, err = _cli(
        ["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")],
        monkeypatch,
        capsys,
    )
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
