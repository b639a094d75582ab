"""Negative mining: one module per miner (random, brand, skip-above, ANN hard negatives), the positive sets they all
exclude, the false-negative guard, and the stage that writes them to the `negatives` table."""
