"""POST/GET /v1/artifacts: streamed, content-addressed, deduplicated, checked on arrival, 413 while streaming."""
from __future__ import annotations

import hashlib
import subprocess
import sys

from fastapi.testclient import TestClient

from service.app import create_app

from svc_helpers import bearer, make_settings


def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_upload_raw_and_multipart_dedup(client, users, settings, teacher_file):
    data = teacher_file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    r = client.post("/v1/artifacts?filename=t.pt", content=data,
                    headers={**bearer(users.alice), "content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    art = r.json()
    assert art["id"].startswith("art_") and art["sha256"] == sha and art["size"] == len(data)
    assert art["format"] == "state_dict" and art["filename"] == "t.pt"
    blob = settings.artifact_dir / "blobs" / sha[:2] / sha
    assert blob.read_bytes() == data

    # the same bytes again, as a multipart form: the same artifact, 200
    r = client.post("/v1/artifacts", files={"file": ("again.pt", data)}, headers=bearer(users.alice))
    assert r.status_code == 200 and r.json()["id"] == art["id"]
    # another owner: their own artifact, the same blob on disk
    r = client.post("/v1/artifacts", files={"file": ("b.pt", data)}, headers=bearer(users.bob))
    assert r.status_code == 201 and r.json()["id"] != art["id"] and r.json()["sha256"] == sha
    assert [p.name for p in (settings.artifact_dir / "blobs").rglob("*") if p.is_file()] == [sha]
    assert not any((settings.artifact_dir / "tmp").iterdir())

    assert client.get(f"/v1/artifacts/{art['id']}", headers=bearer(users.alice)).json() == art
    assert client.get(f"/v1/artifacts/{art['id']}", headers=bearer(users.bob)).status_code == 404
    assert client.get(f"/v1/artifacts/{art['id']}", headers=bearer(users.admin)).json()["id"] == art["id"]


def test_safetensors_and_torchscript(client, users, tmp_path):
    import torch
    from safetensors.torch import save_file

    from ttm.models import build_model

    model = build_model("resnet8", 10, 1).eval()
    st = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    ts = tmp_path / "t.ts"
    torch.jit.trace(model, torch.zeros(1, 1, 28, 28)).save(str(ts))
    r = client.post("/v1/artifacts", content=st.read_bytes(), headers=bearer(users.alice))
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "safetensors"
    # a TorchScript archive is a program: refused unless an admin allows code teachers, and never loaded here
    r = client.post("/v1/artifacts", files={"file": ("mine.ts", ts.read_bytes())}, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["code"] == "code_refused", r.text
    assert "mine.ts" in r.json()["error"]["message"] and "TTM_ALLOW_CODE_TEACHERS" in r.json()["error"]["message"]
    client.app.state.settings.allow_code_teachers = True
    r = client.post("/v1/artifacts", content=ts.read_bytes(), headers=bearer(users.alice))
    assert r.status_code == 201 and r.json()["format"] == "torchscript", r.text


def test_deflate_bomb_is_refused_before_it_inflates(client, users, tmp_path):
    """A 1 MiB zip whose member inflates to 1 GiB: refused by its declared sizes, nothing inflated."""
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with z.open("archive/data/0", "w", force_zip64=True) as member:
            block = bytes(16 * 1024 * 1024)
            for _ in range(64):
                member.write(block)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    r = client.post("/v1/artifacts", files={"file": ("bomb.pt", bomb.read_bytes())}, headers=bearer(users.alice))
    assert r.status_code == 422, r.text
    assert "inflates" in r.json()["error"]["message"] and str(tmp_path) not in r.json()["error"]["message"]


def test_pickle_with_code_is_refused_and_never_run(client, users, settings, evil_file, tmp_path):
    path, marker = evil_file
    r = client.post("/v1/artifacts", files={"file": ("evil.pt", path.read_bytes())}, headers=bearer(users.alice))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_artifact" and err["field"] == "file"
    assert "needs code to load" in err["message"]
    assert not marker.exists()
    assert not list((settings.artifact_dir / "blobs").rglob("*")) if (settings.artifact_dir / "blobs").exists() \
        else True
    # the exploit is real: unpickling it with code allowed does create its marker (in a separate process)
    probe = subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert marker.exists()


def test_garbage_and_empty_are_refused(client, users):
    r = client.post("/v1/artifacts", content=b"not weights at all" * 100, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_artifact"
    r = client.post("/v1/artifacts", content=b"", headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["message"] == "empty upload"
    r = client.post("/v1/artifacts", files={"other": ("x", b"abc")}, data={"x": "1"}, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"


def test_413_while_streaming(db_url, tmp_path, users):
    settings = make_settings(tmp_path, db_url, max_upload_bytes=200_000)
    with TestClient(create_app(settings, host="127.0.0.1")) as client:
        sent = []

        def body():  # chunked: no Content-Length, so only counting while streaming can stop it
            for chunk in _chunks(b"\0" * 10_000_000):
                sent.append(len(chunk))
                yield chunk

        r = client.post("/v1/artifacts", content=body(), headers=bearer(users.alice))
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "payload_too_large"
        assert "200000" in r.json()["error"]["message"]
        # declared too large: refused before reading
        r = client.post("/v1/artifacts", content=b"\0" * 300_000, headers=bearer(users.alice))
        assert r.status_code == 413
        r = client.post("/v1/artifacts", files={"file": ("big.pt", b"\0" * 300_000)}, headers=bearer(users.alice))
        assert r.status_code == 413
        tmp = settings.artifact_dir / "tmp"
        assert not tmp.exists() or not any(tmp.iterdir())
        assert not (settings.artifact_dir / "blobs").exists()


def test_upload_needs_a_token_before_reading(client, users, teacher_file):
    r = client.post("/v1/artifacts", content=teacher_file.read_bytes())
    assert r.status_code == 401
    r = client.post("/v1/artifacts", content=teacher_file.read_bytes(), headers=bearer("ttm_wrong"))
    assert r.status_code == 401


def test_413_cuts_a_real_stream(db_url, tmp_path, users):
    """Against uvicorn, over a raw socket: the 413 arrives while the client is still sending its 20 MB."""
    import select
    import socket
    from urllib.parse import urlparse

    from svc_helpers import serve

    settings = make_settings(tmp_path, db_url, max_upload_bytes=200_000)
    total = 20_000_000
    with serve(settings) as url:
        u = urlparse(url)
        sent, answer = 0, b""
        with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
            sock.sendall(f"POST /v1/artifacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {users.alice}\r\n"
                         "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
            chunk = b"\0" * 65536
            try:
                while sent < total:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                    if select.select([sock], [], [], 0.005)[0]:
                        answer = sock.recv(65536)
                        break
            except (ConnectionResetError, BrokenPipeError):
                pass
            if not answer:
                answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total / 4, sent
    tmp = settings.artifact_dir / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())
