"""Test-wide fixtures.

The auditor client keeps every tree head a lab signs in a head store that persists across
runs (``$AUDITOR_HEAD_STORE``, default ``~/.local/share/auditor/heads``). Many tests reuse
one lab key with a fresh ledger each time, which to a persistent store looks exactly like a
lab that rewrote its log (a split view). So every test gets its own empty store, and so do
module- and session-scoped fixtures that run before it; the developer's real store is never
touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor_client.headstore import HEAD_STORE_ENV


@pytest.fixture(scope="session", autouse=True)
def _session_head_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store for clients made by fixtures wider than one test (and their subprocesses)."""
    path = tmp_path_factory.mktemp("heads-session")
    before = os.environ.get(HEAD_STORE_ENV)
    os.environ[HEAD_STORE_ENV] = str(path)
    yield path
    if before is None:
        os.environ.pop(HEAD_STORE_ENV, None)
    else:
        os.environ[HEAD_STORE_ENV] = before


@pytest.fixture(autouse=True)
def head_store_dir(
    _session_head_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """This test's own head store directory (also seen by subprocesses it starts)."""
    path = tmp_path_factory.mktemp("heads")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HEAD_STORE_ENV, str(path))
        yield path
