"""GET /v1/jobs/{id}/checkpoints/best?format=onnx|pt2|torchscript: an export is offered once the worker has recorded
it (ttm.export wrote and checked it); without one, the 404 says why and what to do. A stand-in writes the rows a
worker would (svc_helpers.run_job)."""
from __future__ import annotations

import hashlib

from sqlalchemy import select

from service.db import session_scope
from service.models import Checkpoint

from svc_helpers import bearer, run_job, spec_ce, submit


def _get(client, token, job_id: str, fmt: str, which: str = "best"):
    return client.get(f"/v1/jobs/{job_id}/checkpoints/{which}?format={fmt}", headers=bearer(token))


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_an_export_not_asked_for_says_how_to_ask(client, users, settings):
    plain = submit(client, users.alice)
    run_job(settings, plain["id"], to="succeeded", epochs=1, checkpoint=True)
    err = _error(_get(client, users.alice, plain["id"], "onnx"), 404)
    assert err["code"] == "export_not_requested"
    assert f"job {plain['id']} was not asked for onnx: resubmit with output.formats: [onnx]" in err["message"]
    assert _error(_get(client, users.alice, plain["id"], "tflite"), 422)["field"] == "format"

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

    err = _error(_get(client, users.alice, jid, "onnx"), 404)
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
