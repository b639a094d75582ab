"""Validate and normalise event records in DuckDB: one vectorised SQL pass into the batch's staging table.

Records arrive as JSON lines (Python cuts the bytes into `(line, text)` Arrow chunks; DuckDB parses them) or as
typed Parquet columns (DuckDB reads the file itself, typed columns are used as they are: no text round trip). Both
land in the temp table `staged` with the same normalised columns plus `problem` (`reason|field`, NULL when valid).

Reasons (the `reason` column of the quarantine table): `invalid_utf8` (JSON lines only: the field holding the
undecodable bytes, shown escaped; never stored with U+FFFD in their place), `malformed_json`, `missing_field`,
`unknown_type`, `bad_timestamp`, `bad_position`, `unknown_product`. A record is refused under its first problem,
in that order.
(`conflicting_duplicate` is decided later, by the batch writer, against the other versions of an event id.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visprep.events.checkpoint import content_hash_sql, day_number_sql, user_bucket_sql
from visprep.events.duck import sql_str
from visprep.events.readers import EVENT_FIELDS, UTF8_COLUMNS

EVENT_TYPES = ("search", "impression", "click", "add_to_cart", "purchase", "view")
#: Types that name a product; types that belong to a query's result list.
PRODUCT_TYPES = ("impression", "click", "add_to_cart", "purchase", "view")
QUERY_TYPES = ("search", "impression")
#: The fields that make up an event's content: two records with one event id and different content conflict.
CONTENT_FIELDS = ("ts", "user_id", "session_id", "type", "query_id", "query_image_id", "product_id", "position")
# Timestamps outside this range are refused: an epoch in seconds read as milliseconds lands in 1970.
_TS_MIN, _TS_MAX = "2000-01-01", "2100-01-01"

_PARSE_BATCH_ROWS = 16_384
_JSON_SCHEMA = json.dumps({f: "VARCHAR" for f in EVENT_FIELDS})

#: The columns of the temp table `staged`, in order.
STAGED_COLUMNS = ("seq", "source", "line", "event_id", "ts", "user_id", "session_id", "type", "query_id",
                  "query_image_id", "product_id", "position", "problem", "value", "c")

STAGED_DDL = """
CREATE OR REPLACE TEMP TABLE staged (
    seq BIGINT, source VARCHAR, line BIGINT, event_id VARCHAR, ts TIMESTAMPTZ, user_id VARCHAR,
    session_id VARCHAR, type VARCHAR, query_id VARCHAR, query_image_id VARCHAR, product_id VARCHAR,
    position INTEGER, problem VARCHAR, value VARCHAR, c UBIGINT)"""


#: The column kinds `_parts` reads ts and position in; any other type is read as text.
_TYPED_KINDS = {"ts": ("text", "timestamp", "int", "float"), "position": ("text", "int", "float")}


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _kind(t: pa.DataType | None) -> str:
    """How a source column is read: text (parsed), int, float, or timestamp (used as is)."""
    if t is None or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return "text"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "timestamp"
    return "other"


def _text(col: str, kind: str) -> str:
    if kind != "text":
        col = f"CAST({col} AS VARCHAR)"
    # trim() copies every string; only the rare padded value needs it (trim removes spaces, as checked here).
    return f"CASE WHEN starts_with({col}, ' ') OR ends_with({col}, ' ') THEN nullif(trim({col}), '') " \
           f"ELSE nullif({col}, '') END"


def _parts(kinds: dict[str, str], *, product_check: str) -> dict[str, str]:
    """SQL pieces shared by the staging and streaming selects: the normalised columns of a source relation, the
    first problem of a record (`reason|field`) and whether it has none (`ok`)."""
    ts_kind, pos_kind = kinds["ts"], kinds["position"]
    if ts_kind == "timestamp":
        ts_expr = "CAST(ts AS TIMESTAMPTZ)"
    elif ts_kind in ("int", "float"):
        # As a double: abs() of the smallest BIGINT overflows, where the range check must refuse it.
        ts_expr = "CASE WHEN abs(CAST(ts AS DOUBLE)) < 1e14 THEN to_timestamp(ts / 1000.0) END"
    else:  # text: epoch milliseconds, else ISO-8601
        ts_expr = ("CASE WHEN TRY_CAST(ts_s AS DOUBLE) IS NOT NULL "
                   "THEN CASE WHEN abs(TRY_CAST(ts_s AS DOUBLE)) < 1e14 "
                   "THEN to_timestamp(TRY_CAST(ts_s AS DOUBLE) / 1000.0) END "
                   "ELSE TRY_CAST(ts_s AS TIMESTAMPTZ) END")
    pos_expr = "CAST(position AS DOUBLE)" if pos_kind in ("int", "float") else "TRY_CAST(pos_s AS DOUBLE)"
    texts = ", ".join(f"{_text(f, kinds[f])} AS {f}" for f in EVENT_FIELDS
                      if f not in ("ts", "position", "type"))
    # A typed ts / position is only turned into text for the rare refused record that shows it.
    ts_raw = "ts" if ts_kind != "text" else "ts_s"
    pos_raw = "position" if pos_kind != "text" else "pos_s"
    columns = (f"{texts}, lower({_text('type', kinds['type'])}) AS type, "
               + (f"{_text('ts', ts_kind)} AS ts_s, " if ts_kind == "text" else "ts AS ts_raw, ")
               + (f"{_text('position', pos_kind)} AS pos_s, " if pos_kind == "text" else "position AS pos_raw, ")
               + f"{ts_expr} AS ts_p, {pos_expr} AS pos_d")
    ts_s = "ts_s" if ts_kind == "text" else "CAST(ts_raw AS VARCHAR)"
    pos_s = "pos_s" if pos_kind == "text" else "CAST(pos_raw AS VARCHAR)"
    ts_null = "ts_s IS NULL" if ts_kind == "text" else "ts_raw IS NULL"
    pos_null = "pos_s IS NULL" if pos_kind == "text" else "pos_raw IS NULL"
    del ts_raw, pos_raw
    bad_pos = "(pos_d IS NULL OR pos_d < 1 OR pos_d > 2147483647 OR pos_d <> floor(pos_d))"
    # parse_error is already `reason|field` (malformed_json, invalid_utf8) when set.
    problem = f"""CASE
                     WHEN parse_error IS NOT NULL THEN parse_error
                     WHEN event_id IS NULL THEN 'missing_field|event_id'
                     WHEN type IS NULL THEN 'missing_field|type'
                     WHEN {ts_null} THEN 'missing_field|ts'
                     WHEN user_id IS NULL THEN 'missing_field|user_id'
                     WHEN session_id IS NULL THEN 'missing_field|session_id'
                     WHEN type NOT IN {_in(EVENT_TYPES)} THEN 'unknown_type|type'
                     WHEN ts_p IS NULL OR ts_p < TIMESTAMPTZ '{_TS_MIN}' OR ts_p >= TIMESTAMPTZ '{_TS_MAX}'
                       THEN 'bad_timestamp|ts'
                     WHEN type IN {_in(PRODUCT_TYPES)} AND product_id IS NULL THEN 'missing_field|product_id'
                     WHEN type IN {_in(QUERY_TYPES)} AND query_id IS NULL THEN 'missing_field|query_id'
                     WHEN type = 'impression' AND {pos_null} THEN 'missing_field|position'
                     WHEN NOT {pos_null} AND {bad_pos} THEN 'bad_position|position'
                     WHEN {product_check} THEN 'unknown_product|product_id'
                   END"""
    # The same rules as one conjunction: cheap to evaluate on every record (the CASE above runs only where it
    # is false). Kept in step with `problem` by tests that compare the two on every kind of bad record.
    ok = f"""coalesce(parse_error IS NULL AND event_id IS NOT NULL AND type IS NOT NULL AND NOT {ts_null}
                 AND user_id IS NOT NULL AND session_id IS NOT NULL AND type IN {_in(EVENT_TYPES)}
                 AND ts_p IS NOT NULL AND ts_p >= TIMESTAMPTZ '{_TS_MIN}' AND ts_p < TIMESTAMPTZ '{_TS_MAX}'
                 AND (type NOT IN {_in(PRODUCT_TYPES)} OR product_id IS NOT NULL)
                 AND (type NOT IN {_in(QUERY_TYPES)} OR query_id IS NOT NULL)
                 AND (type <> 'impression' OR NOT {pos_null})
                 AND ({pos_null} OR NOT {bad_pos})
                 AND NOT {product_check}, false)"""
    value = f"""CASE WHEN starts_with(problem, 'invalid_utf8|') THEN left(raw, 200)
                 ELSE CASE split_part(problem, '|', 2)
                 WHEN '' THEN left(raw, 200) WHEN 'type' THEN type WHEN 'ts' THEN {ts_s}
                 WHEN 'position' THEN {pos_s} WHEN 'product_id' THEN product_id END END"""
    return {"columns": columns, "problem": problem, "ok": ok, "value": value}


def _validated_select(src: str, kinds: dict[str, str], *, source: str, product_check: str) -> str:
    """SELECT of `staged`'s columns from relation `src` (columns line, seq, parse_error, raw and EVENT_FIELDS)."""
    p = _parts(kinds, product_check=product_check)
    return f"""
        WITH c AS (SELECT seq, line, parse_error, raw, {p['columns']} FROM {src}),
        v AS (SELECT *, {p['problem']} AS problem FROM c)
        SELECT *, CASE WHEN problem IS NULL THEN {content_hash_sql()} END AS c FROM (
        SELECT seq, {sql_str(source)} AS source, line, event_id,
               CASE WHEN problem IS NULL THEN ts_p END AS ts, user_id, session_id, type, query_id, query_image_id,
               product_id, CASE WHEN problem IS NULL THEN CAST(pos_d AS INTEGER) END AS position, problem,
               {p['value']} AS value
        FROM v)"""


