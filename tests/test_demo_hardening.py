"""The demo as a hospital IT reviewer probes it: files on disk, the Host header, a full queue,
option errors, authentication. Unit tests of demo.storage and demo.guard, then the running server."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, _free_port
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from demo import guard, service, storage

# ---------------------------------------------------------------- demo.storage


def test_a_run_folder_is_private_and_purges_runs_that_are_gone(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o700)
    dead = parent / "run-dead"
    (dead / "gradio" / "abc").mkdir(parents=True)
    (dead / storage.LOCK_NAME).touch()  # nobody holds its lock: its server was killed
    (dead / "gradio" / "abc" / "Doe_Jane.dcm").write_bytes(b"DICM")
    alive = storage.RunFolder(parent)
    (alive.uploads / "x.png").write_bytes(b"png")

    second = storage.RunFolder(parent)
    assert second.purged_at_start == 0 and alive.purged_at_start == 1  # the dead run's one file, once
    assert not dead.exists() and alive.root.exists()  # a live run's folder is never taken
    assert stat.S_IMODE(second.root.stat().st_mode) == 0o700
    assert alive.files() == [alive.uploads / "x.png"]
    alive.purge()
    assert not alive.root.exists()
    second.purge()


def test_an_upload_is_deleted_at_its_first_read_and_its_bytes_wait_for_the_claim(tmp_path):
    (tmp_path / "sha").mkdir()
    upload = tmp_path / "sha" / "k3j2h1"
    upload.write_bytes(b"pixels")
    uploads = storage.Uploads(tmp_path)
    assert uploads.take(upload) == b"pixels"
    assert not upload.exists() and not upload.parent.exists()  # Gradio's per-upload folder goes too
    assert uploads.take(upload) == b"pixels" and uploads.parked() == 1  # the validator may read twice
    assert uploads.claim(upload) == b"pixels" and uploads.parked() == 0
    assert uploads.claim(upload) is None  # gone: the caller says "upload it again"


def test_generate_before_the_preview_has_stored_the_upload_still_reads_it(tmp_path):
    """On a loaded server Generate can run before the upload's preview event has stored its bytes
    in the session: it takes them from the disk, and the preview then claims the parked bytes."""
    from demo.ui import held_or_taken

    uploads = storage.Uploads(tmp_path)
    upload = tmp_path / "chest.png"
    upload.write_bytes(b"film")
    held: dict[str, bytes] = {}
    assert held_or_taken(held, uploads)(str(upload)) == b"film"  # Generate first
    assert not upload.exists() and uploads.parked() == 1
    held[str(upload)] = uploads.claim(str(upload))  # the preview, late
    assert held[str(upload)] == b"film" and uploads.parked() == 0
    assert held_or_taken(held, uploads)(str(upload)) == b"film"  # and the session's copy is used from then on


def test_only_uploads_are_deleted_never_examples_or_files_elsewhere(tmp_path):
    root, elsewhere = tmp_path / "uploads", tmp_path / "elsewhere.png"
    root.mkdir()
    example = tmp_path / "example.png"
    example.write_bytes(b"synthetic phantom")
    copy = root / "example.png"
    copy.write_bytes(b"synthetic phantom")
    elsewhere.write_bytes(b"not ours")
    uploads = storage.Uploads(root, keep=[example])
    assert uploads.claim(copy) == b"synthetic phantom" and copy.exists()
    assert uploads.claim(elsewhere) == b"not ours" and elsewhere.exists()


# ---------------------------------------------------------------- demo.guard


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"body": (await request.body()).decode("latin-1")})


async def _full(request: Request) -> JSONResponse:
    await request.json()  # as Gradio reads the request before it finds the queue full
    return JSONResponse({"detail": "Queue is full. Max size is 3 and size is 3."}, status_code=503)


def _client(*middleware, **kwargs) -> TestClient:
    app = Starlette(routes=[Route("/gradio_api/upload", _echo, methods=["POST"]),
                            Route("/gradio_api/queue/join", _full, methods=["POST"]), Route("/", _echo)])
    for cls, options in middleware:
        app.add_middleware(cls, **options)
    return TestClient(app, **kwargs)


@pytest.mark.parametrize("header, name", [("Example.org:7860", "example.org"), ("[::1]:7860", "::1"),
                                          ("127.0.0.1", "127.0.0.1"), ("::1", "::1")])
def test_host_names_are_read_from_the_header(header, name):
    assert guard.host_name(header) == name


def test_requests_naming_another_host_are_refused_with_a_sentence():
    allowed = guard.allowed_hosts("127.0.0.1", ["proxy.example"])
    assert {"localhost", "127.0.0.1", "::1", "proxy.example"} <= allowed
    client = _client((guard.HostCheck, {"allowed": allowed}), base_url="http://127.0.0.1:7860")
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"host": "proxy.example"}).status_code == 200
    refused = client.get("/", headers={"host": "attacker.example:7860"})  # DNS rebinding to 127.0.0.1
    assert refused.status_code == 400 and refused.json()["detail"] == guard.BAD_HOST
    assert guard.allowed_hosts("10.1.2.3") == {"10.1.2.3"}  # a specific address: only itself


def test_a_full_queue_answers_busy_with_retry_after_and_names_the_uploads_to_drop():
    bodies = []
    client = _client((guard.BusyAnswer, {"refused": lambda body: bodies.append(body) or (3, 42)}))
    upload = {"path": "/tmp/x/abc", "meta": {"_type": "gradio.FileData"}}
    answer = client.post("/gradio_api/queue/join", json={"data": [upload, None, 3, 100], "fn_index": 2})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "42"
    assert answer.json()["detail"] == "The server is busy: 3 requests are waiting; retry in about 42 s."
    assert [guard.upload_paths(body) for body in bodies] == [["/tmp/x/abc"]]
    assert client.get("/").status_code == 200 and len(bodies) == 1  # other answers pass untouched


def _multipart(name: str, content: bytes, boundary: str = "b0undary") -> tuple[bytes, dict]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}", "content-length": str(len(body))}


def _received(body: bytes, headers: dict, chunk: int) -> bytes:
    """What the app behind RandomUploadNames receives when the body arrives in chunks of ``chunk`` bytes."""
    got = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            got.append(message["body"])
            if not message["more_body"]:
                return

    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    messages = iter([{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)])
    scope = {"type": "http", "path": "/gradio_api/upload", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}

    async def receive():
        return next(messages)

    asyncio.run(guard.RandomUploadNames(app)(scope, receive, None))
    return b"".join(got)


@pytest.mark.parametrize("chunk", [7, 64, 65536])
def test_upload_names_become_random_and_the_file_bytes_stay_as_they_are(chunk):
    content = b'\r\nContent-Disposition: form-data; filename="Doe_Jane.dcm"\r\n' + bytes(range(256)) * 40
    body, headers = _multipart("Doe_Jane.dcm", content)
    received = _received(body, headers, chunk)
    header = received[:received.index(b"\r\n\r\n")]
    assert len(received) == len(body) and b"Doe_Jane" not in header and b'filename="' in header
    assert received.endswith(content + b"\r\n--b0undary--\r\n")  # a look-alike header inside the data is data


# ---------------------------------------------------------------- demo.service


@pytest.mark.parametrize("beams, length, sentence", [
    (0, 100, "Beam size must be a whole number from 1 to 6; got 0."),
    (50, 100, "Beam size must be a whole number from 1 to 6; got 50."),
    (2.5, 100, "Beam size must be a whole number from 1 to 6; got 2.5."),
    ("3", 100, "Beam size must be a whole number from 1 to 6; got '3'."),
    (3, 5000, "Maximum length (tokens) must be a whole number from 10 to 200; got 5000."),
])
def test_options_out_of_range_get_a_sentence(beams, length, sentence):
    assert sentence in service.option_errors(beams, length)
    assert service.option_errors(3, 100.0) == (None, None)


# ---------------------------------------------------------------- the running server (conftest's app.py)


def _upload(url: str, path: Path) -> str:
    answer = httpx.post(url + "gradio_api/upload", files=[("files", (path.name, path.read_bytes()))])
    answer.raise_for_status()
    return answer.json()[0]


def _call(url: str, upload: str, beams=1, max_length=10) -> tuple[int, object]:
    data = [{"path": upload, "meta": {"_type": "gradio.FileData"}}, None, beams, max_length]
    joined = httpx.post(url + "gradio_api/call/generate", json={"data": data})
    if joined.status_code != 200:
        return joined.status_code, joined.json()
    with httpx.stream("GET", url + f"gradio_api/call/generate/{joined.json()['event_id']}", timeout=120) as events:
        lines = [line for line in events.iter_lines() if line.startswith("data: ")]
    return 200, json.loads(lines[-1][len("data: "):])


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("films") / "Doe_Jane.png"
    y, x = np.mgrid[:200, :180]
    Image.fromarray((127 + 120 * np.sin(x / 11.0) * np.cos(y / 17.0)).astype(np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_the_upload_gets_a_random_name_and_is_gone_once_read(server, film):
    url = server[0]
    upload = _upload(url, film)
    assert "Doe" not in upload and Path(upload).is_file()
    assert stat.S_IMODE(Path(upload).parents[2].stat().st_mode) == 0o700  # the run's private folder
    status, answer = _call(url, upload)
    assert status == 200 and answer[0]
    assert not Path(upload).exists()


@pytest.mark.slow
def test_the_server_refuses_a_foreign_host_and_bad_options_with_sentences(server, film):
    url = server[0]
    foreign = httpx.get(url, headers={"host": "rebound.example:80"})
    assert foreign.status_code == 400 and foreign.json()["detail"] == guard.BAD_HOST
    upload = _upload(url, film)
    status, answer = _call(url, upload, beams=50)
    assert status == 422 and any(d["message"] == "Beam size must be a whole number from 1 to 6; got 50."
                                 for d in answer["detail"])
    assert not Path(upload).exists()  # a refused request's upload is not kept either


@pytest.mark.slow
def test_auth_is_asked_for_and_sigterm_leaves_no_file(weights, film):
    """--auth USER:PASS: without the password nothing is served; SIGTERM with an unread upload on
    disk deletes the run's whole folder."""
    port = _free_port()
    env = {**os.environ, "RRG_AUTH": "reader:s3cret", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--weights", str(weights), "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "app.py did not start"
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.25)
        assert httpx.post(url + "gradio_api/upload", files=[("files", ("a.png", film.read_bytes()))]).status_code == 401
        with httpx.Client(base_url=url) as client:
            assert client.post("login", data={"username": "reader", "password": "wrong"}).status_code == 400
            assert client.post("login", data={"username": "reader", "password": "s3cret"}).status_code == 200
            answer = client.post("gradio_api/upload", files=[("files", ("a.png", film.read_bytes()))])
            assert answer.status_code == 200
            left = Path(answer.json()[0])
        assert left.is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0 and not left.exists() and not left.parents[2].exists()
