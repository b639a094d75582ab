"""Scale benchmark (issue 17): catalog -> fetch -> inspect -> dedup -> split -> pairs -> mine -> export on N
synthetic products, each stage's wall time and peak RSS, local engine and (inspect, export) the Ray engine.

Each product has two small JPEGs (112 px, about 3 KB each; `render_images`), served by a loopback HTTP server
with a fixed latency per request. The catalog is built to look like a real one to dedup, where near-duplicate
clusters have a bounded size: a product draws a Fashion-MNIST garment shape from the bundled demo subset (2,600),
a striped print of its own period, angle and contrast, a colour and a smooth random backdrop, and each of its photos
a scale, placement and flip of its own, so pHashes differ between products (the first version tinted and shifted
the 2,600 shapes only: at 1M products 770 products shared each shape, pHash is colour-blind, and dedup's candidate
pairs grew as N^2). Titles are drawn from a vocabulary ("<brand> <adjective> <material> <garment> <colour> size
<size>", 2,000 declared brands), so they are mostly distinct (they were "<top> item <i> colour <i%37>"). Planted
duplicates at known rates (`planted_duplicates`): one product in 100 repeats its predecessor's first photo and
brand (an exact duplicate), one in 100 is its predecessor in another size (the same title but the size, its first
photo a copy of the predecessor's downscaled to 96 px and re-encoded at quality 70). The vectors mine reads are
written into the feature store by a setup phase (clustered by product, no model).

Every stage runs in its own process (`--phase`), so its peak RSS is its own: a sampler thread reads the RSS of
the process and all its descendants (the local engine's pool, Ray's raylet and workers) from /proc every 0.2 s
and keeps the largest single process and the largest tree total; `ru_maxrss` of the process is kept too.

Usage: python benchmarks/bench_scale.py [--quick] [--sizes 3000 10000 30000 100000] [--latency-ms 20]
                                       [--max-run-s 720] [--stages dedup mine ...] [--no-ray] [--keep | --reuse]
--stages runs only the stages up to the last one named (each needs the ones before it); --keep leaves each size's
workspace, catalog and image blob in benchmarks/.work/scale-N, and --reuse runs only the named stages on such a
kept workspace (no images rendered, nothing fetched): a stage measured again after a change, at sizes whose fetch
alone takes minutes. Sizes run smallest first; a size whose predicted wall time (the last size's, scaled linearly) passes --max-run-s
is skipped and reported. The growth table compares the smallest size run with the largest.
Results: benchmarks/.work/bench_scale.json (docs/scaling.md reads them for the 100M sizing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, WORK, fmt_met, load_average, write_result

if TYPE_CHECKING:
    from visprep.workspace import Workspace

TITLE = "Scale: every stage's time and peak RSS against catalog size (issue 17)"
IMAGES_PER_PRODUCT = 2
DIM = 64
MODEL = "bench@1"
STAGES = ("catalog", "fetch", "inspect", "dedup", "split", "pairs", "vectors", "mine", "export")
RAY_STAGES = ("inspect", "export")  # the stages with a per-batch engine path
CONFIG = """[pipeline]
stages = ["fetch", "inspect", "dedup", "split", "pairs", "mine", "export"]
[fetch]
allow_loopback = true
concurrency = 32
[mining]
model = "bench@1"
[engine]
kind = "{engine}"
"""
# Targets of issue 17, per stage: 10x the products within 12x the time, peak RSS within 1.5x, under 4 GiB,
# Ray within 1.3x local.
TIME_GROWTH = 1.2
RSS_GROWTH = 1.5
RSS_CAP_MIB = 4096
RAY_OVERHEAD = 1.3
GARMENT_PX = 112


_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "to", "sa", "ne", "dor", "li", "ba", "qu", "el", "fi", "mar", "zo",
              "ti", "ro", "an", "ex")
BRANDS = [f"{a}{b}{c}".capitalize() for a in _SYLLABLES for b in _SYLLABLES for c in ("", "x", "n", "ia", "o")]
"""2,000 synthetic brand names."""
GARMENTS = {"tops": ["shirt", "blouse", "tee", "tank", "polo", "henley", "sweater", "hoodie"],
            "trousers": ["jeans", "chinos", "joggers", "slacks", "cargos", "leggings", "culottes", "shorts"],
            "dresses": ["dress", "gown", "sundress", "shirtdress", "slipdress", "kaftan", "pinafore", "tunic"],
            "coats": ["coat", "parka", "trench", "blazer", "jacket", "anorak", "overcoat", "gilet"],
            "shoes": ["sneakers", "boots", "loafers", "sandals", "pumps", "mules", "brogues", "espadrilles"],
            "bags": ["tote", "backpack", "clutch", "satchel", "crossbody", "duffel", "hobo", "bucket"]}
ADJECTIVES = ("slim", "relaxed", "classic", "vintage", "cropped", "oversized", "fitted", "lightweight", "quilted",
              "ribbed", "pleated", "tailored", "washed", "essential", "premium", "everyday", "structured", "soft",
              "striped", "printed", "textured", "wrap", "belted", "padded", "stretch", "organic", "recycled",
              "heritage", "urban", "summer", "winter", "travel", "studio", "weekend", "signature", "utility",
              "sporty", "boxy", "flared", "tapered")
MATERIALS = ("cotton", "linen", "wool", "cashmere", "silk", "denim", "leather", "suede", "jersey", "fleece",
             "nylon", "polyester", "viscose", "corduroy", "tweed", "canvas", "satin", "velvet", "knit", "hemp")
COLOURS = ("black", "white", "navy", "grey", "beige", "olive", "khaki", "burgundy", "red", "blue", "green", "pink",
           "brown", "camel", "cream", "charcoal", "teal", "mustard", "lilac", "coral")
SIZES = ("xs", "s", "m", "l", "xl", "xxl")


# ------------------------------------------------------------------------------------------------ images

EXACT_EVERY = 100
"""Product i with i % EXACT_EVERY == EXACT_EVERY - 1 lists its predecessor's first photo (the same file)."""
NEAR_EVERY = 100
"""Product i with i % NEAR_EVERY == NEAR_EVERY // 2 is a near-duplicate of its predecessor: its first photo a
resized, re-encoded copy of the predecessor's, its title the same with another size, same brand."""


