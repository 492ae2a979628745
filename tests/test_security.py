"""Safe loading: a pickle whose ``__reduce__`` would run code is placed everywhere the library reads a file
(checkpoint weights, optimizer / RNG / EMA tensors, JSON files, a ``pytorch_model.bin``, a transformers
folder, the data cache); each is refused with an error naming the file, and the payload never runs (it would
create a marker file). A static check keeps unsafe loaders out of the source tree."""

import ast
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import loopmdm
from loopmdm.checkpoint import load_model, resolve_checkpoint
from loopmdm.errors import LoopMDMError
from loopmdm.train import Trainer


class Payload:
    """Unpickling this runs ``exec``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def pickle_bytes(marker):
    return pickle.dumps(Payload(marker))


def torch_save_bytes(marker, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload(marker)}, path)  # a zip archive with the payload inside data.pkl
    return path.read_bytes()


def test_the_payload_is_live(tmp_path):
    """Control: the same bytes DO run code when unpickled, so the refusals below are meaningful."""
    marker = tmp_path / "control"
    pickle.loads(pickle_bytes(marker))
    assert marker.read_text() == "pwned"
    marker.unlink()
    archive = tmp_path / "x.pt"
    archive.write_bytes(torch_save_bytes(marker, tmp_path))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(archive, weights_only=True)  # the only torch.load the library would ever allow
    assert not marker.exists()
    torch.load(archive, weights_only=False)
    assert marker.exists()


@pytest.fixture
def ckpt(tiny_run, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(resolve_checkpoint(tiny_run), folder)
    return folder


def plant(folder, name, data, update_index=True):
    """Put ``data`` at ``folder/name``; with ``update_index`` the attacker also fixes index.json's checksum, so
    the refusal has to come from the format check, not from the integrity check."""
    (folder / name).write_bytes(data)
    index_path = folder / "index.json"
    if update_index and index_path.is_file():
        index = json.loads(index_path.read_text())
        index["files"][name] = hashlib.sha256(data).hexdigest()
        index.setdefault("sizes", {})[name] = len(data)
        index_path.write_text(json.dumps(index))


def resume(cfg, folder, tmp_path):
    Trainer(cfg, tmp_path / "resumed", progress=False, log=lambda s: None).resume(folder)


LOADERS = {
    "model.safetensors": lambda f, cfg, tmp: load_model(f),
    "config.json": lambda f, cfg, tmp: load_model(f),
    "tokenizer.json": lambda f, cfg, tmp: load_model(f),
    "index.json": lambda f, cfg, tmp: load_model(f),
    "ema.safetensors": lambda f, cfg, tmp: load_model(f, ema=True),
    "optimizer.safetensors": lambda f, cfg, tmp: resume(cfg, f, tmp),
    "rng.safetensors": lambda f, cfg, tmp: resume(cfg, f, tmp),
    "trainer_state.json": lambda f, cfg, tmp: resume(cfg, f, tmp),
}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", list(LOADERS))
def test_planted_pickle_is_refused_and_never_runs(ckpt, tiny_cfg, tmp_path, name, kind):
    marker = tmp_path / "marker"
    data = pickle_bytes(marker) if kind == "pickle" else torch_save_bytes(marker, tmp_path)
    plant(ckpt, name, data, update_index=name != "index.json")
    with pytest.raises(LoopMDMError) as e:
        LOADERS[name](ckpt, tiny_cfg, tmp_path)
    msg = str(e.value)
    assert name in msg and "\n" not in msg
    if name.endswith(".safetensors"):
        assert "pickle / torch.save file" in msg and "refused" in msg
    assert not marker.exists()


@pytest.mark.parametrize("bin_name", ["pytorch_model.bin", "model.pt", "checkpoint.ckpt"])
def test_pickle_only_folders_are_refused(ckpt, tmp_path, bin_name):
    marker = tmp_path / "marker"
    (ckpt / "model.safetensors").unlink()
    (ckpt / "index.json").unlink()
    (ckpt / bin_name).write_bytes(pickle_bytes(marker))
    with pytest.raises(
        LoopMDMError,
        match=f"{bin_name}' is a pickle-format file; LoopMDM loads weights only from safetensors",
    ):
        load_model(ckpt)
    bare = tmp_path / "bare"  # a folder with nothing but the pickle
    bare.mkdir()
    (bare / bin_name).write_bytes(pickle_bytes(marker))
    with pytest.raises(LoopMDMError, match="pickle-format file"):
        load_model(bare)
    assert not marker.exists()


def test_transformers_folder_with_pickle_weights_is_refused(ckpt, tmp_path):
    hf_model = pytest.importorskip("loopmdm.hf.export")
    marker = tmp_path / "marker"
    hf = tmp_path / "hf"
    hf.mkdir()
    cfg = json.loads((ckpt / "config.json").read_text())
    (hf / "config.json").write_text(
        json.dumps({"model_type": "loopmdm", "loopmdm_run_config": cfg})
    )
    shutil.copy(ckpt / "tokenizer.json", hf / "tokenizer.json")
    (hf / "pytorch_model.bin").write_bytes(pickle_bytes(marker))
    with pytest.raises(LoopMDMError, match="pickle"):
        hf_model.import_hf(hf, tmp_path / "out")
    (hf / "model.safetensors").write_bytes(torch_save_bytes(marker, tmp_path))
    with pytest.raises(LoopMDMError, match="model.safetensors' is a pickle / torch.save file"):
        hf_model.import_hf(hf, tmp_path / "out2")
    assert not marker.exists()


def test_safetensors_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    """A safetensors header of 0x..80 bytes makes the file's first byte 0x80, pickle's PROTO opcode: a real
    trainer checkpoint hit this (a 2944-byte header); it must load, not be refused as a pickle."""
    import struct

    from loopmdm.checkpoint.load import load_safetensors

    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}).encode()
    header += b" " * (0x180 - len(header))  # the format allows space padding of the header
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + weight.numpy().tobytes())
    assert path.read_bytes()[:1] == b"\x80"
    assert torch.equal(load_safetensors(path)["w"], weight)


def test_poisoned_data_cache_is_rebuilt_not_unpickled(tiny_corpus, tmp_path):
    from loopmdm.config import DataConfig
    from loopmdm.data import prepare_data

    cfg = DataConfig(source=str(tiny_corpus), val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    clean = prepare_data(cfg, 320, 32)
    marker = tmp_path / "marker"
    (train_npy,) = (tmp_path / "cache").rglob("train.npy")
    np.save(train_npy, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    again = prepare_data(cfg, 320, 32)
    np.testing.assert_array_equal(again.train, clean.train)
    assert not marker.exists()


# --------------------------------------------------------------------------- static check of the source tree


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


def _kw(node, key):
    for k in node.keywords:
        if k.arg == key and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def test_no_unsafe_loader_in_the_source_tree():
    root = Path(loopmdm.__file__).parent
    problems = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(root)}:{node.lineno}"
            if owner == "torch" and name == "load" and _kw(node, "weights_only") is not True:
                problems.append(f"{where} torch.load without weights_only=True")
            if owner in ("pickle", "dill", "cloudpickle", "joblib", "marshal") and name.startswith(
                "load"
            ):
                problems.append(f"{where} {owner}.{name}")
            if owner == "np" and name == "load" and _kw(node, "allow_pickle") is not False:
                problems.append(f"{where} np.load without allow_pickle=False")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
                problems.append(f"{where} yaml.{name} (use yaml.safe_load)")
            if name == "from_pretrained" and _kw(node, "use_safetensors") is False:
                problems.append(f"{where} from_pretrained(use_safetensors=False)")
    assert not problems, problems
