"""Offline retrieval evaluation: exact search over catalog embeddings, graded metrics, CIs and paired tests."""