def planted_duplicates(n_products: int) -> dict[str, list[tuple[int, int]]]:
    """The (predecessor, product) index pairs `write_catalog` plants, by kind ("exact", "near")."""
    return {"exact": [(i - 1, i) for i in range(1, n_products) if i % EXACT_EVERY == EXACT_EVERY - 1],
            "near": [(i - 1, i) for i in range(1, n_products) if i % NEAR_EVERY == NEAR_EVERY // 2]}


def _copy_source(image: int) -> int | None:
    """The image that image `image` is a resized, re-encoded copy of (a near-duplicate's first photo), or None."""
    product, first = divmod(image, IMAGES_PER_PRODUCT)
    return (product - 1) * IMAGES_PER_PRODUCT if first == 0 and product and product % NEAR_EVERY == NEAR_EVERY // 2 \
        else None


def _render_one(image: int, seed: int, shapes: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Image `image` as a (GARMENT_PX, GARMENT_PX, 3) uint8 BGR array: every draw from its own seeded generator.

    The product (image // IMAGES_PER_PRODUCT) draws its garment shape, print (stripes of its own period, angle and
    contrast), colour and backdrop; each of its photos then draws its own scale, placement and flip (another shot of
    the same article). pHash sees the print, the scale and the placement, so products' hashes differ although
    only a few thousand shapes exist."""
    import cv2

    product, shot = divmod(image, IMAGES_PER_PRODUCT)
    prod = np.random.default_rng((seed, product))
    rng = np.random.default_rng((seed, product, shot))
    gray = shapes[int(prod.integers(len(shapes)))]
    yy, xx = grid
    angle, period = prod.uniform(0, np.pi), prod.uniform(10, 40)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / period) + prod.uniform(0, 2 * np.pi))
    rgb = prod.integers(20, 236, 3).astype(np.float32)
    # A backdrop of its own (a smooth random field: the studio's light and props), which sets pHash bits where
    # the garment is small.
    backdrop = cv2.resize(prod.uniform(120, 250, (4, 4)).astype(np.float32), (GARMENT_PX, GARMENT_PX),
                          interpolation=cv2.INTER_CUBIC)
    contrast = prod.uniform(0.15, 0.45)
    size = max(8, int(GARMENT_PX * rng.uniform(0.55, 1.0)))
    shape = np.zeros((GARMENT_PX, GARMENT_PX), np.float32)
    y0, x0 = (int(v) for v in rng.integers(0, GARMENT_PX - size + 1, 2))
    shape[y0 : y0 + size, x0 : x0 + size] = cv2.resize(gray, (size, size), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(shape * (1.4 / 255.0), 0, 1)
    # Single-channel fields first, the colour once: (garment shading x print) x rgb + backdrop and sensor noise.
    garment = alpha * (0.5 + shape * (1 / 510.0)) * (1.0 + contrast * stripes)
    rest = (1 - alpha) * backdrop + 4 * rng.standard_normal((GARMENT_PX, GARMENT_PX), dtype=np.float32)
    picture = garment[..., None] * rgb + rest[..., None]
    if rng.random() < 0.5:
        picture = picture[:, ::-1]
    return np.clip(picture, 0, 255).astype(np.uint8)


def render_images(n_images: int, path: Path, seed: int = 0) -> None:
    """Write `n_images` JPEGs (`_render_one`; near-duplicates' first photos as `_copy_source` says) into one blob
    file `path` and their end offsets into `path`.npy."""
    import cv2

    from visprep.demo import load_fashion_mnist_subset

    shapes = load_fashion_mnist_subset().images
    grid = np.mgrid[0:GARMENT_PX, 0:GARMENT_PX].astype(np.float32)
    grid_yx = (grid[0], grid[1])
    offsets = np.empty(n_images, np.int64)
    end = 0
    with path.open("wb") as out:
        for i in range(n_images):
            source = _copy_source(i)
            if source is None:
                ok, buf = cv2.imencode(".jpg", _render_one(i, seed, shapes, grid_yx), [cv2.IMWRITE_JPEG_QUALITY, 85])
            else:  # the seller's copy: downscaled to 96 px and saved at a lower quality
                small = cv2.resize(_render_one(source, seed, shapes, grid_yx), (96, 96), interpolation=cv2.INTER_AREA)
                ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
            if not ok:
                raise RuntimeError(f"image {i}: OpenCV failed to encode")
            out.write(buf.tobytes())
            end += len(buf)
            offsets[i] = end
    np.save(path.with_suffix(".npy"), offsets)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # bursts of the fetcher's connections must not be refused
    allow_reuse_address = True


def start_server(blob: Path, latency_s: float) -> tuple[_Server, int]:
    """Serve /img/<i> from the blob after `latency_s`; return the server (in a daemon thread) and its port."""
    data = blob.read_bytes()
    ends = np.load(blob.with_suffix(".npy"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The headers and the body go out as two writes: with Nagle's algorithm the body waits for the client's
        # delayed ACK of the headers (40 ms on Linux), which tripled every request's 20 ms (bench_fetch --window).
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            index = int(self.path.rsplit("/", 1)[1].split(".")[0])
            time.sleep(latency_s)
            start = int(ends[index - 1]) if index else 0
            body = data[start : int(ends[index])]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def write_catalog(path: Path, n_products: int, port: int, seed: int = 0) -> None:
    """A JSON-lines catalog of `n_products`; product i lists images 2i and 2i+1 (`render_images`).

    Titles are drawn per product from a vocabulary: "<brand> <adjective> <material> <garment> <colour> size
    <size>" (2,000 brands x 40 x 20 x 8 garments of its top-level category x 20 colours x 6 sizes), so they are
    mostly distinct, and the brand is declared. The planted duplicates (`planted_duplicates`): one product in 100
    lists its predecessor's first photo and brand (a reseller; its own title), and one in 100 is its predecessor
    in another size (same title but the size, a resized re-encoded copy of its first photo)."""
    tops = list(GARMENTS)
    rng = np.random.default_rng((seed, 1))
    url = f"http://127.0.0.1:{port}/img/{{}}.jpg"
    prev: dict = {}
    with path.open("w") as out:
        for i in range(n_products):
            top = tops[int(rng.integers(len(tops)))]
            words = [BRANDS[int(rng.integers(len(BRANDS)))], ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
                     MATERIALS[int(rng.integers(len(MATERIALS)))], GARMENTS[top][int(rng.integers(8))],
                     COLOURS[int(rng.integers(len(COLOURS)))]]
            size = SIZES[int(rng.integers(len(SIZES)))]
            first = 2 * i
            if i and i % EXACT_EVERY == EXACT_EVERY - 1:  # a reseller: the same photo and brand
                first, top, words[0] = 2 * i - 2, prev["top"], prev["words"][0]
            elif i and i % NEAR_EVERY == NEAR_EVERY // 2:  # the same article in another size
                top, words = prev["top"], prev["words"]
                size = SIZES[(SIZES.index(prev["size"]) + 1) % len(SIZES)]
            garment = words[3]
            row = {"product_id": f"P{i:08d}", "title": f"{' '.join(words)} size {size}",
                   "category": f"{top}/{garment}", "brand": words[0], "price": f"{10 + i % 90}.99",
                   "image_urls": [url.format(first), url.format(2 * i + 1)]}
            out.write(json.dumps(row) + "\n")
            prev = {"top": top, "words": words, "size": size}


# ------------------------------------------------------------------------------------------------ one phase


def _tree_sample(root_pid: int) -> tuple[int, int, dict[tuple[int, int], int]]:
    """(largest single process RSS, summed RSS) in KiB of `root_pid` and all its descendants, from /proc, and each
    of those processes' CPU time so far in clock ticks (user + system), keyed by (pid, start time)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
            cpu[int(entry)] = (int(fields[19]), int(fields[11]) + int(fields[12]))  # starttime, utime + stime
        except (OSError, ValueError, IndexError):
            continue
    todo, seen = [root_pid], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(children.get(pid, []))
    sizes = [rss.get(p, 0) for p in seen]
    ticks = {(p, cpu[p][0]): cpu[p][1] for p in seen if p in cpu}
    return max(sizes), sum(sizes), ticks


def _own_peak_kib() -> int:
    """This process's peak RSS in KiB: VmHWM, the high-water mark of its own memory since its exec. Not
    `ru_maxrss`, which Linux carries over an exec from the forking parent: a phase forked by a bench process
    holding the image blob (585 MiB at 100k products) reported at least that much, whatever it used itself."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def phase(stage: str, ws_root: Path, catalog: Path, engine: str) -> dict:
    """Run one stage in this process (a child of the bench); return its seconds and peak RSS."""
    from visprep import stages
    from visprep.pipeline import run_stage
    from visprep.workspace import Workspace

    peak = {"single": 0, "tree": 0}
    # CPU ticks per descendant at its last sample: the descendants' CPU seconds (the pool's workers, Ray's
    # processes), which a loaded machine does not inflate the way it inflates wall time. A process that ends
    # between two samples loses at most its last 0.2 s.
    ticks: dict[tuple[int, int], int] = {}
    sampler_cpu = [0.0]  # the sampler's own CPU (walking /proc), taken out of the stage's
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            single, tree, seen = _tree_sample(os.getpid())
            peak["single"], peak["tree"] = max(peak["single"], single), max(peak["tree"], tree)
            ticks.update(seen)
            sampler_cpu[0] = time.thread_time()
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ws = Workspace(ws_root)
    extra: dict = {}
    connect_s = 0.0
    if engine == "ray":  # Ray's start is timed apart: a visprep run pays it once, not per stage
        from visprep.engines.ray_engine import connect

        t = time.perf_counter()
        connect(ws.config.engine)
        connect_s = time.perf_counter() - t
    if engine == "ray" and stage == "inspect":  # inspect only reads new images: from scratch, as the local run did
        images = ws.table_path("images")
        shutil.rmtree(images) if images.is_dir() else images.unlink()
    t = time.perf_counter()
    own_cpu0 = time.process_time() - sampler_cpu[0]
    base_ticks = dict(ticks) if ticks else _tree_sample(os.getpid())[2]
    if stage == "catalog":
        with ws.writer("catalog"), ws.acting_as("catalog"):
            stages.get("catalog").run(ws, None, files=[str(catalog)], allow_removals=False)
    elif stage == "vectors":
        extra["vectors"] = write_vectors(ws)
    else:
        outcome = run_stage(ws, stage, force=True, explicit=True)
        if stage == "inspect":
            extra["inspected"] = outcome.inspected
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    own_cpu = time.process_time() - sampler_cpu[0] - own_cpu0
    single, tree, last = _tree_sample(os.getpid())
    ticks.update(last)
    me = [k for k in ticks if k[0] == os.getpid()]
    kids_ticks = sum(v - base_ticks.get(k, 0) for k, v in ticks.items() if k not in me)
    cpu_s = own_cpu + kids_ticks / os.sysconf("SC_CLK_TCK")
    own = _own_peak_kib()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"stage": stage, "engine": engine, "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2),
            "connect_s": round(connect_s, 2),
            "driver_maxrss_mib": round(own / 1024, 1), "child_maxrss_mib": round(kids / 1024, 1),
            "peak_single_mib": round(max(peak["single"], single, own) / 1024, 1),
            "peak_tree_mib": round(max(peak["tree"], tree) / 1024, 1), **extra}


def write_vectors(ws: Workspace) -> int:
    """Write a DIM-d vector per usable image into the feature store, clustered by product (no model): each
    product draws a centre, its images lie near it, so mine's index has the structure a model's embeddings give
    (independent draws per image made every search exact and left the guard nothing to keep)."""
    import pyarrow.compute as pc

    from visprep.embed.registry import l2_normalize
    from visprep.embed.store import FeatureStore
    from visprep.views.features import features_root, store_dir_name

    images = ws.read_table("images")
    ok = images.filter(pc.equal(images.column("status"), "ok")).select(["image_id"])
    owners = ws.sql("SELECT u.image_id, min(pi.product_id) AS product_id FROM pi JOIN u USING (url) "
                    "WHERE u.image_id IS NOT NULL GROUP BY 1",
                    pi=ws.read_table("product_images", ["url", "product_id"]),
                    u=ws.latest_urls().select(["url", "image_id"]))
    table = ok.join(owners, "image_id", join_type="left outer").sort_by("image_id")
    ids = table.column("image_id").to_pylist()
    product = pc.fill_null(table.column("product_id"), "").combine_chunks()
    codes = pc.dictionary_encode(product).indices.to_numpy(zero_copy_only=False)
    root = features_root(ws)
    # The whole store folder, ANN state included: a leftover store would be appended to and mine would rerun
    # incrementally instead of from scratch (the folder is named by store_dir_name, not the model id).
    shutil.rmtree(root / store_dir_name(MODEL), ignore_errors=True)
    store = FeatureStore(root, MODEL, DIM)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(int(codes.max()) + 1 if len(codes) else 0, DIM)).astype(np.float32)
    for start in range(0, len(ids), 50_000):
        chunk = ids[start : start + 50_000]
        near = centres[codes[start : start + 50_000]] + 0.35 * rng.normal(size=(len(chunk), DIM)).astype(np.float32)
        store.append(chunk, l2_normalize(near.astype(np.float32)))
    return len(ids)


# ------------------------------------------------------------------------------------------------ driver


def run_phase(stage: str, ws_root: Path, catalog: Path, engine: str, timeout_s: int) -> dict:
    """Run `phase` in a fresh process; return its JSON result."""
    cmd = [sys.executable, __file__, "--phase", stage, "--ws", str(ws_root), "--catalog", str(catalog),
           "--engine", engine]
    # RAY_ADDRESS=local: Ray's ray.init() without an address joins a cluster some `ray start` on this machine left
    # in /tmp/ray (another user's tests), and visprep's connect() then fails passing num_cpus to it; the Ray
    # rows must measure the local Ray visprep starts.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), RAY_ADDRESS="local")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} ({engine}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = load_average()
    print(f"  {stage:8s} {engine:5s} {result['seconds']:8.2f} s  cpu {result['cpu_s']:8.2f} s  "
          f"driver {result['driver_maxrss_mib']:7.1f} MiB  "
          f"tree {result['peak_tree_mib']:7.1f} MiB  load {result['load']}", flush=True)
    return result


def run_size(n_products: int, latency_s: float, timeout_s: int, stages: tuple[str, ...] = STAGES,
             ray: bool = True, keep: bool = False, reuse: bool = False) -> dict:
    """Build a workspace of `n_products` and run `stages` once (local), then inspect and export on Ray.

    With `reuse`, run only `stages` on the workspace a `keep` run left (its catalog and fetched images).
    """
    base = WORK / f"scale-{n_products}"
    blob = base / "images.bin"
    catalog = base / "catalog.jsonl"
    ws_root = base / "ws"
    server = None
    if reuse:
        if not (ws_root / "tables").is_dir():
            raise SystemExit(f"--reuse: no kept workspace at {ws_root} (run with --keep first)")
        todo = stages
    else:
        shutil.rmtree(base, ignore_errors=True)
        ws_root.mkdir(parents=True)
        t = time.perf_counter()
        render_images(n_products * IMAGES_PER_PRODUCT, blob)
        render_s = time.perf_counter() - t
        server, port = start_server(blob, latency_s)
        write_catalog(catalog, n_products, port)
        print(f"{n_products} products: images rendered in {render_s:.1f}s ({blob.stat().st_size / 2**20:.1f} MiB)",
              flush=True)
        # Every stage reads its predecessors' tables: a fresh workspace runs all of them up to the last one named.
        todo = STAGES[: max(STAGES.index(s) for s in stages) + 1]
    stages_out: dict[str, dict] = {}
    ray_out: dict[str, dict] = {}
    try:
        (ws_root / "visprep.toml").write_text(CONFIG.format(engine="local"))
        for stage in todo:
            root = ws_root
            if reuse and stage == "catalog":  # a first ingest, as in a fresh run, not a rerun finding it unchanged
                root = base / "catalog-ws"
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
            stages_out[stage] = run_phase(stage, root, catalog, "local", timeout_s)
        if ray and any(s in todo for s in RAY_STAGES):
            (ws_root / "visprep.toml").write_text(CONFIG.format(engine="ray"))
            ray_out = {s: run_phase(s, ws_root, catalog, "ray", timeout_s) for s in RAY_STAGES if s in todo}
            (ws_root / "visprep.toml").write_text(CONFIG.format(engine="local"))
    finally:
        if server is not None:
            server.shutdown()
    sizes = {name: sum(f.stat().st_size for f in (ws_root / name).rglob("*") if f.is_file())
             for name in ("images", "shards", "features", "tables") if (ws_root / name).exists()}
    total = sum(f.stat().st_size for f in ws_root.rglob("*") if f.is_file())
    image_bytes = blob.stat().st_size
    if not (keep or reuse):
        shutil.rmtree(base, ignore_errors=True)
    return {"n_products": n_products, "n_images": n_products * IMAGES_PER_PRODUCT,
            "image_bytes": image_bytes, "workspace_bytes": total, "workspace_dirs": sizes,
            "local": stages_out, "ray": ray_out}


def main() -> None:
    """Run every size, smallest first; stop growing when the next size would pass the time limit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 2000 and 6000")
    parser.add_argument("--sizes", nargs="+", type=int, default=[3_000, 10_000, 30_000, 100_000])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--max-run-s", type=float, default=720.0, help="skip a size predicted to run longer")
    parser.add_argument("--phase", choices=STAGES)
    parser.add_argument("--ws", type=Path)
    parser.add_argument("--catalog", type=Path)
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="run the stages up to the last one named (with --reuse: only those named)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine's inspect and export")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep", action="store_true", help="keep each size's workspace in benchmarks/.work")
    group.add_argument("--reuse", action="store_true", help="run --stages on the workspaces --keep left")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.ws, args.catalog, args.engine)))
        return
    sizes = [2000, 6000] if args.quick else sorted(args.sizes)
    # A run of some stages only leaves the full run's results (docs/bench-results/bench_scale.json) alone.
    name = "bench_scale" if set(args.stages) == set(STAGES) and not args.reuse else "bench_scale_stages"
    runs, skipped = [], []
    for n in sizes:
        if runs:
            last = runs[-1]
            predicted = last["wall_s"] * n / last["n_products"]
            if predicted > args.max_run_s:
                skipped.append({"n_products": n, "predicted_s": round(predicted)})
                print(f"{n} products skipped: predicted {predicted:.0f}s > {args.max_run_s:.0f}s", flush=True)
                continue
        t = time.perf_counter()
        result = run_size(n, args.latency_ms / 1000, timeout_s=int(args.max_run_s * 2),
                          stages=tuple(s for s in STAGES if s in args.stages), ray=not args.no_ray,
                          keep=args.keep, reuse=args.reuse)
        result["wall_s"] = round(time.perf_counter() - t, 1)
        runs.append(result)
        write_result(name, {"runs": runs, "skipped": skipped, "latency_ms": args.latency_ms,
                                     "images_per_product": IMAGES_PER_PRODUCT, "server_nodelay": True})
    write_result(name, {"runs": runs, "skipped": skipped, "latency_ms": args.latency_ms,
                                 "images_per_product": IMAGES_PER_PRODUCT, "server_nodelay": True})


