"""HTTP guards in front of the Gradio app, as plain ASGI middleware (streamed responses pass
through untouched):

- :class:`HostCheck` refuses a request whose Host header names another host than the one the
  server is bound to (or an allowed name): a page on another site that rebinds its DNS name to
  127.0.0.1 would otherwise reach the local server with the visitor's browser.
- :class:`BusyAnswer` turns Gradio's bare "queue is full" into a sentence with a ``Retry-After``.
- :class:`RandomUploadNames` replaces the file name of every upload with random characters before
  Gradio stores it: a DICOM is often named after its patient.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
import string
from collections.abc import Callable, Iterable

Scope = dict  # ASGI types, spelled out only as far as used here
App = Callable

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
BAD_HOST = "This server answers only to its own address; the Host header names another host."
BUSY = "The server is busy: {waiting} requests are waiting; retry in about {seconds} s."
_NAME_CHARS = string.ascii_lowercase + string.digits
HEADER_TAIL = 4096  # longer than any part header


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> set[str]:
    """Host names a request may address: the bound host (every loopback name when it is loopback;
    this machine's names and addresses when bound to all interfaces), plus ``extra``."""
    names = {bind.strip("[]").lower()}
    if is_loopback(bind):
        names |= set(LOOPBACK_NAMES)
    elif bind in WILDCARD_HOSTS:
        hostname = socket.gethostname()
        names |= {*LOOPBACK_NAMES, hostname.lower(), socket.getfqdn().lower(), *_addresses(hostname)}
    return names | {name.strip().lower() for name in extra if name.strip()}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _addresses(hostname: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(hostname, None)}
    except OSError:
        return set()


def host_name(header: str) -> str:
    """'Example.org:7860' -> 'example.org'; '[::1]:7860' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == name), None)


async def _send_json(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """400 with a sentence for a Host header outside ``allowed`` (HTTP and websockets)."""

    def __init__(self, app: App, allowed: set[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and host_name(_header(scope, b"host") or "") not in self.allowed:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _send_json(send, 400, BAD_HOST)
            return
        await self.app(scope, receive, send)


class BusyAnswer:
    """Gradio answers a full queue with 503 "Queue is full..."; this says how long to wait.

    ``refused(body)`` is told the refused request's body (its uploads will never be read, so the
    page deletes them) and returns (requests waiting, seconds until one more would start).
    """

    def __init__(self, app: App, refused: Callable[[bytes], tuple[int, int]]) -> None:
        self.app, self.refused = app, refused

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        held: dict = {}
        body: list[bytes] = []

        async def recording_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                held["start"] = message  # wait for the body: only "queue is full" is rewritten
                return
            if "start" in held and message["type"] == "http.response.body":
                if b"Queue is full" in message.get("body", b""):
                    waiting, seconds = self.refused(b"".join(body))
                    await _send_json(send, 503, BUSY.format(waiting=waiting, seconds=seconds),
                                     [(b"retry-after", str(seconds).encode())])
                else:
                    await send(held.pop("start"))
                    await send(message)
                return
            await send(message)

        await self.app(scope, recording_receive, send_wrapper)


def upload_paths(body: bytes) -> list[str]:
    """The server-side paths of the files (Gradio FileData) a request's JSON body refers to."""
    try:
        found, stack = [], [json.loads(body)]
    except ValueError:
        return []
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str) and (item.get("meta") or {}).get("_type") == "gradio.FileData":
                found.append(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class RandomUploadNames:
    """Each ``filename="..."`` in the part headers of an upload becomes random characters of the
    same length (so Content-Length stays true). Only headers that follow the request's own
    multipart boundary are touched, never the file's bytes."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:
        boundary = _boundary(scope) if scope["type"] == "http" and scope["path"].endswith("/upload") else None
        if boundary is None:
            await self.app(scope, receive, send)
            return
        pattern = re.compile(rb"(--" + re.escape(boundary) + rb"\r\n(?:[^\r\n]+\r\n)*?[^\r\n]*filename=\")([^\"\r\n]*)")
        pending = b""

        async def renaming_receive() -> dict:
            nonlocal pending
            message = await receive()
            if message["type"] != "http.request":
                return message
            data = pattern.sub(_random_name, pending + message.get("body", b""))
            if message.get("more_body", False):
                # Hold back the tail: a part header may continue in the next chunk (a name cut
                # short is renamed now and again in full then, which does no harm).
                split = max(0, len(data) - HEADER_TAIL)
                data, pending = data[:split], data[split:]
            else:
                pending = b""
            return {**message, "body": data}

        await self.app(scope, renaming_receive, send)


def _boundary(scope: Scope) -> bytes | None:
    content_type = _header(scope, b"content-type") or ""
    match = re.search(r"boundary=\"?([^\";]+)\"?", content_type)
    return match.group(1).encode("latin-1") if match and content_type.startswith("multipart/form-data") else None


def _random_name(match: re.Match) -> bytes:
    name = match.group(2)
    return match.group(1) + "".join(secrets.choice(_NAME_CHARS) for _ in name).encode()
