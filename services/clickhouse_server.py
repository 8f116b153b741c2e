"""ClickHouse's HTTP interface over one long-lived chDB session, one query at a time."""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import errno
import fcntl
import gzip
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
import zstandard

from services.errors import ConfigurationError, FatalError, RevetlError
from services.http_server import BadBody, LocalHTTPServer, read_chunked

log = logging.getLogger(__name__)

EXPECTED_CHDB = "3.7.2"
DEFAULT_FORMAT = "TabSeparated"
DEFAULT_DATABASE = "default"
KEEP_ALIVE_S = 30
"""Idle keep-alive connections are closed after this long, as ClickHouse 25.8 does."""
HEAD_SCAN_BYTES = 262_144
"""How far into a request the INSERT statement before its rows is looked for; the
same as ClickHouse's default max_query_size."""
ZLIB_LEVEL = 3
"""ClickHouse's default http_zlib_compression_level, for gzip and deflate answers."""

# ClickHouse error codes this front raises itself.
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_SETTING = 115
READONLY = 164
ABORTED = 236
CANNOT_DECOMPRESS = 271
STD_EXCEPTION = 1001

_CODE_NAMES = {
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    UNKNOWN_SETTING: "UNKNOWN_SETTING",
    READONLY: "READONLY",
    ABORTED: "ABORTED",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    STD_EXCEPTION: "STD_EXCEPTION",
}

# ClickHouse 25.8's exceptionCodeToHTTPStatus, by error code; all others answer 500.
_STATUS_CODES: dict[int, tuple[int, ...]] = {
    401: (194,),
    403: (192, 193, 497, 512, 516),
    400: (6, 8, 15, 25, 26, 27, 36, 37, 38, 41, 44, 53, 62, 72, 117, 123, 167, 168,
          223, 321, 376, 427, 441, 675, 676),
    404: (46, 47, 50, 56, 60, 63, 73, 78, 81, 115, 152, 336, 511),
    408: (159,),
    411: (381,),
    413: (229,),
    501: (48,),
    503: (76, 209, 439),
}  # fmt: skip
HTTP_STATUS_BY_CODE = {
    code: st for st, codes in _STATUS_CODES.items() for code in codes
}

HTTP_ONLY_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "user", "password",
    "quota_key", "session_id", "session_timeout", "session_check", "close_session",
    "buffer_size", "wait_end_of_query", "client_protocol_version", "role",
    "stacktrace", "compress", "decompress", "enable_http_compression",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "http_zlib_compression_level", "http_response_buffer_size",
    "http_wait_end_of_query", "http_write_exception_in_output_format",
    "http_native_compression_disable_checksumming_on_decompress",
    "cancel_http_readonly_queries_on_client_close", "add_http_cors_header",
    "http_response_headers",
})  # fmt: skip
"""URL parameters that steer the HTTP exchange itself; never applied to chDB."""

SESSION_WIDE_SETTINGS = frozenset({"readonly", "profile"})
"""Settings refused per request: in the shared session they could not be undone."""

RESULT_KINDS = frozenset({
    "SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "CHECK",
    "WATCH", "(",
})  # fmt: skip
"""Statements that produce a result set, and so an X-ClickHouse-Format header."""
GET_KINDS = RESULT_KINDS | {"SET", "USE"}
"""What a GET may run: ClickHouse treats GET as readonly=2."""

RESPONSE_ENCODINGS = ("zstd", "lz4", "gzip", "deflate")
"""Content-Encodings we answer with, in ClickHouse's order of preference."""

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHDB_ERROR = re.compile(r"\bCode:\s*(\d+)\.\s*(?:DB::Exception:\s*)?(.*)", re.DOTALL)
_ERROR_NAME = re.compile(r"\s*\(([A-Z][A-Z0-9_]+)\)\s*$")
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

SHUTTING_DOWN = "The server is shutting down; send the query again once it is back."
PORT_IN_USE = (
    "port {port} on {host} is already in use; stop the process that holds it "
    "(`ss -ltnp 'sport = :{port}'` names it) or pass another --port"
)
DATA_DIR_LOCKED = (
    "data dir {path} is locked by another chDB process ({owner}); stop that "
    "process or pass another --data-dir"
)


