"""Run the benchmarks, keep their results under docs/bench-results/ and write docs/benchmarks.md from them.

    python benchmarks/run_all.py [--quick]               # `make bench`: every benchmark (long: see the durations)
    python benchmarks/run_all.py --only bench_events     # one benchmark; the others' stored results are kept
    python benchmarks/run_all.py --render                # re-render docs/benchmarks.md from stored results only
    python benchmarks/run_all.py --only bench_scale --args='--sizes 10000 100000 --max-run-s 3000'
                                                         # one benchmark with its own arguments

Each bench script runs in its own process (PYTHONPATH=src), writes benchmarks/.work/<name>.json, and defines
`TITLE` and `section(result) -> list[str]`; this script stores each result with the date, machine and load of its
run and formats them. Every ratio is against a baseline measured in the same run. Misses are reported.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, WORK, load_average, machine  # noqa: E402

# Order of the sections in docs/benchmarks.md.
BENCHES = ("bench_preprocess", "bench_inspect", "bench_fetch", "bench_events", "bench_events_kafka",
           "bench_events_incremental", "bench_embed",
           "bench_model_steps", "bench_mining", "bench_dedup", "bench_quality", "bench_queries", "bench_training", "bench_experiment",
           "bench_scale")
DOC = ROOT / "docs" / "benchmarks.md"
STORE = ROOT / "docs" / "bench-results"


def run(name: str, quick: bool, extra: list[str] | None = None) -> tuple[dict | None, float, str]:
    """Run one bench script in its own process; return its result, wall seconds and an error text."""
    result_file = WORK / f"{name}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *(["--quick"] if quick else []),
               *(extra or [])]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    sys.stdout.write(completed.stdout)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-3000:])
        return None, elapsed, f"exit code {completed.returncode}"
    if not result_file.exists():
        return None, elapsed, f"{result_file.name} was not written"
    return json.loads(result_file.read_text()), elapsed, ""


def store(name: str, quick: bool, extra: list[str] | None = None) -> None:
    """Run `name` and keep its result with the circumstances of the run; a failed run keeps the older result."""
    print(f"\n===== {name} =====", flush=True)
    info, load_start, started = machine(), load_average(), time.strftime("%Y-%m-%d %H:%M")
    result, elapsed, error = run(name, quick, extra)
    if error:
        print(f"{name} FAILED: {error}; its stored result (if any) is kept", file=sys.stderr)
        return
    STORE.mkdir(parents=True, exist_ok=True)
    meta = {"date": started, "seconds": round(elapsed), "quick": quick, "machine": info,
            "load_start": load_start, "load_end": load_average()}
    (STORE / f"{name}.json").write_text(json.dumps({"meta": meta, "result": result}, indent=1) + "\n")


def render() -> None:
    """Write docs/benchmarks.md from every stored result, in BENCHES order."""
    lines = ["# Benchmarks", "",
             "Written by `python benchmarks/run_all.py` (`make bench`; `--only NAME` reruns one benchmark, `--render` "
             "only re-renders). Do not edit by hand; rerun. Each section names the date, machine and load of its own "
             "run. This machine is shared: absolute numbers move with other jobs; the baselines run in the same run "
             "as visprep, so ratios are steadier than rates."]
    for name in BENCHES:
        module = importlib.import_module(name)
        path = STORE / f"{name}.json"
        lines += ["", f"## {getattr(module, 'TITLE', name)}", ""]
        if not path.exists():
            lines.append(f"Not run yet: `python benchmarks/run_all.py --only {name}`.")
            continue
        stored = json.loads(path.read_text())
        meta, info = stored["meta"], stored["meta"]["machine"]
        lines += [f"Run {meta['date']} UTC{' (--quick)' if meta['quick'] else ''}, {meta['seconds']} s; "
                  f"nproc = {info['nproc']}, CPU \"{info['cpu']}\", {info['memory_gib']} GiB RAM, Python "
                  f"{info['python']}; load average (1, 5, 15 min) {meta['load_start']} → {meta['load_end']}.", ""]
        formatter = getattr(module, "section", None)
        lines += formatter(stored["result"]) if formatter else ["```", json.dumps(stored["result"], indent=1), "```"]
    DOC.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {DOC.relative_to(ROOT)}")


def main() -> None:
    """Run the chosen benchmarks, then re-render the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHES, metavar="NAME", help=f"one of {', '.join(BENCHES)}")
    parser.add_argument("--render", action="store_true", help="only re-render docs/benchmarks.md")
    parser.add_argument("--args", dest="bench_args", default="",
                        help="arguments for the one benchmark --only names, e.g. --args='--sizes 10000 100000'")
    args = parser.parse_args()
    extra = args.bench_args.split()
    if extra and len(args.only or ()) != 1:
        parser.error("--args needs exactly one benchmark in --only")
    sys.path.insert(0, str(ROOT / "src"))
    if not args.render:
        for name in args.only or BENCHES:
            store(name, args.quick, extra)
    render()


if __name__ == "__main__":
    main()