def stream_select(src: str, kinds: dict[str, str], *, product_check: str, candidates: str, buckets: int) -> str:
    """SELECT that streams a source relation's records for the fast ingest path (`BatchWriter.add_parquet`).

    Columns: staged's (`seq, line, event_id, ts, user_id, ..., problem, value, c`, without `source`) plus `ok`
    (valid), `h` (the id's hash, for the id index), `cand` (`h` is in table `candidates`: the id may repeat, so
    the record takes the exact path), `dayn` (UTC day, days since 1970) and `ub` (user bucket,
    hash(user_id) % buckets). `problem` and `value` are computed only for invalid records.
    """
    p = _parts(kinds, product_check=product_check)
    return f"""
        WITH c AS (SELECT seq, line, parse_error, raw, {p['columns']} FROM {src}),
        v AS (SELECT *, {p['ok']} AS ok FROM c),
        w AS (SELECT seq, line, event_id, CASE WHEN ok THEN ts_p END AS ts, user_id, session_id, type, query_id,
                     query_image_id, product_id, CASE WHEN ok THEN CAST(pos_d AS INTEGER) END AS position,
                     CASE WHEN NOT ok THEN {p['problem']} END AS problem, raw, ts_p, ok, {_raw_columns(kinds)},
                     hash(event_id) AS h
              FROM v)
        SELECT seq, line, event_id, ts, user_id, session_id, type, query_id, query_image_id, product_id, position,
               problem, CASE WHEN NOT ok THEN {p['value']} END AS value,
               CASE WHEN ok THEN {content_hash_sql()} END AS c,
               ok, h, h IN (SELECT x.h FROM {candidates} x) AS cand,
               CASE WHEN ok THEN {day_number_sql('ts')} END AS dayn,
               CASE WHEN ok THEN CAST({user_bucket_sql('user_id', buckets)} AS INTEGER) END AS ub
        FROM w"""