# ------------------------------------------------------------------------------------------------ report


def growth(result: dict) -> list[dict]:
    """Per stage: time-per-product and peak-RSS growth from the smallest to the largest size, with verdicts."""
    runs = result["runs"]
    if len(runs) < 2:
        return []
    small, large = runs[0], runs[-1]
    factor = large["n_products"] / small["n_products"]
    out = []
    for stage in (s for s in STAGES if s in small["local"] and s in large["local"]):
        a, b = small["local"][stage], large["local"][stage]
        t_ratio = (b["seconds"] / max(a["seconds"], 1e-3)) / factor
        # Runs from before CPU time was recorded have none: their CPU ratio is left out, not guessed.
        cpu_ratio = (b["cpu_s"] / max(a["cpu_s"], 1e-3)) / factor if "cpu_s" in a and "cpu_s" in b else None
        rss_ratio = b["peak_single_mib"] / max(a["peak_single_mib"], 1e-3)
        out.append({"stage": stage, "time_per_product_ratio": round(t_ratio, 2), "rss_ratio": round(rss_ratio, 2),
                    "cpu_per_product_ratio": None if cpu_ratio is None else round(cpu_ratio, 2),
                    "time_met": t_ratio <= TIME_GROWTH, "rss_met": rss_ratio <= RSS_GROWTH,
                    "cpu_met": None if cpu_ratio is None else cpu_ratio <= TIME_GROWTH,
                    "cap_met": b["peak_single_mib"] < RSS_CAP_MIB})
    return out


