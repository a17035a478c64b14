"""Fixtures for the client tests: an API-only server per test, the shared live stack (API + a real worker), and
teacher weights on disk."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from client_helpers import Stack, api_server, live_stack, save_teacher  # noqa: E402


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Stack]:
    """The API alone: submitted jobs stay queued until a test moves them (svc_helpers.run_job)."""
    with api_server(tmp_path / "home") as stack:
        yield stack


@pytest.fixture(scope="session")
def live() -> Stack:
    """The API plus one real worker (shared with tests/browser; jobs run one at a time)."""
    return live_stack()


@pytest.fixture(scope="session")
def teacher_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher"))
