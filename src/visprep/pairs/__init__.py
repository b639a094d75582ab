"""Catalog-derived training pairs: same-product image pairs, (image, title) pairs, easy negatives."""
