"""Execution backends for batch functions: a local process pool (and Ray, for catalogs that outgrow a machine)."""
