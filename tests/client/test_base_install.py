"""`pip install ttm` with no extras is what a CI job installs: the spec, the SDK and the client commands, no torch.

This test builds such a venv from this checkout (from the package index, as a user's `pip install` would) and runs
its `ttm submit --wait --min-accuracy` against the live server and worker. Run it alone with `-m base_install`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ttm.client_cli import Exit

from client_helpers import digits_spec

pytestmark = pytest.mark.base_install

REPO = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would lead the new venv to ours."""
    drop = ("TTM_", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", **extra)
    return env


def _source_copy(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored), so pip builds in a folder of its own
    and leaves no build/ or egg-info behind in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base-install")
    src = _source_copy(root / "src")
    venv = root / "venv"
    # no pip inside the venv (ensurepip costs seconds): this interpreter's pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        "--no-compile", "--disable-pip-version-check", str(src)],
                       env=_clean_env(), capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nbase install of ttm: {seconds:.1f} s")
    (root / "install_seconds.txt").write_text(f"{seconds:.2f}\n")
    return venv


def _ttm(venv: Path, *args: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "ttm"), *args], env=_clean_env(**env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_base_install_has_no_torch(base_venv, tmp_path):
    python = str(base_venv / "bin" / "python")
    for module in ("torch", "torchvision", "fastapi", "sqlalchemy", "celery"):
        r = subprocess.run([python, "-c", f"import {module}"], env=_clean_env(), capture_output=True, text=True)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"{module} is in the base install"
    r = subprocess.run([python, "-c", "import ttm.spec, ttm.client, ttm.client_cli, sys; "
                                      "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"],
                       env=_clean_env(), capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_the_base_cli_says_what_to_install(base_venv, tmp_path):
    r = _ttm(base_venv, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for command in ("submit", "jobs", "status", "download", "train", "serve", "admin"):
        assert command in r.stdout
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(digits_spec("local", epochs=1)))
    r = _ttm(base_venv, "train", "spec.yaml", cwd=tmp_path)
    assert r.returncode == 1 and "ttm[train]" in r.stderr and "Traceback" not in r.stderr, r.stderr
    for command in ("serve", "admin"):  # loaded lazily or replaced by a stub: either way no traceback
        r = _ttm(base_venv, command, "--help", cwd=tmp_path)
        assert "Traceback" not in r.stderr, r.stderr
    r = _ttm(base_venv, "validate", "spec.yaml", cwd=tmp_path)
    assert r.returncode == 0 and '"resnet8"' in r.stdout, r.stderr


def test_base_install_submit_wait_min_accuracy(base_venv, live, tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(digits_spec("base-install", epochs=1)))
    server = dict(TTM_SERVER=live.url, TTM_TOKEN=live.alice)
    r = _ttm(base_venv, "submit", "spec.yaml", "--wait", "--timeout", "3m", "--min-accuracy", "1", cwd=tmp_path,
             **server)
    assert r.returncode == Exit.SUCCEEDED, r.stderr
    assert r.stdout.strip().startswith("job_") and "succeeded" in r.stderr
    # one epoch does not reach 100 % top-1: the job succeeds, the gate does not
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(digits_spec("base-install-gate", epochs=1)))
    r = _ttm(base_venv, "submit", "spec.yaml", "--wait", "--timeout", "3m", "--min-accuracy", "100",
             cwd=tmp_path, **server)
    assert r.returncode == Exit.BELOW_MIN_ACCURACY, r.stderr
    assert "below --min-accuracy" in r.stderr
    # a fraction, or more than 100 %, is a mistake said before anything is submitted
    for wrong, words in (("0.7", "is it a fraction? as a percentage that is 70"), ("170", "between 1 and 100")):
        r = _ttm(base_venv, "submit", "spec.yaml", "--min-accuracy", wrong, cwd=tmp_path, **server)
        said = " ".join(r.stderr.replace("│", " ").split())  # rich's box may wrap the message
        assert r.returncode == 2 and words in said and r.stdout == "", r.stderr
