"""Session-scoped tiny models shared by the model tests (built once, read-only by convention)."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor_server.model.loading import LoadedModel, load_model
from tests.fixtures.tiny_models import TINY_ARCHS, make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_model_dir(root, arch) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def tiny_lms(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {arch: load_model(path) for arch, path in tiny_dirs.items()}


@pytest.fixture(params=TINY_ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)
