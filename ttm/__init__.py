"""ttm: TTM/WTTM distillation (Zheng & Yang, ICLR 2024), its trainer, and a client for its job server.

`ttm.load_student(path)` gives a downloaded student as a ready nn.Module (needs the `train` extra: torch).
Importing `ttm` itself imports no torch: the base install (client and spec) works without it.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_student":
        from ttm.student import load_student

        return load_student
    raise AttributeError(f"module 'ttm' has no attribute {name!r}")
