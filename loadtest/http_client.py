"""A small keep-alive HTTP/1.1 client for the rehearsals: a general-purpose client
(httpx) was the bottleneck at thousands of requests a second on two cores."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def seg(value: str) -> str:
    return quote(value, safe="")


# -- a small keep-alive HTTP/1.1 client ----------------------------------------------------


class Response(msgspec.Struct):
    status: int
    body: bytes
    seconds: float  # from writing the request to reading the whole answer
    queued: float = 0.0  # waiting for a connection before that

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return msgspec.json.decode(self.body) if self.body else None

    def kind(self) -> str:
        """The problem type's last segment (`insufficient-stock`), else the status."""
        data = self.json() if self.status >= 400 else None
        if isinstance(data, dict) and isinstance(data.get("type"), str):
            return str(data["type"]).rpartition("/")[2]
        return str(self.status or "no answer")


class Http:
    """At most `size` requests in flight to one server, on reused connections."""

    def __init__(self, url: str, key: str, size: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._head = f"Host: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Conn] = []

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        """One request; a POST carries a fresh Idempotency-Key, so sending it twice is safe."""
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        content = b"" if body is None else msgspec.json.encode(body)
        if method != "GET":
            head += f"Idempotency-Key: {uuid.uuid4().hex}\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(content)}\r\n"
        raw = head.encode() + b"\r\n" + content
        asked = time.perf_counter()
        async with self._slots:
            queued = time.perf_counter() - asked
            for _ in range(2):
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._connect()
                try:
                    response = await self._exchange(conn, raw)
                except (asyncio.IncompleteReadError, ConnectionError):
                    conn[1].close()
                    if not reused:
                        raise
                    continue  # the server closed an idle connection (keep-alive timeout)
                response.queued = queued
                return response
            raise ConnectionError("the server closed two connections in a row")

    async def _connect(self) -> Conn:
        return await asyncio.open_connection(self.host, self.port)

    async def _exchange(self, conn: Conn, raw: bytes) -> Response:
        reader, writer = conn
        start = time.perf_counter()
        writer.write(raw)
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError(f"an answer without Content-Length: {head[:200]!r}")
        body = await reader.readexactly(int(head[at + 17 : head.index(b"\r\n", at + 2)]))
        if b"\r\nconnection: close" in head:
            writer.close()
        else:
            self._idle.append(conn)
        return Response(int(head[9:12]), body, time.perf_counter() - start)

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()
