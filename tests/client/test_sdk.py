"""ttm.client against the real API (jobs moved by svc_helpers.run_job), and its retry policy against mock answers."""
from __future__ import annotations

import hashlib
import threading
import time

import httpx
import pytest
import yaml

from ttm.client import ApiError, ChecksumMismatch, Client, ServerUnreachable, WaitTimeout, format_for

from client_helpers import digits_spec, run_job


class Recording(httpx.HTTPTransport):
    """A real transport that remembers what was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return super().handle_request(request)


def test_upload_asks_by_sha256_first(api, teacher_pth):
    transport = Recording()
    with Client(api.url, api.alice, transport=transport) as c:
        first = c.upload(teacher_pth)
        assert first["uploaded"] is True and first["id"].startswith("art_") and first["format"] == "state_dict"
        assert first["sha256"] == hashlib.sha256(teacher_pth.read_bytes()).hexdigest()
        again = c.upload(teacher_pth)
    assert again["uploaded"] is False and again["id"] == first["id"]
    assert transport.sent.count(("POST", "/v1/artifacts")) == 1  # the second time, only the lookup went out
    assert transport.sent.count(("GET", "/v1/artifacts")) == 2
    # the lookup sees only the caller's own artifacts, and wants a sha256
    with Client(api.url, api.bob) as bob:
        with pytest.raises(ApiError) as e:
            bob.find_artifact("not-a-sha")
        assert e.value.status == 422 and e.value.field == "sha256"
        assert bob.find_artifact(first["sha256"]) is None
        with pytest.raises(ApiError) as e:
            bob.artifact(first["id"])  # alice's: not found for bob
        assert e.value.status == 404
        assert bob.upload(teacher_pth)["uploaded"] is True
    with Client(api.url, api.alice) as c:
        assert c.artifact(first["id"])["sha256"] == first["sha256"]


def test_submit_uploads_a_local_teacher_and_is_idempotent(api, teacher_pth, tmp_path):
    spec = {**digits_spec("wttm"), "teacher": {"arch": "resnet8", "weights": str(teacher_pth)},
            "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}}
    with Client(api.url, api.alice) as c:
        job = c.submit(spec, idempotency_key="pipeline-17")
        art = job["spec"]["teacher"]["weights"]
        assert job["state"] == "queued" and art.startswith("art_")
        assert c.submit(spec, idempotency_key="pipeline-17")["id"] == job["id"]  # a retried CI step: same job
        with pytest.raises(ApiError) as e:
            c.submit({**spec, "name": "other"}, idempotency_key="pipeline-17")
        assert e.value.status == 409 and e.value.code == "idempotency_conflict"
        # a spec file with a path relative to the file: validated here, the same bytes are the same artifact
        (tmp_path / "t.pth").write_bytes(teacher_pth.read_bytes())
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**spec, "teacher": {"arch": "resnet8",
                                                                                 "weights": "t.pth"}}))
        from_file = c.submit(tmp_path / "spec.yaml")
        assert from_file["spec"]["teacher"]["weights"] == art and from_file["id"] != job["id"]
        assert [j["id"] for j in c.jobs()] == [from_file["id"], job["id"]]
        assert [j["id"] for j in c.jobs(state="queued", limit=1)] == [from_file["id"]]


def test_a_missing_teacher_file_is_a_spec_error(api, tmp_path):
    from ttm.spec import SpecError

    spec = {**digits_spec(), "teacher": {"arch": "resnet8", "weights": str(tmp_path / "nope.pth")},
            "loss": {"kind": "kd"}}
    with Client(api.url, api.alice) as c, pytest.raises(SpecError) as e:
        c.submit(spec)
    assert e.value.problems[0][0] == "teacher.weights"


def test_wait_events_metrics_log_and_download(api):
    with Client(api.url, api.alice) as c:
        job = c.submit(digits_spec())
        seen = []

        def worker() -> None:
            time.sleep(0.3)
            run_job(api.settings, job["id"], epochs=2, checkpoint=True, log="epoch 1\nepoch 2\n")
            time.sleep(0.3)
            run_job(api.settings, job["id"], to="succeeded")

        threading.Thread(target=worker).start()
        final = c.wait(job["id"], timeout=30, on_event=seen.append)
        assert final["state"] == "succeeded" and final["best_top1"] is not None
        states = [e.data["state"] for e in seen if e.type == "state"]
        assert states == ["queued", "running", "succeeded"]
        metrics = [(e.data["epoch"], e.data["name"]) for e in seen if e.type == "metric"]
        assert metrics == [(1, "train_loss"), (1, "test_top1"), (2, "train_loss"), (2, "test_top1")]
        rows = c.metrics(job["id"])
        assert [(m["epoch"], m["name"]) for m in rows] == metrics
        assert c.metrics(job["id"], after=rows[1]["seq"]) == rows[2:]
        # resuming after an event id gives exactly the rest: nothing missed, nothing twice
        rest = list(c.events(job["id"], last_event_id=seen[2].id))
        keys = [(e.type, e.data["seq"]) for e in seen]
        assert sorted(keys[:3] + [(e.type, e.data["seq"]) for e in rest]) == sorted(keys)
        assert c.log(job["id"]) == "epoch 1\nepoch 2\n" and c.log(job["id"], offset=8) == "epoch 2\n"
        assert "".join(c.follow_log(job["id"])) == "epoch 1\nepoch 2\n"  # ends: the job is finished
        (api.home / "out").mkdir()
        path = c.download(job["id"], "last", "pt", api.home / "out")  # a folder: the server's file name
        assert path == api.home / "out" / f"{job['id']}-last.pt"
        assert path.read_bytes() == f"last weights of {job['id']}".encode()
        best = c.download(job["id"], dest=api.home / "new" / "s.pt")  # a file name: made, folder and all
        assert best.read_bytes() == f"best weights of {job['id']}".encode()
        assert {ck["which"] for ck in c.checkpoints(job["id"])} == {"best", "last"}


def test_wait_times_out_and_the_job_goes_on(api):
    with Client(api.url, api.alice) as c:
        job = c.submit(digits_spec())
        start = time.monotonic()
        with pytest.raises(WaitTimeout) as e:
            c.wait(job["id"], timeout=1.0)
        assert 0.9 < time.monotonic() - start < 30  # not before its timeout; the upper bound is a hang check
        assert e.value.job["state"] == "queued"


def test_errors_name_status_code_and_field(api):
    with Client(api.url, api.alice) as c:
        with pytest.raises(ApiError) as e:
            c.submit({**digits_spec(), "student": {"arch": "resnet9000"}})
        assert (e.value.status, e.value.code, e.value.field) == (422, "invalid_spec", "student.arch")
        with pytest.raises(ApiError) as e:
            c.job("job_does_not_exist")
        assert e.value.status == 404
    bob_job = Client(api.url, api.bob).submit(digits_spec())
    with Client(api.url, api.alice) as c, pytest.raises(ApiError) as e:
        c.job(bob_job["id"])  # another user's job does not exist for you
    assert e.value.status == 404
    with Client(api.url, "not-a-token") as c, pytest.raises(ApiError) as e:
        c.jobs()
    assert e.value.status == 401


# ---------------------------------------------------------------------------------------------- retry policy
def _mock(answers):
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), calls


def test_retries_5xx_and_connection_errors_with_the_same_idempotency_key():
    job = {"id": "job_x", "state": "queued"}
    transport, calls = _mock([httpx.ConnectError("refused"), httpx.Response(503, json={"error": {
        "code": "unavailable", "message": "db"}}), httpx.Response(201, json=job)])
    with Client("http://ttm.test", "t", transport=transport, backoff=0.0) as c:
        assert c.submit(digits_spec()) == job
    assert len(calls) == 3 and len({r.headers["Idempotency-Key"] for r in calls}) == 1
    assert calls[0].headers["Authorization"] == "Bearer t"


def test_never_retries_4xx():
    transport, calls = _mock([httpx.Response(404, json={"error": {"code": "not_found", "message": "no job x"}})])
    with Client("http://ttm.test", "t", transport=transport, backoff=0.0) as c, pytest.raises(ApiError) as e:
        c.job("x")
    assert len(calls) == 1 and e.value.code == "not_found"


def test_gives_up_after_the_retries():
    transport, calls = _mock([httpx.ConnectError("refused")])
    with Client("http://ttm.test", "t", transport=transport, backoff=0.0, retries=3) as c:
        with pytest.raises(ServerUnreachable):
            c.jobs()
    assert len(calls) == 4
    transport, calls = _mock([httpx.Response(502, text="bad gateway")])
    with Client("http://ttm.test", "t", transport=transport, backoff=0.0, retries=2) as c:
        with pytest.raises(ApiError) as e:
            c.jobs()
    assert len(calls) == 3 and e.value.status == 502 and e.value.code == "http_502"


def test_download_checks_the_sha256(tmp_path):
    body = b"weights"
    transport, _ = _mock([httpx.Response(200, content=body, headers={"ETag": '"' + "0" * 64 + '"'})])
    with Client("http://ttm.test", "t", transport=transport, backoff=0.0) as c, pytest.raises(ChecksumMismatch):
        c.download("job_x", "best", "pt", tmp_path / "s.pt")
    assert not any(tmp_path.iterdir())  # nothing half-written is left
    good = hashlib.sha256(body).hexdigest()
    transport, _ = _mock([httpx.Response(200, content=body, headers={"ETag": f'"{good}"'})])
    with Client("http://ttm.test", "t", transport=transport) as c:
        assert c.download("job_x", dest=tmp_path / "s.pt").read_bytes() == body


def test_a_download_waits_on_202_as_retry_after_says_and_no_longer_than_its_timeout(tmp_path):
    """An export the server makes on request: 202 until ready (Retry-After honoured, a hostile one bounded), then the
    file; past the timeout, WaitTimeout, and nothing written."""
    body = b"an onnx file"
    pending = {"export": {"state": "running", "format": "onnx"}, "message": "being made"}
    answers = [httpx.Response(202, json=pending, headers={"Retry-After": "0.2"}),
               httpx.Response(202, json=pending, headers={"Retry-After": "nan"}),
               httpx.Response(200, content=body, headers={"ETag": f'"{hashlib.sha256(body).hexdigest()}"'})]
    transport, calls = _mock(answers)
    seen: list[dict] = []
    start = time.monotonic()
    with Client("http://ttm.test", "t", transport=transport) as c:
        path = c.download("job_x", "best", "onnx", tmp_path / "s.onnx", on_pending=seen.append)
    assert path.read_bytes() == body and len(calls) == 3 and seen == [pending, pending]
    assert 0.2 + 2.0 <= time.monotonic() - start < 10  # 0.2 s, then the default 2 s for a Retry-After of nan

    transport, calls = _mock([httpx.Response(202, json=pending, headers={"Retry-After": "86400"})])
    start = time.monotonic()
    with Client("http://ttm.test", "t", transport=transport) as c, pytest.raises(WaitTimeout, match="still being"):
        c.download("job_x", "best", "onnx", tmp_path / "t.onnx", timeout=0.5)
    assert time.monotonic() - start < 5 and len(calls) == 2  # the day asked for is cut to what the timeout leaves
    assert not (tmp_path / "t.onnx").exists()


def test_sse_parsing_and_formats():
    body = (": ping\n\nid: 1-0\nevent: state\ndata: {\"state\":\"queued\"}\n\nretry: 10\n\n"
            "id: 2-0\nevent: metric\ndata: {\"epoch\":1,\ndata: \"value\":2}\n\n"
            "id: 3-0\nevent: state\ndata: {\"state\":\"succeeded\"}\n\n")
    transport, calls = _mock([httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})])
    with Client("http://ttm.test", "t", transport=transport) as c:
        events = list(c.events("job_x"))
    assert [(e.type, e.id, e.data) for e in events] == [("state", "1-0", {"state": "queued"}),
                                                        ("metric", "2-0", {"epoch": 1, "value": 2}),
                                                        ("state", "3-0", {"state": "succeeded"})]
    assert len(calls) == 1 and calls[0].headers["Accept"] == "text/event-stream"
    assert [format_for(n) for n in ("s.safetensors", "s.ts", "a/b.torchscript.pt", "s.pt", None, "S.ONNX",
                                    "student.pt2")] == [
        "safetensors", "torchscript", "torchscript", "pt", "pt", "onnx", "pt2"]