def _raw_columns(kinds: dict[str, str]) -> str:
    """The raw ts / position columns `_parts` keeps for the `value` of a refused record."""
    return ", ".join(["ts_s" if kinds["ts"] == "text" else "ts_raw",
                      "pos_s" if kinds["position"] == "text" else "pos_raw"])


def product_check(has_known: bool) -> str:
    """SQL condition that a record names a product the products table lacks (`_known`, when registered)."""
    # `_known` is registered by the batch writer when unknown products are refused.
    if not has_known:
        return "false"
    return "(product_id IS NOT NULL AND product_id NOT IN (SELECT product_id FROM _known))"


def _register_lines(con: Any, lines: pa.Table) -> None:
    if "seq" not in lines.column_names:
        lines = lines.append_column("seq", lines.column("line"))
    for col in UTF8_COLUMNS:  # chunks not cut by `iter_json_lines` (Kafka polls) carry no UTF-8 flags
        if col not in lines.column_names:
            lines = lines.append_column(col, pa.nulls(lines.num_rows, pa.string()))
    # DuckDB scans an Arrow table one record batch per thread: a 32 MB chunk in one batch parses on one core.
    con.register("_lines", pa.Table.from_batches(lines.to_batches(max_chunksize=_PARSE_BATCH_ROWS), lines.schema))


#: The parsed form of the registered `_lines` chunk: one row per line, every event field as text.
_PARSED_LINES = f"""(
    SELECT seq, line, CASE WHEN utf8_problem IS NOT NULL THEN utf8_problem WHEN ok THEN NULL
                           ELSE 'malformed_json|' END AS parse_error,
           coalesce(utf8_value, text) AS raw,
           {', '.join(f'r.{f} AS {f}' for f in EVENT_FIELDS)}
    FROM (SELECT seq, line, text, ok, utf8_problem, utf8_value,
                 CASE WHEN ok THEN json_transform(text, '{_JSON_SCHEMA}') END AS r
          FROM (SELECT seq, line, text, utf8_problem, utf8_value,
                       CASE WHEN utf8_problem IS NOT NULL THEN false
                            WHEN json_valid(text) THEN json_type(text) = 'OBJECT' ELSE false END AS ok
                FROM _lines)))"""


