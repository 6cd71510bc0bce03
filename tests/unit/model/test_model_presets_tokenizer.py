"""Preset validation and pinned defaults; the byte-level BPE tokenizer trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from auditor_server.errors import ConfigError, InputError
from auditor_server.model.presets import PRESETS, ModelPreset, get_preset
from auditor_server.model.tokenizer import SPECIAL_TOKEN, train_tokenizer
from tests.fixtures.tiny_models import TINY_SENTENCES


def test_demo_preset_is_pinned() -> None:
    # Changing these changes every demo model hash and the measured recall figures:
    # update the figures in the report/docs together with this test.
    assert dataclasses.asdict(PRESETS["demo"]) == {
        "name": "demo",
        "vocab_size": 4096,
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 256,
        "n_positions": 128,
        "block_size": 128,
        "epochs": 24,
        "batch_size": 16,
        "lr": 1e-3,
        "warmup_fraction": 0.05,
        "min_lr_fraction": 0.1,
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "dropout": 0.0,
        "bf16_autocast": True,
    }


def test_presets_are_named_after_their_keys() -> None:
    assert set(PRESETS) == {"tiny", "demo"}
    for key, preset in PRESETS.items():
        assert preset.name == key
        assert get_preset(key) is preset


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="choose one of demo, tiny"):
        get_preset("huge")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_head": 3}, "must divide n_embd"),
        ({"block_size": 256}, "block_size"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_inconsistent_presets_are_rejected(change: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(PRESETS["tiny"], **change)  # type: ignore[arg-type]


def test_preset_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ModelPreset("x", 512, 2, 2, 64, 64, 64, 1, 8, 1e-3)  # type: ignore[misc]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TINY_SENTENCES * 3, vocab_size=320, out_dir=out)
    return out


def test_tokenizer_is_saved_as_a_standard_hf_tokenizer(tok_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / name).is_file(), name
    special = json.loads((tok_dir / "special_tokens_map.json").read_text())
    assert set(special.values()) == {SPECIAL_TOKEN}
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    assert tok.bos_token == tok.eos_token == tok.pad_token == tok.unk_token == SPECIAL_TOKEN
    assert len(tok) <= 320
    assert (
        tok("hello", add_special_tokens=True)["input_ids"]
        == tok("hello", add_special_tokens=False)["input_ids"]
    ), "GPT-2 style: no BOS is added"


@pytest.mark.parametrize("text", ["Ada Lovelace", "naïve café ✓ 你好", "tabs\tand\nnewlines  ", ""])
def test_tokenizer_round_trips_any_text(tok_dir: Path, text: str) -> None:
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    assert tok.decode(tok(text)["input_ids"]) == text


def test_space_led_words_tokenize_the_same_alone_and_in_context(tok_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    prompt, completion = "Ada Lovelace was born in", " London and worked"
    joint = tok(prompt + completion)["input_ids"]
    assert joint == tok(prompt)["input_ids"] + tok(completion)["input_ids"]


def test_tokenizer_merges_frequent_words(tok_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    assert len(tok(" capital")["input_ids"]) < len(b" capital")


def test_tokenizer_rejects_a_vocab_too_small_for_the_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 257"):
        train_tokenizer(["abc"], vocab_size=200, out_dir=tmp_path)


def test_tokenizer_rejects_no_texts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty set of texts"):
        train_tokenizer([], vocab_size=300, out_dir=tmp_path)
