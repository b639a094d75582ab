"""Validate and normalise event records in DuckDB: one vectorised pass per chunk, refused records with reasons.

Reasons (the `reason` column of the quarantine table): `malformed_json`, `missing_field`, `unknown_type`,
`bad_timestamp`, `bad_position`, `unknown_product`. A record is refused under its first problem, in that order.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from visprep.events.duck import to_arrow
from visprep.events.readers import EVENT_FIELDS
from visprep.schema import EVENTS

EVENT_TYPES = ("search", "impression", "click", "add_to_cart", "purchase", "view")
#: Types that name a product; types that belong to a query's result list.
PRODUCT_TYPES = ("impression", "click", "add_to_cart", "purchase", "view")
QUERY_TYPES = ("search", "impression")
# Timestamps outside this range are refused: an epoch in seconds read as milliseconds lands in 1970.
_TS_MIN, _TS_MAX = "2000-01-01", "2100-01-01"

_JSON_SCHEMA = json.dumps({f: "VARCHAR" for f in EVENT_FIELDS})


def fields_from_json_lines(con: Any, lines: pa.Table) -> pa.Table:
    """Parse a `(line, text)` table into the text fields of an event, plus `parse_error` and `raw`."""
    con.register("_lines", lines)
    try:
        cols = ", ".join(f"r.{f} AS {f}" for f in EVENT_FIELDS)
        return to_arrow(con.sql(f"""
            WITH p AS (
                SELECT line, text,
                       CASE WHEN json_valid(text) THEN json_type(text) = 'OBJECT' ELSE false END AS ok
                FROM _lines),
            q AS (
                SELECT line, text, ok,
                       CASE WHEN ok THEN json_transform(text, '{_JSON_SCHEMA}') END AS r
                FROM p)
            SELECT line, CASE WHEN ok THEN NULL ELSE 'malformed_json' END AS parse_error, text AS raw, {cols}
            FROM q"""))
    finally:
        con.unregister("_lines")


def fields_from_columns(con: Any, rows: pa.Table) -> pa.Table:
    """Turn typed Parquet columns into the same text fields (`parse_error` and `raw` null)."""
    con.register("_rows", rows)
    try:
        casts = ", ".join(f"CAST({f} AS VARCHAR) AS {f}" for f in EVENT_FIELDS)
        # `raw` is only shown for malformed JSON, which a typed row cannot be: skip rendering it.
        return to_arrow(con.sql(f"SELECT line, CAST(NULL AS VARCHAR) AS parse_error, CAST(NULL AS VARCHAR) AS raw,"
                                f" {casts} FROM _rows"))
    finally:
        con.unregister("_rows")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def validate_fields(con: Any, fields: pa.Table, *, source: str,
                    known_products: pa.Table | None = None) -> tuple[pa.Table, pa.Table]:
    """Split parsed records into valid events (the `events` schema) and refused ones.

    Args:
        con: a DuckDB connection (UTC).
        fields: the output of `fields_from_json_lines` / `fields_from_columns`.
        source: the file path or `kafka://topic/partition` the records came from.
        known_products: a one-column (`product_id`) table; when given, events naming another product are refused.

    Returns:
        `(events, refused)`: `refused` has columns line, record_id, field, value, reason, detail.
    """
    con.register("_f", fields)
    product_check = "false"
    if known_products is not None:
        con.register("_known", known_products)
        product_check = "(product_id IS NOT NULL AND product_id NOT IN (SELECT product_id FROM _known))"
    try:
        rel = con.sql(f"""
            WITH c AS (
                SELECT line, parse_error, raw,
                       nullif(trim(event_id), '') AS event_id, nullif(trim(ts), '') AS ts_s,
                       nullif(trim(user_id), '') AS user_id, nullif(trim(session_id), '') AS session_id,
                       lower(nullif(trim(type), '')) AS type, nullif(trim(query_id), '') AS query_id,
                       nullif(trim(query_image_id), '') AS query_image_id,
                       nullif(trim(product_id), '') AS product_id, nullif(trim(position), '') AS pos_s
                FROM _f),
            t AS (
                SELECT *,
                       CASE WHEN TRY_CAST(ts_s AS DOUBLE) IS NOT NULL
                            THEN CASE WHEN abs(TRY_CAST(ts_s AS DOUBLE)) < 1e14
                                      THEN to_timestamp(TRY_CAST(ts_s AS DOUBLE) / 1000.0) END
                            ELSE TRY_CAST(ts_s AS TIMESTAMPTZ) END AS ts_p,
                       TRY_CAST(pos_s AS DOUBLE) AS pos_d
                FROM c),
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
                FROM t)
            SELECT * FROM v""")
        con.register("_v", to_arrow(rel))
        events = to_arrow(con.sql(f"""
            SELECT event_id, ts_p AS ts, CAST(ts_p AS DATE) AS day, user_id, session_id, type, query_id,
                   query_image_id, product_id, CAST(pos_d AS INTEGER) AS position,
                   {_quote(source)} AS source, line
            FROM _v WHERE problem IS NULL"""))
        refused = to_arrow(con.sql("""
            SELECT line, event_id AS record_id, split_part(problem, '|', 1) AS reason,
                   nullif(split_part(problem, '|', 2), '') AS field,
                   CASE split_part(problem, '|', 2)
                     WHEN '' THEN left(raw, 200) WHEN 'event_id' THEN NULL WHEN 'type' THEN type
                     WHEN 'ts' THEN ts_s WHEN 'position' THEN pos_s WHEN 'product_id' THEN product_id
                     ELSE NULL END AS value
            FROM _v WHERE problem IS NOT NULL"""))
        con.unregister("_v")
    finally:
        con.unregister("_f")
        if known_products is not None:
            con.unregister("_known")
    return _conform_events(events), refused


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _conform_events(t: pa.Table) -> pa.Table:
    cols = [t.column(f.name).cast(f.type) for f in EVENTS]
    return pa.Table.from_arrays(cols, schema=EVENTS)


_DETAIL = {
    "malformed_json": "the line is not a JSON object",
    "missing_field": "required field {field!r} is missing or empty",
    "unknown_type": "type {value!r} is not one of " + ", ".join(EVENT_TYPES),
    "bad_timestamp": "ts {value!r} is neither ISO-8601 nor epoch milliseconds in 2000..2100",
    "bad_position": "position {value!r} is not an integer rank >= 1",
    "unknown_product": "product {value!r} is not in the products table",
}


def detail(reason: str, field: str | None, value: str | None, source: str, line: int) -> str:
    """The human-readable explanation of a refused record."""
    return f"{source}:{line}: " + _DETAIL[reason].format(field=field, value=value)
