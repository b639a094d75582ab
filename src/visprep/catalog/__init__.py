"""Catalog ingestion: read CSV / JSONL / Parquet product files, validate rows, upsert products."""
