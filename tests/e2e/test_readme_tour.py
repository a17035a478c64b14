"""The README's five-minute tour, run as a newcomer pastes it: every bash and Python block of the section, in order,
in one shell (`set -euo pipefail`: a failing command fails the test), against the `ttm serve` the tour itself
starts on the embedded defaults. Only the tour's TTM_HOME and port are swapped for a fresh folder and a free one, so
the docs cannot drift from what works."""
from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def tour_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    start = text.index("## A five-minute tour")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    section = section[:section.index("### In CI")] if "### In CI" in section else section
    return BLOCK.findall(section)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_tour_runs_as_pasted(tmp_path: Path):
    blocks = tour_blocks()
    assert [kind for kind, _ in blocks].count("bash") >= 3 and any(kind == "python" for kind, _ in blocks)
    home, port = tmp_path / "home", free_port()
    work = tmp_path / "work"
    work.mkdir()
    for name in (".venv", "examples"):  # the tour runs from the repository's folder; its files go to `work`
        (work / name).symlink_to(REPO / name)
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT"]
    for n, (kind, body) in enumerate(blocks):
        body = body.replace("/tmp/ttm-tour", str(home)).replace("8000", str(port))
        if kind == "bash":
            script.append(body)
        else:
            (work / f"tour_{n}.py").write_text(body)
            script.append(f"python tour_{n}.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")} | {"COLUMNS": "200"}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}"
    out = done.stdout
    assert '"status":"ready"' in out.replace(" ", "")  # the server was up before the first request
    assert re.search(r'"id":\s*"art_', out)  # the teacher checkpoint went back in as an artifact
    for image in ("ankle-boot", "bag", "sneaker", "trouser"):  # ttm predict: one line per image
        assert re.search(rf"examples/images/{image}\.png\t.+ [01]\.\d{{3}}", out), out[-3000:]
    assert re.search(r"\[\('[^']+', [01]\.\d+\), \('[^']+', [01]\.\d+\)\]", out), out[-3000:]  # the Python lines
    assert (work / "student.safetensors").is_file() and (work / "teacher.safetensors").is_file()
