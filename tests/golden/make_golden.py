"""Regenerate tests/golden/pipeline.json.gz from the code as it is: ONLY for a deliberate behaviour change, named in
the commit message (see tests/test_golden_pipeline.py).

    PYTHONPATH=src python tests/golden/make_golden.py [--out PATH] [--threads N]

`--threads N` sets the embed, mining and events thread counts (with OMP_NUM_THREADS=N in the environment, the
determinism check of the test's docstring); `--out` writes elsewhere, to compare two runs without touching the
golden.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import test_golden_pipeline as golden


def main() -> None:
    """Build the golden workspace in a temporary folder and write its snapshot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=golden.GOLDEN)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    config = golden.CONFIG
    if args.threads:
        t = args.threads
        config = config.replace("[embed]\n", f"[embed]\nthreads = {t}\n") + f"\n[mining]\nthreads = {t}\n" \
            f"\n[events]\nthreads = {t}\n"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "golden"
        ws = golden.build_workspace(root, config)
        tables = golden.snapshot(ws, root)
    golden.write_golden(tables, args.out)
    print(f"{args.out}: {len(tables)} tables, {sum(t['count'] for t in tables.values())} rows, "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
