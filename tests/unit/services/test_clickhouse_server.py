"""The chDB HTTP front's pure parts: params, bodies, SQL splitting, errors, headers."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable

import lz4.frame
import pytest
import zstandard
from clickhouse_connect.driver._backend.httpcommon import (
    build_http_error,
    decompress_response,
    summary_from_headers,
)
from clickhouse_connect.driver.compression import Lz4Compressor
from urllib3 import encode_multipart_formdata

from services.clickhouse_server import (
    BAD_ARGUMENTS,
    CANNOT_DECOMPRESS,
    NOT_IMPLEMENTED,
    STD_EXCEPTION,
    UNKNOWN_SETTING,
    ChdbResult,
    QueryError,
    RequestParams,
    choose_response_encoding,
    content_type_for,
    decode_body,
    encode_body,
    error_body,
    http_status_for,
    parse_chdb_error,
    parse_multipart,
    parse_params,
    quote_identifier,
    quote_string,
    request_text,
    scan_statement,
    setting_changes,
    split_insert,
    summary_header,
)

# ---------------------------------------------------------------- parameters


def test_params_split_into_query_options_settings_and_query_parameters() -> None:
    pairs = [
        ("query", "SELECT {x:UInt8}"),
        ("database", "ods"),
        ("default_format", "JSONEachRow"),
        ("query_id", "q-1"),
        ("session_id", "s-1"),
        ("wait_end_of_query", "1"),
        ("send_progress_in_http_headers", "1"),
        ("http_headers_progress_interval_ms", "120000"),
        ("cancel_http_readonly_queries_on_client_close", "1"),
        ("client_protocol_version", "54405"),
        ("enable_http_compression", "1"),
        ("compress", "0"),
        ("date_time_input_format", "best_effort"),
        ("max_execution_time", "5"),
        ("param_x", "7"),
    ]

    params = parse_params(pairs)

    assert params.query == "SELECT {x:UInt8}"
    assert (params.database, params.default_format) == ("ods", "JSONEachRow")
    assert params.query_id == "q-1"
    assert params.enable_http_compression is True
    assert params.settings == {
        "date_time_input_format": "best_effort",
        "max_execution_time": "5",
    }
    assert params.query_params == {"x": "7"}


def test_params_default_to_clickhouse_defaults_and_then_to_headers() -> None:
    assert parse_params([]) == RequestParams(
        database="default", default_format="TabSeparated"
    )

    from_headers = parse_params([], "ods", "CSV")
    assert (from_headers.database, from_headers.default_format) == ("ods", "CSV")

    url_wins = parse_params([("database", "dds")], "ods", None)
    assert url_wins.database == "dds"


@pytest.mark.parametrize("name", ["compress", "decompress"])
def test_clickhouse_block_compression_is_refused_not_ignored(name: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_params([(name, "1")])

    assert caught.value.code == NOT_IMPLEMENTED
    assert "Content-Encoding" in caught.value.message


@pytest.mark.parametrize("name", ["readonly", "profile"])
def test_session_wide_settings_are_refused(name: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_params([(name, "1")])

    assert caught.value.code == NOT_IMPLEMENTED
    assert name in caught.value.message


def test_a_setting_name_that_could_inject_sql_is_unknown() -> None:
    with pytest.raises(QueryError) as caught:
        parse_params([("max_threads = 1; DROP TABLE t; --", "1")])

    assert caught.value.code == UNKNOWN_SETTING
    assert caught.value.name == "UNKNOWN_SETTING"


def test_a_bad_query_parameter_name_is_refused() -> None:
    with pytest.raises(QueryError) as caught:
        parse_params([("param_x = 1, y", "1")])

    assert caught.value.code == BAD_ARGUMENTS


def test_multipart_form_fields_become_params() -> None:
    body, content_type = encode_multipart_formdata(
        {"query": "SELECT {s:String}", "param_s": "é\tx"}
    )

    pairs = parse_multipart(content_type, body)

    assert pairs == [("query", "SELECT {s:String}"), ("param_s", "é\tx")]


def test_multipart_external_data_files_are_refused() -> None:
    body, content_type = encode_multipart_formdata(
        {"query": "SELECT 1", "ext": ("ext.tsv", b"1\n", "text/plain")}
    )

    with pytest.raises(QueryError) as caught:
        parse_multipart(content_type, body)

    assert caught.value.code == NOT_IMPLEMENTED
    assert "ext" in caught.value.message


def test_request_text_joins_the_query_parameter_and_body_with_a_newline() -> None:
    params = RequestParams(query="INSERT INTO t FORMAT CSV")

    assert request_text(params, b"1,2\n") == b"INSERT INTO t FORMAT CSV\n1,2\n"
    assert request_text(RequestParams(), b"SELECT 1") == b"SELECT 1"


# ---------------------------------------------------------------- bodies


def test_lz4_body_of_several_frames_as_clickhouse_connect_sends_it() -> None:
    # clickhouse-connect leaves its compressors untyped.
    compressor = Lz4Compressor()  # type: ignore[no-untyped-call]
    compress: Callable[[bytes], bytes] = compressor.compress_block
    blocks = [b"first block " * 100, b"second block " * 100]
    body = b"".join(compress(block) for block in blocks)

    assert decode_body(body, "lz4") == b"".join(blocks)


def test_zstd_body_of_several_frames() -> None:
    body = zstandard.ZstdCompressor().compress(
        b"abc"
    ) + zstandard.ZstdCompressor().compress(b"def")

    assert decode_body(body, "zstd") == b"abcdef"


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)],
)
def test_gzip_deflate_and_identity_bodies(encoding: str, compress: type) -> None:
    assert decode_body(compress(b"SELECT 1"), encoding) == b"SELECT 1"
    assert decode_body(b"SELECT 1", None) == b"SELECT 1"


def test_corrupt_and_unknown_encodings_are_errors() -> None:
    with pytest.raises(QueryError) as corrupt:
        decode_body(b"not lz4 at all", "lz4")
    with pytest.raises(QueryError) as truncated:
        decode_body(lz4.frame.compress(b"x" * 1000)[:-6], "lz4")
    with pytest.raises(QueryError) as bad_zstd:
        decode_body(b"(\xb5/\xfd not zstd", "zstd")
    with pytest.raises(QueryError) as unknown:
        decode_body(b"x", "snappy")

    assert corrupt.value.code == CANNOT_DECOMPRESS
    assert bad_zstd.value.code == CANNOT_DECOMPRESS
    assert truncated.value.code == CANNOT_DECOMPRESS
    assert unknown.value.code == NOT_IMPLEMENTED


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("lz4,zstd,br,gzip,deflate", "zstd"),
        ("lz4", "lz4"),
        ("gzip, deflate", "gzip"),
        ("deflate", "deflate"),
        ("br", None),
        ("", None),
        (None, None),
    ],
)
def test_response_encoding_follows_clickhouse_preference(
    accept: str | None, chosen: str | None
) -> None:
    assert choose_response_encoding(accept) == chosen


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "deflate"])
def test_encoded_answers_decode_with_clickhouse_connect(encoding: str) -> None:
    body = b"\x01\x01\x05check\x05UInt8\x01" * 50

    assert decompress_response(encode_body(body, encoding), encoding) == body


def test_lz4_answer_is_one_lz4_frame() -> None:
    # clickhouse-connect's one-shot decompress_response caps lz4 output at the
    # compressed size; its streaming query path reads whole frames like this.
    body = b"\x01\x01\x05check\x05UInt8\x01" * 50

    assert lz4.frame.decompress(encode_body(body, "lz4")) == body


# ---------------------------------------------------------------- SQL scanning


def test_statement_kind_format_and_multiple_statements() -> None:
    select = scan_statement("  -- note\n select 1 /* x */\n FORMAT Native")
    assert (select.kind, select.output_format, select.multiple) == (
        "SELECT",
        "Native",
        False,
    )

    ddl = scan_statement("CREATE TABLE t (format String) ENGINE = Memory;")
    assert (ddl.kind, ddl.output_format, ddl.multiple) == ("CREATE", None, False)

    assert scan_statement("SELECT 1; SELECT 2").multiple is True
    assert scan_statement("SELECT ';' ; ").multiple is False
    assert scan_statement("(SELECT 1)").kind == "("
    assert scan_statement("").kind == ""


def test_format_inside_a_subquery_or_as_a_function_is_not_the_output_format() -> None:
    nested = "SELECT * FROM (SELECT 1 FORMAT CSV) FORMAT `JSONEachRow`"
    assert scan_statement(nested).output_format == "JSONEachRow"
    assert scan_statement("SELECT format('{}', 1)").output_format is None
    assert scan_statement("SELECT 'FORMAT CSV'").output_format is None


def test_insert_with_native_rows_splits_at_the_first_row_byte() -> None:
    rows = b"\x02\x03\x01a\x05Int64" + bytes(range(256))
    text = b"INSERT INTO ods.t (`a`, `format`) FORMAT Native\n" + rows

    insert = split_insert(text)

    assert insert is not None
    assert insert.head == "INSERT INTO ods.t (`a`, `format`)"
    assert insert.tail == "FORMAT Native"
    assert text[insert.data_offset :] == rows
    assert insert.infile_sql("/tmp/r'1") == (
        "INSERT INTO ods.t (`a`, `format`) FROM INFILE '/tmp/r\\'1' FORMAT Native"
    )


def test_insert_keeps_its_settings_after_from_infile() -> None:
    text = b"insert into t settings async_insert=0, x='FORMAT' format CSV \t\r\n1,2\n"

    insert = split_insert(text)

    assert insert is not None
    assert insert.infile_sql("/f") == (
        "insert into t FROM INFILE '/f' settings async_insert=0, x='FORMAT' format CSV"
    )
    assert text[insert.data_offset :] == b"1,2\n"


def test_rows_start_after_blanks_when_no_newline_follows_the_format() -> None:
    text = b'INSERT INTO t FORMAT JSONEachRow   {"a": 1}'

    insert = split_insert(text)

    assert insert is not None
    assert text[insert.data_offset :] == b'{"a": 1}'


def test_insert_values_becomes_the_values_format() -> None:
    text = b"INSERT INTO TABLE `values` (a) VALUES (1), ('x;y')"

    insert = split_insert(text)

    assert insert is not None
    assert insert.infile_sql("/f") == (
        "INSERT INTO TABLE `values` (a) FROM INFILE '/f' FORMAT Values"
    )
    assert text[insert.data_offset :] == b" (1), ('x;y')"


def test_insert_into_a_table_function_is_split_after_its_arguments() -> None:
    text = b"INSERT INTO FUNCTION file('out.csv', 'CSV', 'a Int8') FORMAT CSV\n1\n"

    insert = split_insert(text)

    assert insert is not None
    assert insert.head == "INSERT INTO FUNCTION file('out.csv', 'CSV', 'a Int8')"
    assert text[insert.data_offset :] == b"1\n"


@pytest.mark.parametrize(
    "text",
    [
        b"INSERT INTO t SELECT * FROM s",
        b"INSERT INTO t (a) SELECT 1",
        b"INSERT INTO t (SELECT 1)",
        b"INSERT INTO t WITH 1 AS x SELECT x",
        b"INSERT INTO t FROM INFILE '/f' FORMAT CSV",
        b"SELECT 1 FORMAT Native",
        b"INSERT INTO t",
        b"",
    ],
)
def test_statements_without_inline_rows_are_not_split(text: bytes) -> None:
    assert split_insert(text) is None


def test_non_utf8_rows_are_never_decoded() -> None:
    text = b"INSERT INTO t FORMAT RowBinary\n\xff\xfe\x00\x80"

    insert = split_insert(text)

    assert insert is not None
    assert text[insert.data_offset :] == b"\xff\xfe\x00\x80"


def test_quoting_escapes_quotes_and_backslashes() -> None:
    assert quote_string("it's a \\ path") == "'it\\'s a \\\\ path'"
    assert quote_identifier("we`ird\\db") == "`we\\`ird\\\\db`"


def test_setting_changes_are_the_difference_from_what_is_applied() -> None:
    baseline = {"storage_file_read_method": "mmap"}
    applied = {"max_threads": "1", "storage_file_read_method": "pread", "a": "x"}
    wanted = {"max_threads": "1", "max_execution_time": "it's"}

    parts = setting_changes(applied, wanted, baseline)

    assert parts == [
        "a = DEFAULT",
        "storage_file_read_method = 'mmap'",
        "max_execution_time = 'it\\'s'",
    ]
    assert setting_changes(wanted, wanted, baseline) == []


# ---------------------------------------------------------------- errors, headers


def test_chdb_error_message_gives_code_name_and_text() -> None:
    message = (
        "Code: 60. DB::Exception: Unknown table expression identifier 'nope' in "
        "scope SELECT * FROM nope. (UNKNOWN_TABLE)"
    )

    error = parse_chdb_error(message)

    assert (error.code, error.name) == (60, "UNKNOWN_TABLE")
    assert error.message.endswith("SELECT * FROM nope.")


def test_nested_chdb_error_keeps_the_outer_code_and_last_name() -> None:
    message = (
        "Code: 107. DB::Exception: Code: 107. DB::Exception: File /x doesn't "
        "exist. (FILE_DOESNT_EXIST) (version 25.8.2.1). (FILE_DOESNT_EXIST)"
    )

    error = parse_chdb_error(message)

    assert (error.code, error.name) == (107, "FILE_DOESNT_EXIST")


def test_a_code_after_a_prefix_is_still_found() -> None:
    message = (
        "bgClickHouseLocal Code: 36. DB::Exception: Error running "
        "bgClickHouseLocal: . (BAD_ARGUMENTS)"
    )

    error = parse_chdb_error(message)

    assert (error.code, error.name) == (36, "BAD_ARGUMENTS")


def test_a_chdb_message_without_a_code_is_a_std_exception() -> None:
    error = parse_chdb_error("something broke")

    assert (error.code, error.message) == (STD_EXCEPTION, "something broke")


@pytest.mark.parametrize(
    ("code", "status"),
    [(60, 404), (81, 404), (115, 404), (62, 400), (27, 400), (159, 408),
     (48, 501), (516, 403), (76, 503), (164, 500), (1001, 500)],
)  # fmt: skip
def test_http_status_matches_clickhouse(code: int, status: int) -> None:
    assert http_status_for(code) == status


def test_error_body_is_what_clickhouse_connect_turns_into_a_coded_error() -> None:
    error = QueryError(
        60, "Unknown table expression identifier 'nope'.", "UNKNOWN_TABLE"
    )
    body = error_body(error, "25.8.2.1").decode()

    raised = build_http_error(404, "60", body, True, "http://x", False)

    assert body.startswith("Code: 60. DB::Exception: Unknown table")
    assert body.endswith("(UNKNOWN_TABLE) (version 25.8.2.1 (chDB))\n")
    assert raised.code == 60
    assert raised.name == "UNKNOWN_TABLE"


def test_summary_header_counts_inserted_rows_as_written() -> None:
    result = ChdbResult(b"", result_rows=300, result_bytes=4800, elapsed_s=0.25)

    insert = summary_from_headers(
        {"X-ClickHouse-Summary": summary_header(result, True)}
    )
    select = json.loads(summary_header(result, False))

    assert insert["written_rows"] == "300"
    assert insert["result_rows"] == "0"
    assert insert["elapsed_ns"] == "250000000"
    assert select["written_rows"] == "0"
    assert select["result_rows"] == "300"


@pytest.mark.parametrize(
    ("output_format", "content_type"),
    [
        ("TabSeparated", "text/tab-separated-values; charset=UTF-8"),
        ("TSVWithNames", "text/tab-separated-values; charset=UTF-8"),
        ("CSVWithNames", "text/csv; charset=UTF-8; header=present"),
        ("CSV", "text/csv; charset=UTF-8; header=absent"),
        ("JSONEachRow", "application/json; charset=UTF-8"),
        ("Native", "application/octet-stream"),
        ("ArrowStream", "application/octet-stream"),
        ("Pretty", "text/plain; charset=UTF-8"),
    ],
)
def test_content_type_per_output_format(output_format: str, content_type: str) -> None:
    assert content_type_for(output_format) == content_type
