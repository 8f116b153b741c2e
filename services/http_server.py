"""What our small HTTP servers share: a quick bind and chunked request bodies."""

from __future__ import annotations

import socketserver
from http.server import ThreadingHTTPServer
from typing import Protocol

from services.errors import RevetlError

MAX_LINE = 65_536
"""Longest chunk-size or trailer line accepted, in bytes."""


class LocalHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server that binds without resolving the host's name."""

    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN, which can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class BadBody(RevetlError):
    """The request body does not follow the chunked coding; the caller answers 400."""


class ByteStream(Protocol):
    """What read_chunked needs of a request's input stream."""

    def read(self, size: int, /) -> bytes: ...

    def readline(self, size: int, /) -> bytes: ...


def read_chunked(stream: ByteStream) -> bytes:
    """The body of a request sent with Transfer-Encoding: chunked."""
    chunks = []
    while True:
        line = stream.readline(MAX_LINE)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BadBody(f"Bad chunk size line {line!r}.") from exc
        if size == 0:
            break
        chunk = stream.read(size)
        if len(chunk) != size or stream.read(2) != b"\r\n":
            raise BadBody("The chunked request body was cut short.")
        chunks.append(chunk)
    while stream.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
        pass  # trailers carry nothing we use
    return b"".join(chunks)