def _cpu_ratio(ray: dict, local: dict) -> str:
    """", CPU <ratio>x" of Ray's stage CPU seconds to the local engine's, when both were recorded."""
    if "cpu_s" not in ray or "cpu_s" not in local:
        return ""
    return f" (CPU {ray['cpu_s'] / max(local['cpu_s'], 1e-3):.2f}x)"


def section(result: dict) -> list[str]:
    """The tables for docs/benchmarks.md: the stored full run, then the large sizes' and memory's own runs."""
    return run_tables(result) + large_section() + memory_section()


LARGE_RESULT = ROOT / "docs" / "bench-results" / "bench_scale_large.json"
"""100k and 1M runs of the first stages (`--keep --no-ray --stages ...`, one size per run, same code): a 1M run of
every stage does not fit a session on this 2-core machine."""


def large_section() -> list[str]:
    """The 100k and 1M runs kept in `LARGE_RESULT`, in the full run's tables, with their growth."""
    if not LARGE_RESULT.exists():
        return []
    large = json.loads(LARGE_RESULT.read_text())
    return ["", f"### 100,000 and 1,000,000 products ({large['date']})", "", large["how"], "",
            *run_tables(large)]


def run_tables(result: dict) -> list[str]:
    """The per-stage table, Ray vs local and the growth table of one result."""
    runs = result["runs"]
    lines = [(f"`python benchmarks/bench_scale.py`: {result['images_per_product']} JPEGs (112 px, ~3 KB) per "
             f"product from a loopback server with {result['latency_ms']:.0f} ms latency per request; every stage in "
             "its own process. CPU s: user + system seconds of the stage's process and every descendant (the pool's "
             "workers, Ray's processes; sampled from /proc every 0.2 s, the sampler's own excluded), which other "
             "jobs on the machine inflate far less than wall time. RSS: `peak single` is the largest process (driver or a worker; sampled every 0.2 s "
             "and `ru_maxrss`), `tree` the sampled sum over the stage process and its descendants. `vectors` is "
             "the setup that writes the feature store mine reads (the embed stage's output, no model). Load "
             "average after each stage is in docs/bench-results/bench_scale.json."), ""]
    header = "| stage | engine | " + " | ".join(
        f"{r['n_products']:,} products: s (µs/product), CPU s, peak single / tree MiB" for r in runs) + " |"
    if not result.get("server_nodelay"):
        lines += [("The fetch rows of this run include the benchmark server's own stall (Nagle's algorithm on: 40 "
                   "ms per request on top of the 20 ms; the Fetch section's window part measures it): rerun for the "
                   "fetcher's time."), ""]
    lines += [header, "|---|---|" + "---|" * len(runs)]
    for engine, names in (("local", STAGES), ("ray", RAY_STAGES)):
        for stage in (s for s in names if any(s in r[engine] for r in runs)):
            cells = []
            for r in runs:
                if stage not in r[engine]:
                    cells.append("not run")
                    continue
                s = r[engine][stage]
                cpu = f"{s['cpu_s']:.1f}" if "cpu_s" in s else "-"
                cells.append(f"{s['seconds']:.1f} ({s['seconds'] / r['n_products'] * 1e6:.0f}), {cpu}, "
                             f"{s['peak_single_mib']:.0f} / {s['peak_tree_mib']:.0f}")
            lines.append(f"| {stage} | {engine} | " + " | ".join(cells) + " |")
    paired = [r for r in runs if all(st in r["ray"] and st in r["local"] for st in RAY_STAGES)]
    if paired:
        lines += ["", "Ray vs local (stage seconds, Ray's start excluded; its start per process in brackets): " +
                  "; ".join(f"{r['n_products']:,}: " + ", ".join(
                      f"{st} {r['ray'][st]['seconds'] / max(r['local'][st]['seconds'], 1e-3):.2f}x"
                      f"{_cpu_ratio(r['ray'][st], r['local'][st])} "
                      f"({fmt_met(r['ray'][st]['seconds'] <= RAY_OVERHEAD * r['local'][st]['seconds'])}; "
                      f"start {r['ray'][st]['connect_s']:.1f} s)" for st in RAY_STAGES) for r in paired) + "."]
    rows = growth(result)
    if rows:
        small, large = runs[0]["n_products"], runs[-1]["n_products"]
        lines += ["", (f"Growth from {small:,} to {large:,} products ({large / small:.0f}x; targets scaled from "
                  f"the issue's 10x: time per product ≤ {TIME_GROWTH}x, peak RSS ≤ {RSS_GROWTH}x, < 4 GiB):"), "",
                  ("| stage | wall time per product | verdict | CPU time per product | verdict | peak RSS (single) | "
                   "verdict | < 4 GiB |"), "|---|---|---|---|---|---|---|---|"]
        for g in rows:
            cpu = ("- | -" if g.get("cpu_per_product_ratio") is None else
                   f"{g['cpu_per_product_ratio']:.2f}x | {fmt_met(g['cpu_met'])}")
            lines.append(f"| {g['stage']} | {g['time_per_product_ratio']:.2f}x | {fmt_met(g['time_met'])} | {cpu} | "
                         f"{g['rss_ratio']:.2f}x | {fmt_met(g['rss_met'])} | {fmt_met(g['cap_met'])} |")
    for s in result.get("skipped", []):
        lines.append(f"\n{s['n_products']:,} products not run: predicted {s['predicted_s']} s, over the limit.")
    return lines


