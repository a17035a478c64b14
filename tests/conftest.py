"""Shared fixtures. Torch threads stay low: the suite shares a 2-core machine with real servers and workers."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture
def fashion_dir():
    if not os.path.isdir(FASHION_DIR):
        pytest.fail(f"{FASHION_DIR} is missing: apt-get install -y dataset-fashion-mnist (./dev test does it)")
    return FASHION_DIR
