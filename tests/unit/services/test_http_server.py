"""What our HTTP servers share: the chunked request bodies they read."""

import io

import pytest

from services.http_server import BadBody, read_chunked


def test_chunked_body_is_reassembled_and_trailers_are_skipped() -> None:
    raw = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"
    stream = io.BytesIO(raw)

    assert read_chunked(stream) == b"hello world"
    assert stream.read() == b"NEXT"


def test_a_cut_chunked_body_is_an_error() -> None:
    with pytest.raises(BadBody):
        read_chunked(io.BytesIO(b"a\r\nshort"))
    with pytest.raises(BadBody):
        read_chunked(io.BytesIO(b"zz\r\n"))