MEMORY_RESULT = ROOT / "docs" / "bench-results" / "bench_scale_memory.json"
"""Before/after peak RSS of the table stages (`--reuse` runs of two source trees on the same kept workspaces)."""


def memory_section() -> list[str]:
    """The table stages' driver memory before and after the flat-memory work, from `MEMORY_RESULT`."""
    if not MEMORY_RESULT.exists():
        return []
    m = json.loads(MEMORY_RESULT.read_text())
    sizes = [str(n) for n in m["sizes"]]
    first, last = sizes[-2], sizes[-1]  # the slope between the two largest sizes: fixed costs weigh least there
    span = (int(last) - int(first)) / 1024  # KiB per product from MiB over the products added
    at = " / ".join(f"{int(n):,}" for n in sizes)
    lines = ["", ("The peaks of the full run above are floored at the bench process's own RSS (it holds the image "
                  "blob it serves): a phase's `ru_maxrss` carries its forking parent's over the exec. Phases read "
                  "their own high-water mark (VmHWM) since."),
             "", f"### Table stages' driver memory, before and after ({m['date']})", "", m["how"], "",
             (f"| stage | before: peak MiB at {at} | after: peak MiB at {at} | KiB per product {int(first):,} to "
              f"{int(last):,}, before / after | seconds at {int(last):,}, before / after |"),
             "|---|---|---|---|---|"]
    for stage in m["stages"]:
        b, a = m["before"], m["after"]
        cells = [" / ".join(f"{side[n][stage]['peak_single_mib']:,.0f}" for n in sizes) for side in (b, a)]
        slopes = [(side[last][stage]["peak_single_mib"] - side[first][stage]["peak_single_mib"]) / span
                  for side in (b, a)]
        cells.append(" / ".join(f"{k:.1f}" for k in slopes))
        cells.append(f"{b[last][stage]['seconds']:.1f} / {a[last][stage]['seconds']:.1f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":  # the local engine's forkserver workers import this module: no work at import
    main()
