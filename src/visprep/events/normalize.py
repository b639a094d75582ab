"""Validate and normalise event records in DuckDB: one vectorised SQL pass into the batch's staging table.

Records arrive as JSON lines (Python cuts the bytes into `(line, text)` Arrow chunks; DuckDB parses them) or as
typed Parquet columns (DuckDB reads the file itself, typed columns are used as they are: no text round trip). Both
land in the temp table `staged` with the same normalised columns plus `problem` (`reason|field`, NULL when valid).

Reasons (the `reason` column of the quarantine table): `malformed_json`, `missing_field`, `unknown_type`,
`bad_timestamp`, `bad_position`, `unknown_product`. A record is refused under its first problem, in that order.
(`conflicting_duplicate` is decided later, by the batch writer, against the other versions of an event id.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visprep.events.checkpoint import content_hash_sql
from visprep.events.duck import scalar, sql_str
from visprep.events.readers import EVENT_FIELDS

EVENT_TYPES = ("search", "impression", "click", "add_to_cart", "purchase", "view")
#: Types that name a product; types that belong to a query's result list.
PRODUCT_TYPES = ("impression", "click", "add_to_cart", "purchase", "view")
QUERY_TYPES = ("search", "impression")
#: The fields that make up an event's content: two records with one event id and different content conflict.
CONTENT_FIELDS = ("ts", "user_id", "session_id", "type", "query_id", "query_image_id", "product_id", "position")
# Timestamps outside this range are refused: an epoch in seconds read as milliseconds lands in 1970.
_TS_MIN, _TS_MAX = "2000-01-01", "2100-01-01"

_JSON_SCHEMA = json.dumps({f: "VARCHAR" for f in EVENT_FIELDS})

STAGED_DDL = """
CREATE OR REPLACE TEMP TABLE staged (
    seq BIGINT, source VARCHAR, line BIGINT, event_id VARCHAR, ts TIMESTAMPTZ, user_id VARCHAR,
    session_id VARCHAR, type VARCHAR, query_id VARCHAR, query_image_id VARCHAR, product_id VARCHAR,
    position INTEGER, problem VARCHAR, value VARCHAR, c UBIGINT)"""


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


def _validated_select(src: str, kinds: dict[str, str], *, source: str, product_check: str) -> str:
    """SELECT of `staged`'s columns from relation `src` (columns line, seq, parse_error, raw and EVENT_FIELDS)."""
    ts_kind, pos_kind = kinds["ts"], kinds["position"]
    if ts_kind == "timestamp":
        ts_expr = "CAST(ts AS TIMESTAMPTZ)"
    elif ts_kind in ("int", "float"):
        ts_expr = "CASE WHEN abs(ts) < 1e14 THEN to_timestamp(ts / 1000.0) END"
    else:  # text: epoch milliseconds, else ISO-8601
        ts_expr = ("CASE WHEN TRY_CAST(ts_s AS DOUBLE) IS NOT NULL "
                   "THEN CASE WHEN abs(TRY_CAST(ts_s AS DOUBLE)) < 1e14 "
                   "THEN to_timestamp(TRY_CAST(ts_s AS DOUBLE) / 1000.0) END "
                   "ELSE TRY_CAST(ts_s AS TIMESTAMPTZ) END")
    pos_expr = "CAST(position AS DOUBLE)" if pos_kind in ("int", "float") else "TRY_CAST(pos_s AS DOUBLE)"
    texts = ", ".join(f"{_text(f, kinds[f])} AS {f}" for f in EVENT_FIELDS
                      if f not in ("ts", "position", "type"))
    return f"""
        WITH c AS (
            SELECT seq, line, parse_error, raw, {texts},
                   lower({_text('type', kinds['type'])}) AS type,
                   {_text('ts', ts_kind)} AS ts_s, {_text('position', pos_kind)} AS pos_s,
                   {ts_expr} AS ts_p, {pos_expr} AS pos_d
            FROM {src}),
        v AS (
            SELECT *,
                   CASE
                     WHEN parse_error IS NOT NULL THEN 'malformed_json|'
                     WHEN event_id IS NULL THEN 'missing_field|event_id'
                     WHEN type IS NULL THEN 'missing_field|type'
                     WHEN ts_s IS NULL THEN 'missing_field|ts'
                     WHEN user_id IS NULL THEN 'missing_field|user_id'
                     WHEN session_id IS NULL THEN 'missing_field|session_id'
                     WHEN type NOT IN {_in(EVENT_TYPES)} THEN 'unknown_type|type'
                     WHEN ts_p IS NULL OR ts_p < TIMESTAMPTZ '{_TS_MIN}' OR ts_p >= TIMESTAMPTZ '{_TS_MAX}'
                       THEN 'bad_timestamp|ts'
                     WHEN type IN {_in(PRODUCT_TYPES)} AND product_id IS NULL THEN 'missing_field|product_id'
                     WHEN type IN {_in(QUERY_TYPES)} AND query_id IS NULL THEN 'missing_field|query_id'
                     WHEN type = 'impression' AND pos_s IS NULL THEN 'missing_field|position'
                     WHEN pos_s IS NOT NULL AND (pos_d IS NULL OR pos_d < 1 OR pos_d > 2147483647
                                                 OR pos_d <> floor(pos_d)) THEN 'bad_position|position'
                     WHEN {product_check} THEN 'unknown_product|product_id'
                   END AS problem
            FROM c)
        SELECT *, CASE WHEN problem IS NULL THEN {content_hash_sql()} END AS c FROM (
        SELECT seq, {sql_str(source)} AS source, line, event_id,
               CASE WHEN problem IS NULL THEN ts_p END AS ts, user_id, session_id, type, query_id, query_image_id,
               product_id, CASE WHEN problem IS NULL THEN CAST(pos_d AS INTEGER) END AS position, problem,
               CASE split_part(problem, '|', 2)
                 WHEN '' THEN left(raw, 200) WHEN 'type' THEN type WHEN 'ts' THEN ts_s
                 WHEN 'position' THEN pos_s WHEN 'product_id' THEN product_id END AS value
        FROM v)"""


