"""visprep: data preparation for e-commerce visual-search embedding models."""

__version__ = "0.1.0"