def stage_json_lines(con: Any, lines: pa.Table, *, source: str, has_known: bool = False) -> None:
    """Parse a `(line, text[, seq])` chunk of JSON lines in DuckDB, validate it and append it to `staged`."""
    _register_lines(con, lines)
    try:
        kinds = {f: "text" for f in EVENT_FIELDS}
        con.execute("INSERT INTO staged " + _validated_select(_PARSED_LINES, kinds, source=source,
                                                              product_check=product_check(has_known)))
    finally:
        con.unregister("_lines")


def parse_json_lines(con: Any, lines: pa.Table) -> pa.Table:
    """Parse a `(line, text[, seq])` chunk of JSON lines in DuckDB into `PARSED_COLUMNS` (fields as text; the raw
    line kept only where it is not a JSON object), for `parquet_source(..., parsed=True)`."""
    _register_lines(con, lines)
    try:
        fields = ", ".join(EVENT_FIELDS)
        return con.sql(f"SELECT seq, line, parse_error, CASE WHEN parse_error IS NOT NULL THEN raw END AS raw, "
                       f"{fields} FROM {_PARSED_LINES}").to_arrow_table()
    finally:
        con.unregister("_lines")


def parquet_source(path: Path, *, parsed: bool = False) -> tuple[str, dict[str, str], str]:
    """The relation over a Parquet event file that the validating selects read, its column kinds, and the SQL of
    its normalised event id.

    Typed columns (integer epoch-ms or timestamp `ts`, integer `position`) are used directly; missing columns are
    nulls; `line` and `seq` are the 1-based row number. `parsed`: the file holds parsed JSON lines
    (`parse_json_lines`), which carry their own seq, line, parse_error and raw columns.
    """
    if parsed:
        kinds = {f: "text" for f in EVENT_FIELDS}
        src = f"(SELECT seq, line, parse_error, raw, {', '.join(EVENT_FIELDS)} FROM read_parquet({sql_str(str(path))}))"
        return src, kinds, _text("event_id", "text")
    schema = pq.read_schema(path)
    kinds, cols = {}, []
    for f in EVENT_FIELDS:
        t = schema.field(f).type if f in schema.names else None
        kinds[f] = _kind(t)
        if t is None:
            cols.append(f"NULL::VARCHAR AS {f}")
        elif kinds[f] == "other" or kinds[f] not in _TYPED_KINDS.get(f, (kinds[f],)):
            # Booleans, binary, nested, or a type this field is not read in (a timestamp position): validated as
            # their text, as a JSON line's field is.
            cols.append(f'CAST("{f}" AS VARCHAR) AS {f}')
            kinds[f] = "text"
        else:
            cols.append(f'"{f}" AS {f}')
    src = (f"(SELECT file_row_number + 1 AS seq, file_row_number + 1 AS line, NULL::VARCHAR AS parse_error, "
           f"NULL::VARCHAR AS raw, {', '.join(cols)} "
           f"FROM read_parquet({sql_str(str(path))}, file_row_number = true))")
    # The id is read straight from the file (not through `src`), so in the file's own type.
    id_sql = _text('"event_id"', _kind(schema.field("event_id").type)) if "event_id" in schema.names \
        else "NULL::VARCHAR"
    return src, kinds, id_sql


_DETAIL = {
    "invalid_utf8": "field {field!r} is not valid UTF-8: {value}",
    "malformed_json": "the line is not a JSON object",
    "missing_field": "required field {field!r} is missing or empty",
    "unknown_type": "type {value!r} is not one of " + ", ".join(EVENT_TYPES),
    "bad_timestamp": "ts {value!r} is neither ISO-8601 nor epoch milliseconds in 2000..2100",
    "bad_position": "position {value!r} is not an integer rank >= 1",
    "unknown_product": "product {value!r} is not in the products table",
    "conflicting_duplicate": "event id seen before with different {field} ({value}); the first version is kept",
}


def detail(reason: str, field: str | None, value: str | None, source: str, line: int) -> str:
    """The human-readable explanation of a refused record."""
    if reason == "invalid_utf8" and field is None:
        return f"{source}:{line}: the line is not valid UTF-8 (nor a JSON object once decoded): {value}"
    return f"{source}:{line}: " + _DETAIL[reason].format(field=field, value=value)