def _product_check(has_known: bool) -> str:
    # `_known` is registered by the batch writer when unknown products are refused.
    if not has_known:
        return "false"
    return "(product_id IS NOT NULL AND product_id NOT IN (SELECT product_id FROM _known))"


def stage_json_lines(con: Any, lines: pa.Table, *, source: str, has_known: bool = False) -> None:
    """Parse a `(line, text[, seq])` chunk of JSON lines in DuckDB, validate it and append it to `staged`."""
    if "seq" not in lines.column_names:
        lines = lines.append_column("seq", lines.column("line"))
    con.register("_lines", lines)
    try:
        parsed = f"""(
            SELECT seq, line, CASE WHEN ok THEN NULL ELSE 'malformed_json' END AS parse_error, text AS raw,
                   {', '.join(f'r.{f} AS {f}' for f in EVENT_FIELDS)}
            FROM (SELECT seq, line, text, ok,
                         CASE WHEN ok THEN json_transform(text, '{_JSON_SCHEMA}') END AS r
                  FROM (SELECT seq, line, text,
                               CASE WHEN json_valid(text) THEN json_type(text) = 'OBJECT' ELSE false END AS ok
                        FROM _lines)))"""
        kinds = {f: "text" for f in EVENT_FIELDS}
        con.execute("INSERT INTO staged " + _validated_select(parsed, kinds, source=source,
                                                              product_check=_product_check(has_known)))
    finally:
        con.unregister("_lines")


def stage_parquet(con: Any, path: Path, *, has_known: bool = False, group: tuple[int, int] = (0, 1)) -> int:
    """Read, validate and append a Parquet event file (or one id-hash group of it) to `staged` inside DuckDB;
    return the rows added.

    Typed columns (integer epoch-ms or timestamp `ts`, integer `position`) are used directly; missing columns are
    nulls; `line` is the 1-based row number. `group = (g, of)` keeps the records whose normalised event id hashes
    to g modulo `of`: every version of an id lands in the same group, so groups deduplicate independently.
    """
    schema = pq.read_schema(path)
    kinds, cols = {}, []
    for f in EVENT_FIELDS:
        t = schema.field(f).type if f in schema.names else None
        kinds[f] = _kind(t)
        cols.append(f'"{f}" AS {f}' if t is not None else f"NULL::VARCHAR AS {f}")
    src = (f"(SELECT file_row_number + 1 AS seq, file_row_number + 1 AS line, NULL::VARCHAR AS parse_error, "
           f"NULL::VARCHAR AS raw, {', '.join(cols)} "
           f"FROM read_parquet({sql_str(str(path))}, file_row_number = true)")
    g, of = group
    if of > 1 and "event_id" in schema.names:
        src += f" WHERE hash({_text('event_id', kinds['event_id'])}) % {int(of)} = {int(g)}"
    elif of > 1:  # no ids at all: every record is refused, once, in group 0
        src += f" WHERE {int(g)} = 0"
    src += ")"
    before = scalar(con, "SELECT count(*) FROM staged")
    con.execute("INSERT INTO staged " + _validated_select(src, kinds, source=str(path),
                                                          product_check=_product_check(has_known)))
    return int(scalar(con, "SELECT count(*) FROM staged") - before)


_DETAIL = {
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
    return f"{source}:{line}: " + _DETAIL[reason].format(field=field, value=value)
