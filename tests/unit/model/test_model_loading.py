"""Offline loading, file hashing and configuration errors of ``auditor_server.model.loading``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from auditor_server.errors import ConfigError
from auditor_server.model.loading import LoadedModel, hash_model_files, load_model
from tests.fixtures.tiny_models import make_tiny_model_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_loads_every_arch_offline_in_eval_mode(
    arch: str, tiny_lms: dict[str, LoadedModel], tiny_dirs: dict[str, Path]
) -> None:
    lm = tiny_lms[arch]
    assert lm.model.config.model_type == arch
    assert not lm.model.training
    assert lm.device == torch.device("cpu")
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert lm.tokenizer.pad_token is not None
    assert lm.tokenizer.padding_side == "right"
    assert lm.model_dir == tiny_dirs[arch].resolve()
    assert lm.max_positions == 128
    for digest in (lm.model_hash, lm.tokenizer_hash):
        assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64


def test_hashes_are_stable_and_location_independent(
    tmp_path: Path, tiny_dirs: dict[str, Path]
) -> None:
    src = tiny_dirs["gpt2"]
    first = hash_model_files(src)
    assert hash_model_files(src) == first
    copy = _copy(src, tmp_path / "elsewhere")
    (copy / "README.md").write_text("unrelated files do not count\n")
    assert hash_model_files(copy) == first
    assert load_model(copy).model_hash == first[0]


def test_same_seed_same_hash_other_seed_other_hash(tmp_path: Path) -> None:
    a = hash_model_files(make_tiny_model_dir(tmp_path / "a", "llama", seed=3))
    b = hash_model_files(make_tiny_model_dir(tmp_path / "b", "llama", seed=3))
    c = hash_model_files(make_tiny_model_dir(tmp_path / "c", "llama", seed=4))
    assert a == b
    assert c[0] != a[0] and c[1] == a[1]


def test_flipping_one_weight_byte_changes_only_model_hash(
    tmp_path: Path, tiny_dirs: dict[str, Path]
) -> None:
    d = _copy(tiny_dirs["gpt_neox"], tmp_path / "m")
    model_hash, tok_hash = hash_model_files(d)
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    new_model_hash, new_tok_hash = hash_model_files(d)
    assert new_model_hash != model_hash
    assert new_tok_hash == tok_hash


def test_editing_config_changes_model_hash(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = _copy(tiny_dirs["gpt2"], tmp_path / "m")
    before = hash_model_files(d)[0]
    config = json.loads((d / "config.json").read_text())
    config["layer_norm_epsilon"] = 1e-3
    (d / "config.json").write_text(json.dumps(config))
    assert hash_model_files(d)[0] != before


@pytest.mark.parametrize(
    "name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
)
def test_editing_a_tokenizer_file_changes_only_tokenizer_hash(
    tmp_path: Path, tiny_dirs: dict[str, Path], name: str
) -> None:
    d = _copy(tiny_dirs["gpt2"], tmp_path / "m")
    model_hash, tok_hash = hash_model_files(d)
    with (d / name).open("a") as handle:
        handle.write(" ")
    new_model_hash, new_tok_hash = hash_model_files(d)
    assert new_model_hash == model_hash
    assert new_tok_hash != tok_hash


def test_missing_dir_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        hash_model_files(tmp_path / "nope")


def test_file_instead_of_dir_raises(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(b"\x00")
    with pytest.raises(ConfigError, match="not a directory"):
        load_model(f)


def test_empty_dir_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_model(tmp_path)


def test_dir_without_weights_raises(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = _copy(tiny_dirs["gpt2"], tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no model weights"):
        load_model(d)


def test_dir_without_tokenizer_raises(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = _copy(tiny_dirs["gpt2"], tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="has no tokenizer"):
        load_model(d)


def test_garbage_files_raise_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ this is not json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    (tmp_path / "tokenizer.json").write_text("garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        load_model(tmp_path)


def test_garbage_weights_raise_config_error(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = _copy(tiny_dirs["gpt2"], tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ConfigError, match="cannot load model weights"):
        load_model(d)


def test_pad_token_falls_back_to_eos(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = _copy(tiny_dirs["gpt2"], tmp_path / "m")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((d / name).read_text())
        data.pop("pad_token")
        (d / name).write_text(json.dumps(data))
    lm = load_model(d)
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token
    assert lm.tokenizer.pad_token_id == lm.tokenizer.eos_token_id


def test_dtype_is_honoured(tiny_dirs: dict[str, Path]) -> None:
    lm = load_model(tiny_dirs["llama"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())


def test_bad_device_raises_config_error(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="invalid device"):
        load_model(tiny_dirs["gpt2"], device="not-a-device")


def test_garbage_tokenizer_raises_config_error(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = _copy(tiny_dirs["gpt2"], tmp_path / "m")
    (d / "tokenizer.json").write_text("{ not a tokenizer")
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        load_model(d)
