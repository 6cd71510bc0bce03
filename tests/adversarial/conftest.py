"""Fixtures of the adversarial suite: the lab (built once per session) and its servers.

``ADVERSARIAL_LAB_DIR=/some/dir`` keeps the built lab across sessions (it is rebuilt only
when ``lab.LAB_FORMAT`` changes); by default it lives in the session's temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.adversarial.lab import AttackLab, Server, build_attack_lab, check_memorized

HEAD_STORE_ENV = "AUDITOR_HEAD_STORE"


@pytest.fixture(scope="session")
def attack_lab(tmp_path_factory: pytest.TempPathFactory) -> AttackLab:
    """The lab, with the model's memorization of the private chats checked."""
    cached = os.environ.get("ADVERSARIAL_LAB_DIR")
    root = Path(cached) if cached else tmp_path_factory.mktemp("attack-lab")
    lab = build_attack_lab(root)
    check_memorized(lab)
    return lab


@pytest.fixture(scope="session", autouse=True)
def _head_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never let the client's head store write into the developer's home directory."""
    before = os.environ.get(HEAD_STORE_ENV)
    if before is None:
        os.environ[HEAD_STORE_ENV] = str(tmp_path_factory.mktemp("adversarial-heads"))
    yield
    if before is None:
        os.environ.pop(HEAD_STORE_ENV, None)


StartServer = Callable[..., Server]


@pytest.fixture(scope="session")
def shared_server(
    attack_lab: AttackLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartServer]:
    """``shared_server("withheld_guard")``: one server per set of defences turned off,
    shared by every module that asks (each attack uses its own auditors, so their quotas
    and withheld budgets never mix). Tests that change what the server does for everyone
    (throttle an address, load it) use :func:`start_server` instead."""
    servers: dict[tuple[str, ...], Server] = {}

    def get(*off: str) -> Server:
        key = tuple(sorted(off))
        if key not in servers or not servers[key].alive:
            servers[key] = attack_lab.start(tmp_path_factory.mktemp("state"), off=off)
        return servers[key]

    yield get
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def start_server(
    attack_lab: AttackLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartServer]:
    """``start_server("withheld_guard", ...)`` starts a server of this module's own with
    those defences off (none named: the real ``auditor-server serve``); all are stopped
    after the module."""
    started: list[Server] = []

    def start(*off: str) -> Server:
        server = attack_lab.start(tmp_path_factory.mktemp("state"), off=off)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