class QueryError(RevetlError):
    """A request failed; answered to the HTTP client the way ClickHouse answers."""

    def __init__(self, code: int, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name or _CODE_NAMES.get(code, "")


# ---------------------------------------------------------------- request parsing


@dataclass(frozen=True)
class RequestParams:
    """What one HTTP request asks for, apart from its SQL text and rows."""

    query: str | None = None
    database: str = DEFAULT_DATABASE
    default_format: str = DEFAULT_FORMAT
    query_id: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    query_params: dict[str, str] = field(default_factory=dict)
    enable_http_compression: bool = False


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false")


def _check_setting(name: str) -> None:
    if not _SETTING_NAME.fullmatch(name):
        raise QueryError(UNKNOWN_SETTING, f"Unknown setting '{name}'.")
    if name in SESSION_WIDE_SETTINGS:
        message = (
            f"Setting '{name}' cannot be passed per request to this chDB front: "
            "every client shares one chDB session, where it could not be undone. "
            "Leave it out, or run a real ClickHouse server."
        )
        raise QueryError(NOT_IMPLEMENTED, message)


def _check_parameter(name: str) -> None:
    if not _SETTING_NAME.fullmatch(name):
        raise QueryError(BAD_ARGUMENTS, f"Bad query parameter name '{name}'.")


def parse_params(
    pairs: Sequence[tuple[str, str]],
    header_database: str | None = None,
    header_format: str | None = None,
) -> RequestParams:
    """Sort URL (or form) parameters into the query, HTTP options and settings.

    The X-ClickHouse-Database and X-ClickHouse-Format request headers give the
    database and default format when no parameter does.
    """
    fields: dict[str, Any] = {
        "database": header_database or DEFAULT_DATABASE,
        "default_format": header_format or DEFAULT_FORMAT,
    }
    settings: dict[str, str] = {}
    query_params: dict[str, str] = {}
    for name, value in pairs:
        if name in ("query", "query_id"):
            fields[name] = value
        elif name in ("database", "default_format"):
            fields[name] = value or fields[name]
        elif name == "enable_http_compression":
            fields[name] = _truthy(value)
        elif name in ("compress", "decompress") and _truthy(value):
            message = (
                f"Parameter {name}=1 asks for ClickHouse's own block compression, "
                "which this chDB front does not speak; use HTTP Content-Encoding "
                "(clickhouse-connect's compress=) instead."
            )
            raise QueryError(NOT_IMPLEMENTED, message)
        elif name.startswith("param_"):
            _check_parameter(name)
            query_params[name.removeprefix("param_")] = value
        elif name not in HTTP_ONLY_PARAMS:
            _check_setting(name)
            settings[name] = value
    return RequestParams(**fields, settings=settings, query_params=query_params)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The plain fields of a multipart/form-data body (the query and its params)."""
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    if not message.is_multipart():
        raise QueryError(BAD_ARGUMENTS, "The multipart/form-data body has no parts.")
    pairs = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            message_text = (
                f"External data (form file '{name}') is not supported by this chDB "
                "front; load the rows into a table first."
            )
            raise QueryError(NOT_IMPLEMENTED, message_text)
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            pairs.append((name, payload.decode("utf-8")))
    return pairs


def _decompress_frames(data: bytes, new_decompressor: Any) -> bytes:
    """Decompress one or more concatenated lz4 or zstd frames."""
    out = []
    rest = data
    while rest:
        decompressor = new_decompressor()
        out.append(decompressor.decompress(rest))
        if not decompressor.eof:
            raise ValueError("the last frame is incomplete")
        rest = decompressor.unused_data
    return b"".join(out)


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo the request's Content-Encoding (lz4, zstd, gzip or deflate)."""
    encoding = (content_encoding or "").strip().lower()
    try:
        if encoding in ("", "identity", "none"):
            return body
        if encoding == "lz4":
            return _decompress_frames(body, lz4.frame.LZ4FrameDecompressor)
        if encoding == "zstd":
            return _decompress_frames(
                body, lambda: zstandard.ZstdDecompressor().decompressobj()
            )
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (
        ValueError,
        RuntimeError,
        OSError,
        EOFError,
        zlib.error,
        zstandard.ZstdError,
    ) as exc:
        message = f"Cannot decompress the {encoding} request body: {exc}."
        raise QueryError(CANNOT_DECOMPRESS, message) from exc
    message = (
        f"Unknown Content-Encoding '{encoding}'; this front reads "
        "lz4, zstd, gzip and deflate."
    )
    raise QueryError(NOT_IMPLEMENTED, message)


def choose_response_encoding(accept_encoding: str | None) -> str | None:
    """The encoding ClickHouse would pick from an Accept-Encoding list, if any."""
    offered = (accept_encoding or "").lower()
    return next((enc for enc in RESPONSE_ENCODINGS if enc in offered), None)


def encode_body(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    if encoding == "lz4":
        return bytes(lz4.frame.compress(body))
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=ZLIB_LEVEL)
    return zlib.compress(body, ZLIB_LEVEL)


# ---------------------------------------------------------------- SQL scanning


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


def tokens(text: str) -> Iterator[Token]:
    """Tokens of SQL text, without spaces and comments; enough to find clauses."""
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # unreachable: the last alternative matches any char
            return
        kind = match.lastgroup or "other"
        if kind not in ("space", "comment"):
            yield Token(kind, match.group(), match.start(), match.end())
        pos = match.end()


@dataclass(frozen=True)
class Statement:
    """What the front needs to know of a non-INSERT statement."""

    kind: str
    """Its first keyword, upper case ("SELECT", "CREATE", ...), or "(" or ""."""
    output_format: str | None
    """The name in its top-level FORMAT clause, if it has one."""
    multiple: bool
    """True when a second statement follows a top-level ';'."""


def scan_statement(text: str) -> Statement:
    kind = ""
    output_format = None
    multiple = False
    depth = 0
    after_format = after_semicolon = False
    for token in tokens(text):
        if after_semicolon:
            multiple = True
            break
        if not kind:
            kind = token.text.upper() if token.kind == "word" else token.text
        if after_format and token.kind in ("word", "quoted"):
            output_format = _unquote(token)
        after_format = depth == 0 and token.is_word("FORMAT")
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth = max(0, depth - 1)
        elif token.text == ";" and depth == 0:
            after_semicolon = True
    return Statement(kind, output_format, multiple)


def _unquote(token: Token) -> str:
    if token.kind != "quoted":
        return token.text
    quote = token.text[0]
    inner = token.text[1:-1]
    return inner.replace(quote * 2, quote).replace("\\" + quote, quote)


@dataclass(frozen=True)
class InlineInsert:
    """An INSERT whose rows follow its SQL in the request, split at the rows."""

    head: str
    """The statement up to where `FROM INFILE` belongs (after the column list)."""
    tail: str
    """The rest of the statement: optional SETTINGS and `FORMAT name`."""
    data_offset: int
    """Byte offset of the first row in the request text."""

    def infile_sql(self, path: str) -> str:
        """The same INSERT, reading its rows from a file instead."""
        return f"{self.head} FROM INFILE {quote_string(path)} {self.tail}"


def _skip_group(stream: Iterator[Token]) -> None:
    """Consume tokens up to and including the ')' closing an open '('."""
    depth = 1
    for token in stream:
        depth += {"(": 1, ")": -1}.get(token.text, 0)
        if depth == 0:
            return


def _insert_target_end(stream: Iterator[Token]) -> Token | None:
    """Skip `INTO [TABLE] target [(columns)]`; the token after it, if any."""
    token = next(stream, None)
    if token is not None and token.is_word("INTO"):
        token = next(stream, None)
    if token is not None and token.is_word("TABLE"):
        token = next(stream, None)
    if token is not None and token.is_word("FUNCTION"):
        next(stream, None)  # the function's name
        if (token := next(stream, None)) is None or token.text != "(":
            return None
        _skip_group(stream)
    elif token is None or token.kind not in ("word", "quoted"):
        return None
    token = next(stream, None)
    if token is not None and token.text == ".":
        next(stream, None)
        token = next(stream, None)
    if token is not None and token.text == "(":
        first = next(stream, None)
        if first is None or first.is_word("SELECT", "WITH"):
            return None
        if first.text != ")":
            _skip_group(stream)
        token = next(stream, None)
    return token


def _data_start(text: str, pos: int) -> int:
    """Where rows begin after a format name: past blanks and one line break."""
    while pos < len(text) and text[pos] in " \t\f":
        pos += 1
    if pos < len(text) and text[pos] == "\r":
        pos += 1
    if pos < len(text) and text[pos] == "\n":
        pos += 1
    return pos


def split_insert(request_text: bytes) -> InlineInsert | None:
    """Split `INSERT ... FORMAT X <rows>` or `INSERT ... VALUES <rows>`.

    None when the request is anything else (INSERT ... SELECT included). Only the
    first HEAD_SCAN_BYTES are scanned; the rows themselves are never decoded.
    """
    text = request_text[:HEAD_SCAN_BYTES].decode("latin-1")
    stream = tokens(text)
    first = next(stream, None)
    if first is None or not first.is_word("INSERT"):
        return None
    token = _insert_target_end(stream)
    if token is None:
        return None
    infile_at = token.start
    if token.is_word("SETTINGS"):
        token = next(
            (t for t in stream if t.is_word("FORMAT", "VALUES", "SELECT", "WITH")),
            None,
        )
        if token is None:
            return None
    head = request_text[:infile_at].decode("utf-8").rstrip()
    between = request_text[infile_at : token.start].decode("utf-8").strip()
    if token.is_word("VALUES"):
        tail = f"{between} FORMAT Values".strip()
        return InlineInsert(head, tail, token.end)
    if not token.is_word("FORMAT"):
        return None
    name = next(stream, None)
    if name is None or name.kind not in ("word", "quoted"):
        return None
    tail = request_text[infile_at : name.end].decode("utf-8").strip()
    return InlineInsert(head, tail, _data_start(text, name.end))


def quote_string(value: str) -> str:
    """A ClickHouse string literal holding value."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def quote_identifier(name: str) -> str:
    """A ClickHouse back-quoted identifier naming name."""
    escaped = name.replace("\\", "\\\\").replace("`", "\\`")
    return f"`{escaped}`"


def setting_changes(
    applied: Mapping[str, str],
    wanted: Mapping[str, str],
    baseline: Mapping[str, str],
) -> list[str]:
    """The `name = value` parts of a SET moving the session from `applied` to `wanted`.

    Settings no longer wanted go back to the value the session started with
    (`baseline`: chDB's own changes) or to DEFAULT. Names must already be checked.
    """
    parts = []
    for name in sorted(set(applied) - set(wanted)):
        value = quote_string(baseline[name]) if name in baseline else "DEFAULT"
        parts.append(f"{name} = {value}")
    for name, value in sorted(wanted.items()):
        if applied.get(name) != value:
            parts.append(f"{name} = {quote_string(value)}")
    return parts


# ---------------------------------------------------------------- errors, headers


def parse_chdb_error(message: str) -> QueryError:
    """The ClickHouse error code, name and text inside a chDB exception message."""
    match = _CHDB_ERROR.search(message)
    if match is None:
        return QueryError(STD_EXCEPTION, message.strip() or "Unknown chDB error.")
    text = match.group(2).strip()
    name_match = _ERROR_NAME.search(text)
    name = name_match.group(1) if name_match else None
    if name_match:
        text = text[: name_match.start()].rstrip()
    return QueryError(int(match.group(1)), text, name)


def http_status_for(code: int) -> int:
    """The HTTP status ClickHouse 25.8 answers with for an error code."""
    return HTTP_STATUS_BY_CODE.get(code, 500)


def error_body(error: QueryError, engine_version: str) -> bytes:
    """The body of an error answer, as ClickHouse writes it."""
    name = f" ({error.name})" if error.name else ""
    version = f" (version {engine_version} (chDB))" if engine_version else ""
    text = f"Code: {error.code}. DB::Exception: {error.message}{name}{version}\n"
    return text.encode("utf-8")


def content_type_for(output_format: str) -> str:
    """The Content-Type ClickHouse sends with an output format."""
    name = output_format.lower()
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        header = "present" if "withnames" in name else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if name.startswith("json"):
        return "application/json; charset=UTF-8"
    if name in ("pretty", "prettycompact", "prettyspace", "vertical", "markdown"):
        return "text/plain; charset=UTF-8"
    if name.startswith(("native", "rowbinary", "arrow", "parquet", "orc", "avro")):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


@dataclass(frozen=True)
class ChdbResult:
    """One chDB answer: its bytes and the numbers behind X-ClickHouse-Summary."""

    body: bytes = b""
    result_rows: int = 0
    result_bytes: int = 0
    read_rows: int = 0
    read_bytes: int = 0
    elapsed_s: float = 0.0


def summary_header(result: ChdbResult, is_insert: bool) -> str:
    """X-ClickHouse-Summary: what was read, written and returned, as strings.

    chDB counts the rows an INSERT with rows in the request wrote; for
    INSERT ... SELECT it reports none, so written_rows is 0 there.
    """
    written_rows = result.result_rows if is_insert else 0
    written_bytes = result.result_bytes if is_insert else 0
    summary = {
        "read_rows": result.read_rows,
        "read_bytes": result.read_bytes,
        "written_rows": written_rows,
        "written_bytes": written_bytes,
        "total_rows_to_read": result.read_rows,
        "result_rows": 0 if is_insert else result.result_rows,
        "result_bytes": 0 if is_insert else result.result_bytes,
        "elapsed_ns": int(result.elapsed_s * 1e9),
    }
    return json.dumps({k: str(v) for k, v in summary.items()}, separators=(",", ":"))


# ---------------------------------------------------------------- the chDB session


class ChdbSession:
    """The process's one chDB connection, opened at start and closed at stop.

    It is never reopened while the process lives, so Kafka-engine tables and the
    materialized views on them keep consuming in ClickHouse's background threads.

    Concurrent calls on one chDB 3.7.2 connection did not fail when measured (800
    inserts and queries from 4 threads), but they run one at a time anyway (two
    CPU-bound queries from two threads took twice as long as one), and the current
    database, settings and query parameters belong to the connection's single
    session. So every call here takes one lock: a request's `USE`, `SET` and query
    run together, and requests never see each other's settings (without the lock
    they did: 72 of 200 reads saw the other thread's max_threads). A long query
    delays the rest.

    Limitations, because all clients share that session:
    - `session_id` is ignored: a `SET` or `USE` statement lasts for its own request
      only (as in ClickHouse without a session); temporary tables are shared.
    - a query parameter (`param_x`) keeps its last value after its request, so a
      query naming a parameter it did not pass sees the last value, not an error.
    - `readonly` and `profile` cannot be passed per request (NOT_IMPLEMENTED).
    - there is no authentication; user and password are ignored.
    """

    def __init__(self, conn: Any, data_dir: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._closed = False
        self.data_dir = data_dir
        self._database: str | None = None
        self._applied: dict[str, str] = {}
        self._params: dict[str, str] = {}
        self.engine_version = self._scalar("SELECT version()")
        self.timezone = self._scalar("SELECT timezone()")
        self._baseline = self._changed_settings()

    @classmethod
    def open(cls, data_dir: Path) -> ChdbSession:
        """Open chDB on data_dir; ConfigurationError if another process holds it."""
        # Imported here: it is heavy, and the port is known to be free by now. The
        # raw connection, not chdb.connect's wrapper, because the wrapper turns some
        # format names into DataFrames; this one answers bytes for every format.
        from chdb import _chdb

        if "?" in str(data_dir):
            raise ConfigurationError(f"data dir {data_dir} must not contain '?'")
        data_dir.mkdir(parents=True, exist_ok=True)
        _check_unlocked(data_dir)
        try:
            conn = _chdb.connect(f"file:{data_dir}")
        except RuntimeError as exc:
            message = f"chDB could not open data dir {data_dir}: {exc}"
            raise FatalError(message) from exc
        return cls(conn, data_dir)

    def run(self, sql: str, params: RequestParams, kind: str) -> ChdbResult:
        """Run one statement with the request's database, settings and parameters."""
        with self._lock:
            if self._closed:
                raise QueryError(ABORTED, SHUTTING_DOWN)
            self._prepare(params)
            try:
                return self._query(sql, params.default_format)
            finally:
                if kind == "USE":
                    self._database = None
                elif kind == "SET":
                    self._restore_settings()

    def close(self) -> None:
        """Wait for the running query, then close chDB so its data is flushed."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def _prepare(self, params: RequestParams) -> None:
        if params.database != self._database:
            self._query(f"USE {quote_identifier(params.database)}", DEFAULT_FORMAT)
            self._database = params.database
        parts = setting_changes(self._applied, params.settings, self._baseline)
        parts += [
            f"param_{name} = {quote_string(value)}"
            for name, value in sorted(params.query_params.items())
            if self._params.get(name) != value
        ]
        if not parts:
            return
        try:
            self._query(f"SET {', '.join(parts)}", DEFAULT_FORMAT)
        except QueryError:
            self._restore_settings()
            raise
        self._applied = dict(params.settings)
        self._params.update(params.query_params)

    def _restore_settings(self) -> None:
        """Put every setting back to how the session started, after a SET failed
        or a client ran a SET statement of its own."""
        current = self._changed_settings()
        drifted = {n for n, v in current.items() if self._baseline.get(n) != v}
        drifted |= set(self._baseline) - set(current)
        parts = setting_changes(dict.fromkeys(drifted, ""), {}, self._baseline)
        if parts:
            self._query(f"SET {', '.join(parts)}", DEFAULT_FORMAT)
        self._applied = {}
        self._params = {}

    def _changed_settings(self) -> dict[str, str]:
        sql = "SELECT name, value FROM system.settings WHERE changed"
        rows = self._query(sql, "JSONEachRow").body.decode().splitlines()
        return {row["name"]: row["value"] for row in map(json.loads, rows)}

    def _scalar(self, sql: str) -> str:
        return self._query(sql, DEFAULT_FORMAT).body.decode().strip()

    def _query(self, sql: str, output_format: str) -> ChdbResult:
        try:
            result = self._conn.query(sql, output_format)
        except RuntimeError as exc:
            raise parse_chdb_error(str(exc)) from exc
        return ChdbResult(
            body=result.bytes(),
            result_rows=result.rows_read(),
            result_bytes=result.bytes_read(),
            read_rows=result.storage_rows_read(),
            read_bytes=result.storage_bytes_read(),
            elapsed_s=result.elapsed(),
        )


def _check_unlocked(data_dir: Path) -> None:
    """ConfigurationError when another process holds the data dir.

    chDB 3.7.2 only prints why it cannot open a locked directory and raises a
    generic error, so the lock ClickHouse takes on its status file is tried first.
    """
    status = data_dir / "status"
    if not status.exists():
        return
    with status.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            owner = handle.read().decode(errors="replace").partition("\n")[0]
            message = DATA_DIR_LOCKED.format(path=data_dir, owner=owner or "?")
            raise ConfigurationError(message) from exc
        fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- one query


@dataclass
class Reply:
    """An HTTP answer, built before any byte of it is sent."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = ""
    rows: int = 0


def request_text(params: RequestParams, body: bytes) -> bytes:
    """The `query` parameter and the body joined as ClickHouse joins them."""
    if params.query:
        return params.query.encode("utf-8") + b"\n" + body
    return body


def _write_rows(data: memoryview, spool_dir: Path) -> str:
    fd, path = tempfile.mkstemp(prefix="insert-", suffix=".rows", dir=spool_dir)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def run_request(
    session: ChdbSession,
    params: RequestParams,
    body: bytes,
    readonly: bool,
    spool_dir: Path,
) -> Reply:
    """Run the request's statement; QueryError when it fails."""
    text = request_text(params, body)
    if not text.strip():
        raise QueryError(SYNTAX_ERROR, "Empty query.")
    insert = split_insert(text)
    if insert is not None:
        if readonly:
            raise QueryError(READONLY, _GET_IS_READONLY)
        path = _write_rows(memoryview(text)[insert.data_offset :], spool_dir)
        try:
            result = session.run(insert.infile_sql(path), params, "INSERT")
        finally:
            os.unlink(path)
        return _reply(session, params, result, Statement("INSERT", None, False))
    try:
        sql = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QueryError(BAD_ARGUMENTS, f"The query is not UTF-8: {exc}.") from exc
    statement = scan_statement(sql)
    if statement.multiple:
        raise QueryError(SYNTAX_ERROR, "Multi-statements are not allowed.")
    if readonly and statement.kind not in GET_KINDS:
        raise QueryError(READONLY, _GET_IS_READONLY)
    result = session.run(sql, params, statement.kind)
    return _reply(session, params, result, statement)


_GET_IS_READONLY = (
    "Cannot execute query in readonly mode. For queries over HTTP, method GET "
    "implies readonly. You should use method POST for modifying queries."
)


def _reply(
    session: ChdbSession, params: RequestParams, result: ChdbResult, stmt: Statement
) -> Reply:
    is_insert = stmt.kind == "INSERT"
    headers = {
        "X-ClickHouse-Summary": summary_header(result, is_insert),
        "X-ClickHouse-Timezone": params.settings.get("session_timezone")
        or session.timezone,
        "Content-Type": "text/plain; charset=UTF-8",
    }
    if stmt.kind in RESULT_KINDS or (stmt.output_format and not is_insert):
        output_format = stmt.output_format or params.default_format
        headers["X-ClickHouse-Format"] = output_format
        headers["Content-Type"] = content_type_for(output_format)
    return Reply(200, result.body, headers, stmt.kind, result.result_rows)


def error_reply(error: QueryError, engine_version: str) -> Reply:
    headers = {
        "X-ClickHouse-Exception-Code": str(error.code),
        "Content-Type": "text/plain; charset=UTF-8",
    }
    return Reply(
        http_status_for(error.code), error_body(error, engine_version), headers
    )


# ---------------------------------------------------------------- HTTP


class ClickHouseHTTPServer(LocalHTTPServer):
    """A threaded HTTP server whose handlers share one ChdbSession."""

    session: ChdbSession | None = None
    spool_dir: Path = Path(tempfile.gettempdir())
    display_name: str = socket.gethostname()
    requests_served = 0


class ClickHouseHandler(BaseHTTPRequestHandler):
    """Answers `/`, `/ping` and `/replicas_status` as ClickHouse's HTTP port does."""

    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse"
    sys_version = ""
    timeout = KEEP_ALIVE_S
    server: ClickHouseHTTPServer

    def setup(self) -> None:
        super().setup()
        # Without it Nagle's algorithm holds small answers back ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch(readonly=True)

    def do_POST(self) -> None:
        self._dispatch(readonly=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Each request is logged once, by _dispatch, with more detail."""

    def _dispatch(self, readonly: bool) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        query_id = str(uuid.uuid4())
        if path in ("/ping", "/replicas_status"):
            reply = Reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        elif path != "/":
            text = f"There is no handle {path}\n\nUse / or /ping for health checks.\n"
            reply = Reply(404, text.encode(), {"Content-Type": "text/plain"})
        else:
            reply, query_id = self._query_reply(readonly, query_id)
        self._send(reply, query_id)
        self.server.requests_served += 1
        log.debug(
            "request method=%s path=%s kind=%s status=%d rows=%d bytes=%d ms=%.1f "
            "query_id=%s",
            self.command, path, reply.kind or "-", reply.status, reply.rows,
            len(reply.body), (time.monotonic() - started) * 1000, query_id,
        )  # fmt: skip

    def _query_reply(self, readonly: bool, query_id: str) -> tuple[Reply, str]:
        session = self.server.session
        engine = session.engine_version if session else ""
        try:
            body = self._read_body()
            pairs = parse_qsl(urlsplit(self.path).query, keep_blank_values=True)
            content_type = self.headers.get("Content-Type", "")
            if content_type.lower().startswith("multipart/form-data"):
                pairs += parse_multipart(content_type, body)
                body = b""
            params = parse_params(
                pairs,
                self.headers.get("X-ClickHouse-Database"),
                self.headers.get("X-ClickHouse-Format"),
            )
            query_id = params.query_id or query_id
            if session is None:
                raise QueryError(ABORTED, SHUTTING_DOWN)
            reply = run_request(session, params, body, readonly, self.server.spool_dir)
        except QueryError as error:
            log.debug("query failed code=%d name=%s", error.code, error.name)
            return error_reply(error, engine), query_id
        except Exception as exc:  # a bug here must not kill the connection silently
            log.exception("request failed query_id=%s", query_id)
            failure = QueryError(STD_EXCEPTION, f"{type(exc).__name__}: {exc}")
            return error_reply(failure, engine), query_id
        self._compress(reply, params)
        return reply, query_id

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            try:
                body = read_chunked(self.rfile)
            except BadBody as exc:
                self.close_connection = True
                raise QueryError(BAD_ARGUMENTS, str(exc)) from exc
        else:
            length = self.headers.get("Content-Length") or "0"
            if not length.isdigit():
                self.close_connection = True
                raise QueryError(BAD_ARGUMENTS, f"Bad Content-Length '{length}'.")
            body = self.rfile.read(int(length))
        return decode_body(body, self.headers.get("Content-Encoding"))

    def _compress(self, reply: Reply, params: RequestParams) -> None:
        if not (params.enable_http_compression and reply.body):
            return
        encoding = choose_response_encoding(self.headers.get("Accept-Encoding"))
        if encoding is not None:
            reply.body = encode_body(reply.body, encoding)
            reply.headers["Content-Encoding"] = encoding

    def _send(self, reply: Reply, query_id: str) -> None:
        self.send_response(reply.status)
        headers = {
            **reply.headers,
            "X-ClickHouse-Server-Display-Name": self.server.display_name,
            "X-ClickHouse-Query-Id": query_id,
            "Keep-Alive": f"timeout={KEEP_ALIVE_S}",
            "Content-Length": str(len(reply.body)),
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)


# ---------------------------------------------------------------- process


@dataclass(frozen=True)
class ServerConfig:
    """The command line of one server process."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8123
    log_level: str = "INFO"


def bind(config: ServerConfig) -> ClickHouseHTTPServer:
    """Listen on host:port; ConfigurationError naming the port when it is taken."""
    try:
        return ClickHouseHTTPServer((config.host, config.port), ClickHouseHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            message = PORT_IN_USE.format(host=config.host, port=config.port)
            raise ConfigurationError(message) from exc
        message = f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
        raise ConfigurationError(message) from exc


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _warn_about(config: ServerConfig, chdb_version: str) -> None:
    if chdb_version != EXPECTED_CHDB:
        log.warning(
            "chdb=%s is not %s: chDB 4.x cannot create Kafka tables",
            chdb_version, EXPECTED_CHDB,
        )  # fmt: skip
    if not _is_loopback(config.host):
        log.warning(
            "host=%s is not loopback: this server has no authentication", config.host
        )


def _stop_on_signals() -> tuple[threading.Event, list[int]]:
    """An event set by SIGTERM or SIGINT, and the list of signals received."""
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stopping, received


def serve(config: ServerConfig) -> int:
    """Serve until SIGTERM or SIGINT, then close chDB; the process's exit code."""
    import chdb

    _warn_about(config, chdb.__version__)
    server = bind(config)
    data_dir = config.data_dir.resolve()
    try:
        session = ChdbSession.open(data_dir)
    except RevetlError:
        server.server_close()
        raise
    stopping, received = _stop_on_signals()
    # A handler still writing rows at stop must not turn cleanup into an exit 1.
    with tempfile.TemporaryDirectory(
        prefix="revetl-clickhouse-", ignore_cleanup_errors=True
    ) as spool:
        server.session = session
        server.spool_dir = Path(spool)
        thread = threading.Thread(target=server.serve_forever, name="http")
        thread.start()
        log.info(
            "clickhouse ready host=%s port=%d data_dir=%s chdb=%s engine=%s",
            config.host, server.server_port, data_dir, chdb.__version__,
            session.engine_version,
        )  # fmt: skip
        stopping.wait()
        server.shutdown()
        thread.join()
        server.server_close()
        session.close()
    log.info(
        "clickhouse stopped signal=%s requests=%d",
        signal.Signals(received[0]).name if received else "-",
        server.requests_served,
    )
    return 0


def parse_args(argv: Sequence[str] | None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m services.clickhouse_server",
        description="Serve ClickHouse's HTTP interface from chDB on a data dir. "
        "Stops cleanly, flushing chDB, on SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="chDB's data directory; one process per directory",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; there is no authentication)",
    )
    parser.add_argument(
        "--port", type=int, default=8123, help="HTTP port (default 8123)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="DEBUG logs one line per request",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port (0-65535)")
    return ServerConfig(args.data_dir, args.host, args.port, args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return serve(config)
    except ConfigurationError as exc:
        log.error("clickhouse cannot start: %s", exc)
        return 2
    except RevetlError as exc:
        log.error("clickhouse failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
