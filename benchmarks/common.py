"""What every benchmark records beside its figures: the command, the machine, the date, the versions."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "cpu": _cpu_model(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(name: str, figures: dict, out: str | None = None) -> Path:
    record = {"benchmark": name, "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(),
              **figures}
    path = Path(out) if out else RESULTS / f"{name}-{'cuda' if 'gpu' in record['machine'] else 'cpu'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return path
