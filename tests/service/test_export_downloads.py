"""GET /v1/jobs/{id}/checkpoints/best?format=onnx|pt2|torchscript: an export is offered once the worker has recorded
it (ttm.export wrote and checked it); a succeeded job's export that was not made is requested (202 until a worker
has made it; tests/client/test_export_on_request.py runs that with a real worker); without one, the answer says why
and what to do. A stand-in writes the rows a worker would (svc_helpers.run_job)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select

from service.db import session_scope
from service.models import Checkpoint, ExportRequest

from svc_helpers import bearer, run_job, spec_ce, submit


def _get(client, token, job_id: str, fmt: str, which: str = "best"):
    return client.get(f"/v1/jobs/{job_id}/checkpoints/{which}?format={fmt}", headers=bearer(token))


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _messages(settings) -> list[Path]:
    """The messages waiting in the embedded broker (kombu's filesystem transport: a file each)."""
    return sorted(p for p in (settings.broker_dir / "queue").iterdir() if p.is_file())


def test_an_export_not_made_is_requested_once_and_then_answered_from_its_row(client, users, settings):
    plain = submit(client, users.alice)
    jid = plain["id"]
    err = _error(_get(client, users.alice, jid, "onnx"), 404)  # queued: made on request once it has succeeded
    assert err["code"] == "export_not_requested" and "once it has succeeded" in err["message"]
    run_job(settings, jid, to="succeeded", epochs=1, checkpoint=True)
    before = len(_messages(settings))

    first, again = _get(client, users.alice, jid, "onnx"), _get(client, users.alice, jid, "onnx")
    for r in (first, again):
        assert r.status_code == 202, r.text
        assert r.headers["retry-after"] == "2"
        body = r.json()
        assert body["export"] == {**body["export"], "job_id": jid, "which": "best", "format": "onnx",
                                  "state": "requested", "attempts": 0}
        assert body["poll"] == f"/v1/jobs/{jid}/checkpoints/best?format=onnx" and body["retry_after"] == 2
        assert "waits for a worker of queue cpu" in body["message"]
    assert len(_messages(settings)) == before + 1  # one request, one message: the second found the row
    with session_scope(settings) as session:
        row = session.get(ExportRequest, (jid, "best", "onnx"))
        assert row is not None and row.sends == 1

    # someone else's job is no one's: 404, and nothing requested
    assert _error(_get(client, users.bob, jid, "pt2"), 404)["code"] == "not_found"
    with session_scope(settings) as session:
        assert session.get(ExportRequest, (jid, "best", "pt2")) is None
    manifest = client.get(f"/v1/jobs/{jid}/checkpoints/best/manifest?format=pt2", headers=bearer(users.alice))
    assert _error(manifest, 404)["code"] == "export_not_made"
    assert _error(_get(client, users.alice, jid, "onnx", which="last"), 404)["code"] == "export_best_only"
    assert _error(_get(client, users.alice, jid, "tflite"), 422)["field"] == "format"

    # an export that failed is answered at once with its reason, every time, and never sent again
    with session_scope(settings) as session:
        row = session.get(ExportRequest, (jid, "best", "onnx"))
        assert row is not None
        row.state, row.reason = "failed", "the export process was killed by SIGKILL"
    for _ in range(2):
        err = _error(_get(client, users.alice, jid, "onnx"), 409)
        assert err == {"code": "export_failed",
                       "message": f"job {jid}'s onnx export failed: the export process was killed by SIGKILL"}
    assert len(_messages(settings)) == before + 1

    # the old spelling asked for TorchScript: the job ended before its export was made
    old = submit(client, users.alice, {**spec_ce(), "output": {"torchscript": True}})
    run_job(settings, old["id"], to="failed")
    err = _error(_get(client, users.alice, old["id"], "torchscript"), 404)
    assert err["code"] == "export_missing" and "ended (failed)" in err["message"]


def test_an_asked_export_is_offered_or_its_refusal_said(client, users, settings):
    job = submit(client, users.alice, {**spec_ce(), "output": {"formats": ["onnx", "pt2"]}})
    jid = job["id"]
    err = _error(_get(client, users.alice, jid, "onnx"), 404)
    assert err["code"] == "checkpoint_not_ready" and "when training ends (state: queued)" in err["message"]
    assert _error(_get(client, users.alice, jid, "pt2", which="last"), 404)["code"] == "export_best_only"

    run_job(settings, jid, epochs=2, checkpoint=True)
    data = b"an ExportedProgram archive"
    (settings.home / "runs" / jid / "best.pt2").write_bytes(data)
    exports = {"onnx": {"offered": False, "reason": "its logits differ from PyTorch's by up to 0.5 on 64 test "
                                                    "image(s), over the tolerance 0.0001", "opset": 18},
               "pt2": {"offered": True, "file": "best.pt2"}}
    with session_scope(settings) as session:  # what the worker records from best.json once the exports are made
        best = session.scalar(select(Checkpoint).where(Checkpoint.job_id == jid, Checkpoint.which == "best"))
        assert best is not None
        manifest = {**(best.manifest or {}), "exports": exports}
        best.manifest = manifest
        session.add(Checkpoint(job_id=jid, which="best", format="pt2", path=str(settings.home / "runs" / jid /
                                                                                "best.pt2"),
                               sha256=hashlib.sha256(data).hexdigest(), size=len(data), epoch=2, manifest=manifest))
    run_job(settings, jid, to="succeeded")

    err = _error(_get(client, users.alice, jid, "onnx"), 409)  # refused when made: not made again
    assert err["code"] == "export_refused"
    assert err["message"] == (f"job {jid}'s onnx export was refused when it was made: its logits differ from "
                              "PyTorch's by up to 0.5 on 64 test image(s), over the tolerance 0.0001")
    r = _get(client, users.alice, jid, "pt2")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-disposition"].endswith(f'{jid}-best.pt2"')
    listed = client.get(f"/v1/jobs/{jid}/checkpoints", headers=bearer(users.alice)).json()
    assert ("best", "pt2") in {(c["which"], c["format"]) for c in listed}
    manifest = client.get(f"/v1/jobs/{jid}/checkpoints/best/manifest?format=pt2", headers=bearer(users.alice))
    assert manifest.json()["exports"]["onnx"]["offered"] is False


def test_requests_at_once_make_one_export(live_server, users, settings):
    """Eight clients ask for the same export at the same moment: all are told it is being made, one message is sent."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    job = httpx.post(f"{live_server}/v1/jobs", json=spec_ce(), headers=bearer(users.alice), timeout=30).json()
    run_job(settings, job["id"], to="succeeded", epochs=1, checkpoint=True)
    before = len(_messages(settings))

    def get(_: int) -> httpx.Response:
        return httpx.get(f"{live_server}/v1/jobs/{job['id']}/checkpoints/best?format=pt2", headers=bearer(users.alice),
                         timeout=30)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(get, range(8)))
    assert [r.status_code for r in responses] == [202] * 8, [r.text for r in responses if r.status_code != 202]
    assert len(_messages(settings)) == before + 1
    with session_scope(settings) as session:
        row = session.get(ExportRequest, (job["id"], "best", "pt2"))
        assert row is not None and row.sends == 1
