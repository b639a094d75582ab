"""Embedders (a named registry), the feature store, and the incremental embed stage."""
