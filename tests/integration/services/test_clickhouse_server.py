"""The chDB HTTP front as a process, driven by clickhouse-connect as a real server."""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import lz4.frame
import pytest
import urllib3
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from services.config import REPO_ROOT

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
READY = re.compile(r"clickhouse ready host=\S+ port=(\d+) data_dir=\S+ chdb=3\.7\.2")


@dataclass
class ServerProcess:
    """One `python -m services.clickhouse_server` child and its stderr log."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @classmethod
    def start(cls, data_dir: Path, log_path: Path, port: int = 0) -> ServerProcess:
        argv = [
            sys.executable, "-m", "services.clickhouse_server",
            "--data-dir", str(data_dir), "--port", str(port),
        ]  # fmt: skip
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=log_file)
        server = cls(proc, log_path)
        server.port = server._wait_ready()
        return server

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = READY.search(self.log())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"server did not become ready; its log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> Client:
        return clickhouse_connect.get_client(host="127.0.0.1", port=self.port, **kwargs)

    def url(self, params: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{params}"

    def stop(self) -> int:
        """SIGTERM, then the exit code (killing it if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("clickhouse")
    process = ServerProcess.start(base / "data", base / "server.log")
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    c = server.client()
    yield c
    c.close()


@pytest.fixture
def table() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


TYPED_DDL = """
CREATE TABLE {name} (
    id Int64, s String, ts DateTime, d Date, n Nullable(Int32), tags Array(String)
) ENGINE = MergeTree ORDER BY id
"""
TYPED_COLUMNS = ["id", "s", "ts", "d", "n", "tags"]


def typed_rows(count: int) -> list[list[object]]:
    start = dt.datetime(2024, 1, 1, 10, 0, 0)
    return [
        [
            i - count // 2,
            f"user {i} ü'\t\"",
            start + dt.timedelta(seconds=i * 37),
            dt.date(2024, 1, 1) + dt.timedelta(days=i % 400),
            None if i % 3 == 0 else i * 7,
            [f"t{j}" for j in range(i % 4)],
        ]
        for i in range(count)
    ]


def test_clickhouse_connect_connects_and_reads_server_info(
    server: ServerProcess, client: Client
) -> None:
    ping = urllib3.request("GET", server.url("ping"))

    assert str(client.server_version).startswith("25.8.")
    assert client.ping() is True
    assert (ping.status, ping.data) == (200, b"Ok.\n")
    assert client.command("SELECT 1 + 1") == 2


def test_typed_values_round_trip(client: Client, table: str) -> None:
    rows = typed_rows(3000)

    client.command(TYPED_DDL.format(name=table))
    summary = client.insert(table, rows, column_names=TYPED_COLUMNS)
    result = client.query(f"SELECT * FROM {table} ORDER BY id")

    assert summary.written_rows == 3000
    assert result.column_names == tuple(TYPED_COLUMNS)
    assert [list(r) for r in result.result_rows] == rows
    assert client.command(f"SELECT count() FROM {table} WHERE n IS NULL") == 1000


def test_query_df_and_query_arrow(client: Client, table: str) -> None:
    client.command(TYPED_DDL.format(name=table))
    client.insert(table, typed_rows(10), column_names=TYPED_COLUMNS)

    frame = client.query_df(f"SELECT id, s, n FROM {table} ORDER BY id")
    arrow = client.query_arrow(f"SELECT id, s, tags FROM {table} ORDER BY id")

    assert type(frame).__name__ == "DataFrame"
    assert list(frame.columns) == ["id", "s", "n"]
    assert frame["id"].tolist() == list(range(-5, 5))
    assert frame["n"].isna().sum() == 4
    assert type(arrow).__name__ == "Table"
    assert arrow.column("tags").to_pylist()[:5] == [
        [],
        ["t0"],
        ["t0", "t1"],
        ["t0", "t1", "t2"],
        [],
    ]


def test_insert_of_300000_rows(client: Client, table: str) -> None:
    count = 300_000
    ids = list(range(count))
    columns: list[list[Any]] = [ids, [f"s{i}" for i in ids]]
    client.command(f"CREATE TABLE {table} (id Int64, s String) ENGINE = MergeTree "
                   "ORDER BY id")  # fmt: skip

    summary = client.insert(
        table, columns, column_names=["id", "s"], column_oriented=True
    )

    assert summary.written_rows == count
    assert client.query(f"SELECT count(), sum(id), max(s) FROM {table}").result_rows[
        0
    ] == (count, count * (count - 1) // 2, "s99999")


def test_database_on_the_client(server: ServerProcess, client: Client) -> None:
    database = f"db_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {database}")
    scoped = server.client(database=database)

    scoped.command("CREATE TABLE here (x UInt8) ENGINE = Memory")
    scoped.insert("here", [[1], [2]], column_names=["x"])

    assert scoped.command("SELECT currentDatabase()") == database
    assert client.command("SELECT currentDatabase()") == "default"
    assert client.command(f"SELECT sum(x) FROM {database}.here") == 3
    with pytest.raises(DatabaseError) as caught:
        server.client(database="no_such_db").command("SELECT 1")
    assert caught.value.code == 81


def test_per_query_settings_apply_to_their_query_only(client: Client) -> None:
    query = "SELECT getSetting('max_threads'), getSetting('max_result_rows')"
    before = client.query(query).result_rows[0]

    during = client.query(
        query, settings={"max_threads": 1, "max_result_rows": 5000}
    ).result_rows[0]
    after = client.query(query).result_rows[0]

    assert during == (1, 5000)
    assert after == before != during


def test_set_and_use_statements_last_for_their_own_request(client: Client) -> None:
    before = client.command("SELECT getSetting('max_threads')")

    client.command("SET max_threads = 1")
    client.command("USE system")

    assert client.command("SELECT getSetting('max_threads')") == before != 1
    assert client.command("SELECT currentDatabase()") == "default"


def test_empty_and_multi_statement_requests_are_syntax_errors(
    server: ServerProcess,
) -> None:
    empty = urllib3.request("POST", server.url(), body=b"  \n")
    multi = urllib3.request("POST", server.url(), body=b"SELECT 1; SELECT 2")
    trailing = urllib3.request("POST", server.url(), body=b"SELECT 1;")

    assert empty.headers["X-ClickHouse-Exception-Code"] == "62"
    assert multi.status == 400
    assert b"Multi-statements are not allowed" in multi.data
    assert (trailing.status, trailing.data) == (200, b"1\n")


def test_max_execution_time_stops_a_slow_query(client: Client) -> None:
    slow = "SELECT sleepEachRow(0.2) FROM numbers(40) SETTINGS max_block_size = 1"

    with pytest.raises(DatabaseError) as caught:
        client.query(slow, settings={"max_execution_time": 1})

    assert caught.value.code == 159


def test_date_time_input_format_governs_text_inserts(
    client: Client, table: str
) -> None:
    client.command(f"CREATE TABLE {table} (ts DateTime) ENGINE = Memory")
    row = "2024-03-04T05:06:07Z\n"

    client.raw_insert(table, ["ts"], row, fmt="CSV",
                      settings={"date_time_input_format": "best_effort"})  # fmt: skip
    with pytest.raises(DatabaseError) as caught:
        client.raw_insert(table, ["ts"], row, fmt="CSV",
                          settings={"date_time_input_format": "basic"})  # fmt: skip

    assert client.command(f"SELECT toString(ts) FROM {table}") == "2024-03-04 05:06:07"
    assert caught.value.code == 117  # INCORRECT_DATA: the CSV row did not parse


def test_sql_errors_carry_the_clickhouse_code(
    server: ServerProcess, client: Client
) -> None:
    with pytest.raises(DatabaseError) as unknown_table:
        client.query("SELECT * FROM no_such_table")
    with pytest.raises(DatabaseError) as syntax:
        client.command("SELEC 1")
    raw = urllib3.request("POST", server.url(), body=b"SELECT * FROM no_such_table")

    assert unknown_table.value.code == 60
    assert "UNKNOWN_TABLE" in str(unknown_table.value)
    assert syntax.value.code == 62
    assert raw.status == 404
    assert raw.headers["X-ClickHouse-Exception-Code"] == "60"
    assert raw.data.startswith(b"Code: 60. DB::Exception: ")


@pytest.mark.parametrize("compress", [False, True, "lz4", "zstd", "gzip"])
def test_compression_on_and_off_round_trips(
    server: ServerProcess, table: str, compress: bool | str
) -> None:
    c = server.client(compress=compress)
    rows = typed_rows(20_000)
    c.command(TYPED_DDL.format(name=table))

    c.insert(table, rows, column_names=TYPED_COLUMNS)
    back = c.query(f"SELECT * FROM {table} ORDER BY id").result_rows

    assert [list(r) for r in back] == rows
    c.close()


def test_compressed_request_and_answer_bodies_on_the_wire(
    server: ServerProcess,
) -> None:
    query = b"SELECT number FROM numbers(1000) FORMAT TSV"
    answer = urllib3.request(
        "POST",
        server.url("?enable_http_compression=1"),
        body=lz4.frame.compress(query),
        headers={"Content-Encoding": "lz4", "Accept-Encoding": "gzip"},
        decode_content=False,
    )
    plain = urllib3.request(
        "POST", server.url(), body=query, headers={"Accept-Encoding": "gzip"}
    )

    assert answer.headers["Content-Encoding"] == "gzip"
    assert len(answer.data) < len(plain.data)
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["X-ClickHouse-Format"] == "TSV"
    assert plain.data.splitlines()[-1] == b"999"


def test_get_is_readonly_and_unknown_paths_are_404(server: ServerProcess) -> None:
    read = urllib3.request("GET", server.url("?query=SELECT%2042"))
    write = urllib3.request("GET", server.url("?query=CREATE%20DATABASE%20nope"))
    other = urllib3.request("GET", server.url("play"))

    assert (read.status, read.data) == (200, b"42\n")
    assert read.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert write.status == 500
    assert write.headers["X-ClickHouse-Exception-Code"] == "164"
    assert other.status == 404


def test_concurrent_clients_do_not_see_each_others_settings(
    server: ServerProcess, table: str
) -> None:
    server.client().command(f"CREATE TABLE {table} (x UInt32) ENGINE = MergeTree "
                            "ORDER BY x")  # fmt: skip
    errors: list[str] = []

    def work(worker: int) -> None:
        c = server.client()
        limit = 1000 + worker
        try:
            for i in range(30):
                got = c.command("SELECT getSetting('max_result_rows')",
                                settings={"max_result_rows": limit})  # fmt: skip
                if got != limit:
                    errors.append(f"worker {worker} saw {got}, not {limit}")
                c.insert(table, [[worker * 1000 + i]], column_names=["x"])
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert errors == []
    assert server.client().command(f"SELECT count() FROM {table}") == 120


def test_background_work_runs_between_requests(client: Client, table: str) -> None:
    client.command(f"CREATE TABLE {table} (n UInt8) ENGINE = MergeTree ORDER BY n")
    client.command(f"CREATE MATERIALIZED VIEW {table}_mv REFRESH EVERY 1 SECOND "
                   f"APPEND TO {table} AS SELECT 1 AS n")  # fmt: skip

    deadline = time.monotonic() + 30
    ticks = 0
    while time.monotonic() < deadline and ticks < 3:
        time.sleep(1)
        ticks = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
    client.command(f"DROP VIEW {table}_mv")

    assert ticks >= 3


def test_data_survives_a_restart_and_sigterm_exits_0(tmp_path: Path) -> None:
    first = ServerProcess.start(tmp_path / "data", tmp_path / "first.log")
    c = first.client()
    c.command("CREATE TABLE kept (id Int64, s String) ENGINE = MergeTree ORDER BY id")
    c.insert("kept", [[i, f"v{i}"] for i in range(1000)], column_names=["id", "s"])
    c.close()

    first_code = first.stop()
    second = ServerProcess.start(tmp_path / "data", tmp_path / "second.log")
    kept = second.client().query("SELECT count(), sum(id) FROM kept").result_rows
    second_code = second.stop()

    assert (first_code, second_code) == (0, 0)
    assert kept == [(1000, 499500)]
    assert "clickhouse stopped signal=SIGTERM" in first.log()


def test_a_taken_port_or_data_dir_is_a_clear_error(
    server: ServerProcess, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "services.clickhouse_server"]
    taken_port = subprocess.run(
        [*argv, "--data-dir", str(tmp_path / "other"), "--port", str(server.port)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S,
    )  # fmt: skip
    data_dir = re.search(r"data_dir=(\S+)", server.log())
    assert data_dir is not None
    taken_dir = subprocess.run(
        [*argv, "--data-dir", data_dir.group(1), "--port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S,
    )  # fmt: skip

    assert taken_port.returncode == 2
    assert f"port {server.port} on 127.0.0.1 is already in use" in taken_port.stderr
    assert taken_dir.returncode == 2
    assert "is locked by another chDB process (PID: " in taken_dir.stderr
