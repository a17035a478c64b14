"""Fixtures for the client tests: an API-only server per test, the shared live stack (API + a real worker), and
teacher weights on disk (defined in client_helpers, shared with tests/browser)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client_helpers import api, live, teacher_pth  # noqa: E402,F401  (fixtures)
