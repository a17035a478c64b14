"""Exports made on first request, then kept, with the real server and its real worker: one digits job that asked for
no export; its ONNX and pt2 exports are downloaded after it (202 while the worker makes them, then the file), run in
their own runtimes and compared with the PyTorch student on real test images within the manifest's tolerance; the
second download gets the kept file without a second export; an export whose check fails answers with its reason;
another user gets 404."""
from __future__ import annotations

import math

import httpx
import pytest

from service.db import session_scope
from service.models import ExportRequest
from ttm.client import ApiError, Client, sha256_file

from client_helpers import digits_spec, run_cli


def _get(live, token: str, job_id: str, fmt: str) -> httpx.Response:
    return httpx.get(f"{live.url}/v1/jobs/{job_id}/checkpoints/best?format={fmt}",
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _requests(live, job_id: str) -> dict[str, tuple[str, int, int]]:
    with session_scope(live.settings) as session:
        rows = session.query(ExportRequest).filter(ExportRequest.job_id == job_id).all()
        return {r.format: (r.state, r.attempts, r.sends) for r in rows}


def test_exports_are_made_on_first_request_then_kept(live, tmp_path):
    import onnxruntime
    import torch

    from ttm.data import make_loaders
    from ttm.models import build_model
    from ttm.spec import parse_spec
    from ttm.teacher import load_state_dict_file

    spec = digits_spec("export-on-request", epochs=1)
    with Client(live.url, live.alice) as c:
        job = c.wait(c.submit(spec)["id"], timeout=240)
        jid = job["id"]
        assert job["state"] == "succeeded", job

        first = _get(live, live.alice, jid, "onnx")
        assert first.status_code == 202, first.text
        assert first.headers["Retry-After"] == "2"
        body = first.json()
        assert body["export"]["format"] == "onnx" and body["export"]["state"] in ("requested", "running")
        assert body["poll"] == f"/v1/jobs/{jid}/checkpoints/best?format=onnx"
        assert _get(live, live.bob, jid, "onnx").status_code == 404  # another user's job: no such job

        pending: list[dict] = []
        onnx_path = c.download(jid, "best", "onnx", tmp_path / "student.onnx", timeout=240, on_pending=pending.append)
        c.download(jid, "best", "safetensors", tmp_path / "student.safetensors")
        rows = {(k["which"], k["format"]): k for k in c.checkpoints(jid)}
    assert pending and all(p["export"]["format"] == "onnx" for p in pending)
    assert sha256_file(onnx_path) == rows[("best", "onnx")]["sha256"]
    made = rows[("best", "onnx")]["manifest"]["exports"]["onnx"]
    assert made["offered"] and made["opset"] == 18
    assert made["input"]["shape"] == ["batch", 1, 8, 8] and made["input"]["name"] == "input"

    # the CLI waits too, saying what is being made, and saves the file it was promised
    r = run_cli("download", jid, "--format", "pt2", "-o", "student.pt2", "--timeout", "4m", server=live.url,
                token=live.alice, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"job {jid}'s best pt2 export" in r.stderr and r.stdout.strip() == "student.pt2"

    # each file in its own runtime equals the PyTorch student on real test images, within the manifest's tolerance
    loaders = make_loaders(parse_spec(spec).dataset, batch_size=64, device=torch.device("cpu"), seed=0,
                           num_workers=0, test_batch_size=64)
    images = next(iter(loaders.test))[0].float()
    student = build_model("resnet8", 10, 1).eval()
    student.load_state_dict(load_state_dict_file(tmp_path / "student.safetensors"))
    with torch.no_grad():
        expected = student(images)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = {"onnx": torch.from_numpy(session.run(["logits"], {"input": images.numpy()})[0]),
           "pt2": torch.export.load(str(tmp_path / "student.pt2")).module()(images)}
    with Client(live.url, live.alice) as c:
        manifests = {k["format"]: k["manifest"] for k in c.checkpoints(jid) if k["which"] == "best"}
    for fmt, logits in got.items():
        check = manifests[fmt]["exports"][fmt]["check"]
        assert float((logits - expected).abs().max()) <= check["tolerance"], fmt
        assert check["images"] == 64 and check["max_abs_diff"] <= check["tolerance"]

    # kept: the second request gets the same file at once, and no export is made again
    again = _get(live, live.alice, jid, "onnx")
    assert again.status_code == 200 and again.headers["X-TTM-Sha256"] == sha256_file(onnx_path)
    assert _requests(live, jid) == {"onnx": ("made", 1, 1), "pt2": ("made", 1, 1)}
    assert (live.home / "worker.log").read_text().count(f"job {jid}: making its best onnx export") == 1

    # a student whose export fails its check: the reason, at once, on every request; no second attempt
    best_pt = live.settings.artifact_dir / "jobs" / jid / "best.pt"
    weights = torch.load(best_pt, weights_only=True)
    torch.save({k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in weights.items()}, best_pt)
    with Client(live.url, live.alice) as c, pytest.raises(ApiError) as refused:
        c.download(jid, "best", "torchscript", tmp_path / "student.ts", timeout=240)
    assert refused.value.status == 409 and refused.value.code == "export_refused"
    assert "its logits differ from PyTorch's by up to nan" in refused.value.message
    twice = _get(live, live.alice, jid, "torchscript")
    assert twice.status_code == 409 and twice.json()["error"]["message"] == refused.value.message
    assert _requests(live, jid)["torchscript"] == ("failed", 1, 1)
    assert not (tmp_path / "student.ts").exists()
