"""Deterministic train/eval split by product group, so no group crosses splits."""
