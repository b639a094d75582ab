"""Demo judgments: a small, seeded rater file for the demo workspace, built from its own products.

Each query is a NEW synthetic view of an eval-split product's catalog photo (reframed, new background), stored
as a file the labels stage fetches like any image. Candidates are graded by the rubric from catalog facts:
4 the same product, 3 the same family_id in another colour, 2 the same leaf category, 1 the same top category,
0 another top category. Three simulated raters give these grades with some noise (a grade moved by one).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from visprep.images.sniff import extension_for
from visprep.synthetic.views import foreground_mask, reframe, replace_background
from visprep.workspace import Workspace, atomic_write_bytes

DEMO_RATERS = {"rater_a": 0.05, "rater_b": 0.15, "rater_c": 0.15}
"""Simulated raters and the probability that each moves a grade by one."""


def _hero_images(ws: Workspace) -> dict[str, tuple[str, str]]:
    """product_id -> (image_id, format) of its first catalog photo that was fetched and decodes."""
    t = ws.sql(
        """
        SELECT pi.product_id, arg_min(u.image_id, pi.position) AS image_id, arg_min(u.format, pi.position) AS format
        FROM pi JOIN u ON u.url = pi.url AND u.status = 'ok'
        JOIN i ON i.image_id = u.image_id AND i.status = 'ok'
        WHERE pi.source = 'catalog'
        GROUP BY pi.product_id
        """,
        pi=ws.read_table("product_images"), u=ws.latest_urls(), i=ws.read_table("images", ["image_id", "status"]))
    return {p: (i, f) for p, i, f in zip(*(t.column(c).to_pylist() for c in ("product_id", "image_id", "format")))}


def build_demo_judgments(ws: Workspace, *, seed: int, n_queries: int = 40, per_grade: int = 3) -> Path:
    """Write `<workspace>/demo-labels/judgments.csv` and its query images; return the CSV path.

    Queries are drawn from products of the eval split (all products when no `splits` table exists) whose whole
    family is in that split too, so importing the labels pins nothing new. Each query is judged on its own
    product, its family members, and up to `per_grade` products of each of grades 2, 1 and 0.
    """
    rng = np.random.default_rng(seed)
    dest = ws.root / "demo-labels"
    products = ws.read_table("products", ["product_id", "category", "top_category", "attributes"]).to_pylist()
    family = {p["product_id"]: json.loads(p["attributes"] or "{}").get("family_id") for p in products}
    info = {p["product_id"]: p for p in products}
    split_of: dict[str, str] = {}
    if ws.has_table("splits"):
        s = ws.read_table("splits")
        split_of = dict(zip(s.column("product_id").to_pylist(), s.column("split").to_pylist()))
    eval_split = ws.config.labels.eval_split
    members: dict[str, list[str]] = {}
    for pid, fam in family.items():
        if fam:
            members.setdefault(fam, []).append(pid)
    heroes = _hero_images(ws)

    def in_eval(pid: str) -> bool:
        return not split_of or split_of.get(pid) == eval_split

    candidates = sorted(pid for pid in heroes if in_eval(pid)
                        and all(in_eval(m) for m in members.get(family[pid] or "", [pid])))
    if not candidates:
        raise ValueError("no product with a decodable catalog photo in the eval split: run the pipeline first")
    chosen = rng.choice(candidates, size=min(n_queries, len(candidates)), replace=False)
    all_pids = sorted(info)
    rows = []
    for n, pid in enumerate(sorted(chosen)):
        iid, fmt = heroes[pid]
        hero = cv2.cvtColor(cv2.imdecode(np.frombuffer(ws.store.get(iid, extension_for(fmt)), np.uint8),
                                         cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = foreground_mask(hero)
        view = replace_background(hero, mask, kind=("solid", "gradient", "texture")[n % 3], rng=rng).image
        view = reframe(view, scale=float(rng.uniform(0.8, 1.15)), dx=float(rng.uniform(-0.06, 0.06)),
                       dy=float(rng.uniform(-0.05, 0.05)), pad_color=(235, 235, 235)).image
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(view, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"could not encode the demo query of {pid}")
        rel = f"queries/{pid}.jpg"
        atomic_write_bytes(dest / rel, jpg.tobytes())
        me = info[pid]
        graded: dict[str, int] = {pid: 4}
        for m in members.get(family[pid] or "", []):
            graded.setdefault(m, 3)
        pools = {2: [p for p in all_pids if info[p]["category"] == me["category"]],
                 1: [p for p in all_pids if info[p]["top_category"] == me["top_category"]
                     and info[p]["category"] != me["category"]],
                 0: [p for p in all_pids if info[p]["top_category"] != me["top_category"]]}
        for grade, pool in pools.items():
            pool = [p for p in pool if p not in graded]
            for p in rng.choice(pool, size=min(per_grade, len(pool)), replace=False) if pool else []:
                graded[str(p)] = grade
        for rater, noise in DEMO_RATERS.items():
            for p, g in sorted(graded.items()):
                if rng.random() < noise:
                    g = int(np.clip(g + rng.choice([-1, 1]), 0, 4))
                rows.append({"query_id": rel, "product_id": p, "rater_id": rater, "grade": g,
                             "ts": f"2026-01-{1 + n % 28:02d}T12:00:00Z", "batch": f"demo-{n // 20 + 1}"})
    path = dest / "judgments.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["query_id", "product_id", "rater_id", "grade", "ts", "batch"])
        w.writeheader()
        w.writerows(rows)
    path.with_suffix(".tmp").replace(path)
    return path
