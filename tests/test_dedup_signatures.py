"""The crop/border-tolerant signature computed once by inspect: stored columns, back-fill, and dedup reading them."""

import datetime as dt

import cv2
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import visprep.images.stage as inspect_module
from visprep.dedup.benchset import build_dedup_benchmark
from visprep.dedup.candidates import DedupParams, find_duplicates
from visprep.dedup.stage import dedup_stage
from visprep.dedup.visual import image_signature, signatures_from_table
from visprep.images.facts import inspect_image, small_rgb
from visprep.images.signature import (
    CODE_COLUMNS,
    COLOR_COLUMNS,
    _within,
    median_u8,
    signature_of_rgb,
    trim_box,
)
from visprep.images.stage import BACKFILL_DIR, inspect_stage
from visprep.workspace import Workspace

SIG = CODE_COLUMNS + COLOR_COLUMNS


@pytest.fixture(scope="module")
def bench():
    return build_dedup_benchmark(40, seed=5)


def _workspace(root, bench, *, workers: int = 1, batch_size: int = 8) -> Workspace:
    """Products, listings, fetched urls and the stored bytes, as catalog + fetch leave them (not inspected)."""
    ws = Workspace(root)
    ws.set_config(ws.config.model_copy(update={"inspect": ws.config.inspect.model_copy(
        update={"workers": workers, "batch_size": batch_size})}))
    ids = [ws.store.put(b, "jpg") for b in bench.images]
    ws.write_table("products", pa.Table.from_pylist(
        [{"product_id": p, "title": t, "category": c, "top_category": c}
         for p, t, c in zip(bench.product_ids, bench.titles, bench.top_categories)]))
    ws.write_table("product_images", pa.Table.from_pylist(
        [{"product_id": p, "position": 0, "url": f"file:///{p}.jpg", "source": "catalog"} for p in bench.product_ids]))
    now = dt.datetime.now(dt.UTC)
    ws.write_table("urls", pa.Table.from_pylist(
        [{"url": f"file:///{p}.jpg", "status": "ok", "image_id": i, "format": "jpeg", "fetched_at": now}
         for p, i in zip(bench.product_ids, ids)]))
    return ws


def _forget_signatures(ws: Workspace, keep: int) -> list[str]:
    """Null the signature columns of all but the first `keep` rows (a workspace inspected before they existed)."""
    images = ws.read_table("images")
    n = images.num_rows
    for name in SIG:
        col = images.column(name)
        images = images.set_column(images.schema.get_field_index(name), name, pa.concat_arrays(
            [col.combine_chunks()[:keep], pa.nulls(n - keep, col.type)]))
    ws.write_table("images", images)
    return images.column("image_id").to_pylist()[keep:]


def test_inspect_stores_the_signature_image_signature_computes(tmp_path, bench):
    ws = _workspace(tmp_path, bench)
    r = inspect_stage(ws)
    assert r.ok == len(set(bench.image_ids())) and r.backfilled == 0
    rows = {row["image_id"]: row for row in ws.read_table("images").to_pylist()}
    for image_id, data in zip(bench.image_ids(), bench.images):
        codes, color = image_signature(data)
        row = rows[image_id]
        assert [row[c] for c in CODE_COLUMNS] == codes
        assert [row[c] for c in COLOR_COLUMNS] == pytest.approx(color.tolist())
        assert row["phash"] == inspect_image(data).phash
    sig = signatures_from_table(ws.read_table("images"))
    assert sig.ok.all() and sig.codes.dtype == np.uint64


def test_signature_is_of_the_upright_image(bench):
    """An EXIF-rotated JPEG gets the signature of the upright picture (as a viewer shows it)."""
    import io

    from PIL import Image

    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(bench.images[-1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 CCW
    stored = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(stored, "JPEG", quality=95, exif=exif.tobytes())
    upright = io.BytesIO()
    Image.fromarray(rgb).save(upright, "JPEG", quality=95)
    (a, color_a), (b, color_b) = image_signature(stored.getvalue()), image_signature(upright.getvalue())
    assert max((x ^ y).bit_count() for x, y in zip(a, b)) <= 6
    assert np.abs(color_a - color_b).max() <= 4


def test_backfill_is_incremental_and_resumes_after_a_kill(tmp_path, bench, monkeypatch):
    ws = _workspace(tmp_path, bench, batch_size=5)
    inspect_stage(ws)
    full = {row["image_id"]: row for row in ws.read_table("images").to_pylist()}
    forgotten = _forget_signatures(ws, keep=7)
    assert len(forgotten) > 15
    real = inspect_module.signature_batch
    calls = []

    def dies_on_third_batch(items):
        calls.append(len(items))
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill between checkpoints
        return real(items)

    monkeypatch.setattr(inspect_module, "signature_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        inspect_stage(ws)
    # Killed: the images table is as before (no duplicate row, no half-written one); two batches are staged.
    images = ws.read_table("images")
    assert images.num_rows == len(full) == len(set(images.column("image_id").to_pylist()))
    assert signatures_from_table(images).ok.sum() == 7
    assert len(list((ws.tables_dir / BACKFILL_DIR).glob("part-*.parquet"))) == 2
    monkeypatch.setattr(inspect_module, "signature_batch", real)
    r = inspect_stage(ws)
    assert r.inspected == 0 and r.backfilled == len(forgotten) - 10 and r.backfill_failed == 0  # 2 x 5 kept
    assert not (ws.tables_dir / BACKFILL_DIR).exists()
    after = {row["image_id"]: row for row in ws.read_table("images").to_pylist()}
    assert after == full  # every column, every row: as if inspected with the signature from the start
    assert inspect_stage(ws).backfilled == 0  # nothing left to do
    assert ws.last_run("inspect")["counts"]["signatures_backfilled"] == 0


def test_backfill_leaves_unreadable_images_null_and_counts_them(tmp_path, bench):
    ws = _workspace(tmp_path, bench)
    inspect_stage(ws)
    forgotten = _forget_signatures(ws, keep=len(bench.images) - 3)
    ws.store.path(forgotten[0], "jpg").write_bytes(b"gone")  # the stored file was damaged since
    r = inspect_stage(ws)
    assert (r.backfilled, r.backfill_failed) == (2, 1)
    sig = signatures_from_table(ws.read_table("images"))
    assert int((~sig.ok).sum()) == 1


def test_dedup_uses_stored_signatures_and_decodes_only_rows_without(tmp_path, bench):
    ws = _workspace(tmp_path, bench)
    inspect_stage(ws)
    # Candidates from the stored codes would differ between the runs below (fewer rows have them in run 2).
    ws.set_config(ws.config.model_copy(update={"dedup": ws.config.dedup.model_copy(
        update={"signature_candidates": False})}))
    # 1. Every signature stored: no image is read (the store is emptied to prove it), same verdicts as decoding.
    stored = {i: ws.store.get(i, "jpg") for i in bench.image_ids()}
    for i in stored:
        ws.store.path(i, "jpg").unlink()
    res = dedup_stage(ws)
    assert res.counts["images_decoded"] == 0 and res.counts["signatures_missing"] == 0
    assert res.counts["signatures_stored"] > 0 and res.counts["trimmed_checked_pairs"] > 0
    from_table = ws.read_table("product_groups").to_pylist()
    for i, data in stored.items():
        ws.store.path(i, "jpg").write_bytes(data)
    # 2. Signatures of most rows forgotten (inspected before the columns existed): dedup decodes those only.
    forgotten = set(_forget_signatures(ws, keep=25))
    decoded_run = dedup_stage(ws)
    involved_missing = decoded_run.counts["images_decoded"]
    assert 0 < involved_missing <= len(forgotten) and decoded_run.counts["signatures_missing"] == 0
    # the same image rows are needed; those still stored are read, the others decoded
    assert decoded_run.counts["signatures_stored"] + involved_missing == res.counts["signatures_stored"]
    assert ws.read_table("product_groups").to_pylist() == from_table  # same signature, either way
    # 3. Another trimming tolerance than inspect's: the stored ones do not apply, every needed image is decoded.
    ws.set_config(ws.config.model_copy(update={"dedup": ws.config.dedup.model_copy(update={"trim_tolerance": 12})}))
    other = dedup_stage(ws)
    assert other.counts["stored_signatures_ignored"] == 25 and other.counts["signatures_stored"] == 0
    assert other.counts["images_decoded"] > involved_missing
    # 4. image_checks off: neither stored signatures nor decoding.
    ws.set_config(ws.config.model_copy(update={"dedup": ws.config.dedup.model_copy(update={"image_checks": False,
                                                                                          "trim_tolerance": 16})}))
    off = dedup_stage(ws)
    assert off.counts["trimmed_checked_pairs"] == 0 and "images_decoded" not in off.counts


def test_signature_candidates_are_every_pair_within_the_radius(bench):
    """With stored signatures, every product pair whose images have some signature code within match_radius is a
    candidate (brute force over all pairs); without, such pairs are only found through titles or the plain pHash."""
    infos = [inspect_image(b) for b in bench.images]
    codes = np.array([x.phash for x in infos], np.uint64)
    sig_codes = np.array([x.signature_codes for x in infos], np.uint64)
    table = pa.table({c: pa.array(sig_codes[:, k], pa.uint64()) for k, c in enumerate(CODE_COLUMNS)}
                     | {c: pa.array([x.fg_color[k] for x in infos], pa.float32()) for k, c in enumerate(COLOR_COLUMNS)})
    ok = np.ones(len(infos), bool)
    ok[3] = False  # a row without a stored signature takes no part in the search
    table = table.set_column(0, CODE_COLUMNS[0], pa.array(np.where(ok, sig_codes[:, 0], 0), pa.uint64(),
                                                          mask=~ok))
    n = len(infos)
    args = (bench.product_ids, bench.titles, bench.top_categories, np.arange(n), bench.image_ids(), codes)
    on = find_duplicates(*args, signatures=signatures_from_table(table))
    off = find_duplicates(*args, signatures=signatures_from_table(table),
                          params=DedupParams(signature_candidates=False))
    want = {(i, j) for i in range(n) for j in range(i + 1, n) if ok[i] and ok[j]
            and min(int(np.bitwise_count(sig_codes[i, k] ^ sig_codes[j, k])) for k in range(3)) <= 6}
    got_on = set(zip(on.a.tolist(), on.b.tolist()))
    got_off = set(zip(off.a.tolist(), off.b.tolist()))
    assert want and want <= got_on and got_on - got_off <= want
    assert on.counts["signature_near_pairs"] == len(want)
    assert "signature_near_pairs" not in off.counts


def test_find_duplicates_signatures_equal_loader(bench):
    """Stored signatures and the image loader give identical pairs and verdicts on the benchmark set."""
    infos = [inspect_image(b) for b in bench.images]
    codes = np.array([x.phash for x in infos], np.uint64)
    table = pa.table({c: pa.array([x.signature_codes[k] for x in infos], pa.uint64()) for k, c in enumerate(CODE_COLUMNS)}
                     | {c: pa.array([x.fg_color[k] for x in infos], pa.float32()) for k, c in enumerate(COLOR_COLUMNS)})
    args = (bench.product_ids, bench.titles, bench.top_categories, np.arange(len(codes)), bench.image_ids(), codes)
    same = DedupParams(signature_candidates=False)  # the loader cannot search codes it has not decoded
    via_loader = find_duplicates(*args, image_loader=bench.images.__getitem__, params=same)
    via_table = find_duplicates(*args, signatures=signatures_from_table(table), params=same)
    assert via_table.counts["images_decoded"] == 0 and via_loader.counts["images_decoded"] > 0
    for name in ("a", "b", "trimmed_distance", "trimmed_a", "trimmed_b", "accepted", "vetoed"):
        assert np.array_equal(getattr(via_loader, name), getattr(via_table, name)), name
    assert np.allclose(via_loader.color_distance, via_table.color_distance, equal_nan=True)
    with pytest.raises(ValueError, match="one row per image row"):
        find_duplicates(*args, signatures=signatures_from_table(table.slice(1)))
    unused = find_duplicates(*args, params=DedupParams(rule="identical_image"),
                             signatures=signatures_from_table(table))
    assert unused.counts["trimmed_checked_pairs"] == 0


# --- the vectorised pieces against plain-numpy oracles ------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3))),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_median_u8_equals_numpy(img, masked, seed):
    mask = None
    sel = img.reshape(-1, 3)
    if masked:
        m = np.random.default_rng(seed).random(img.shape[:2]) < 0.5
        if not m.any():
            m.flat[0] = True
        mask, sel = m.astype(np.uint8) * 255, img[m]
    assert median_u8(img, mask).tolist() == np.median(sel.astype(np.float64), axis=0).astype(np.float32).tolist()


@settings(max_examples=80, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30), st.just(3))),
       arrays(np.float64, 3, elements=st.floats(0, 255)), st.integers(0, 60))
def test_within_equals_numpy(img, ref, tol):
    oracle = np.abs(img.astype(np.int16) - ref.astype(np.int16)).max(axis=2) <= tol
    assert np.array_equal(_within(img, ref, tol) == 255, oracle)


def _trim_box_oracle(img, tolerance=16, rounds=3, seam=2):
    """trim_box in plain numpy (int16 differences, boolean means), loop by loop."""
    h, w = img.shape[:2]
    box = look = (0, h, 0, w)
    ref = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
    for _ in range(rounds):
        t, b, l, r = look
        sub = img[t:b, l:r]
        cur = np.median(np.concatenate([sub[0], sub[-1], sub[:, 0], sub[:, -1]]), axis=0)
        diff = np.abs(sub.astype(np.int16) - cur.astype(np.int16)).max(axis=2) > tolerance
        rows = [y for y in range(b - t) if diff[y].mean() > 0.02]
        cols = [x for x in range(r - l) if diff[:, x].mean() > 0.02]
        if len(rows) < 8 or len(cols) < 8:
            break
        if (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (0, b - t, 0, r - l):
            break
        box, ref = (t + rows[0], t + rows[-1] + 1, l + cols[0], l + cols[-1] + 1), cur
        nt, nb, nl, nr = box
        look = (nt + seam, nb - seam, nl + seam, nr - seam) if min(nb - nt, nr - nl) > 2 * seam + 8 else box
    return box, ref


@settings(max_examples=60, deadline=None)
@given(st.integers(20, 90), st.integers(20, 90), st.integers(0, 2**32 - 1), st.integers(0, 40))
def test_trim_box_equals_numpy_oracle(h, w, seed, tol):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    t, l = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    img[t : t + int(rng.integers(1, h - t + 1)), l : l + int(rng.integers(1, w - l + 1))] = rng.integers(0, 256, 3)
    img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)  # noise
    if rng.random() < 0.5:
        img = cv2.copyMakeBorder(img, 5, 5, 5, 5, cv2.BORDER_CONSTANT, value=[int(v) for v in rng.integers(0, 256, 3)])
    box, ref = trim_box(img, tolerance=tol)
    want_box, want_ref = _trim_box_oracle(img, tol)
    assert box == want_box and np.array_equal(ref, want_ref)


def test_signature_rejects_what_it_cannot_hash(bench):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        signature_of_rgb(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        signature_of_rgb(np.zeros((5, 5, 3), np.float32))
    codes, color = signature_of_rgb(small_rgb(bench.images[0]))
    assert len(codes) == 3 and all(0 <= c < 2**64 for c in codes) and color.dtype == np.float32
    tiny = signature_of_rgb(np.full((1, 1, 3), 7, np.uint8))  # a 1-pixel image still has a signature
    assert len(tiny[0]) == 3


# --- the optional embedding signal ----------------------------------------------------------------------------------

EMB_RULE = "identical_image or ((image_match or embedding_similar) and title_similar)"


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_best_cosine_equals_brute_force(n, seed):
    from visprep.dedup.candidates import best_cosine

    rng = np.random.default_rng(seed)
    count = rng.integers(0, 4, n)
    start = np.cumsum(count) - count
    m = int(count.sum())
    vecs = rng.normal(size=(m, 5)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    slot = np.where(rng.random(m) < 0.8, np.arange(m), -1)
    pa_, pb = (x.ravel() for x in np.triu_indices(n, 1))
    got = best_cosine(pa_, pb, start, count, vecs, slot)
    for k, (x, y) in enumerate(zip(pa_.tolist(), pb.tolist())):
        sims = [float(vecs[i] @ vecs[j]) for i in range(start[x], start[x] + count[x])
                for j in range(start[y], start[y] + count[y]) if slot[i] >= 0 and slot[j] >= 0]
        assert (np.isnan(got[k]) if not sims else got[k] == pytest.approx(max(sims), abs=1e-6))


def test_embedding_signal_accepts_only_what_the_rule_lets_it(bench):
    """Two different photos with the same title: only the embedding (made identical here) can merge them; only the
    rows of pairs whose verdict depends on it are looked up."""
    infos = [inspect_image(b) for b in bench.images[:6]]
    codes = np.array([x.phash for x in infos], np.uint64)
    ids = [f"P{k}" for k in range(6)]
    titles = ["Corvo Cotton Tee"] * 3 + ["Oakline Wool Coat", "Tidewater Linen Dress", "Kestrel Canvas Tote Bag"]
    vecs = np.eye(6, dtype=np.float32)
    vecs[1] = vecs[0]  # P0 and P1: "the same product" to the embedding
    asked = []

    def lookup(rows):
        asked.extend(rows.tolist())
        return vecs[rows], rows != 5  # P5 has no vector

    args = (ids, titles, ["Apparel"] * 6, np.arange(6), [f"i{k}" for k in range(6)], codes)
    params = DedupParams(rule=EMB_RULE, color_veto=False)
    c = find_duplicates(*args, params=params, embeddings=lookup)
    acc = {(ids[a], ids[b]) for a, b in zip(c.a[c.accepted].tolist(), c.b[c.accepted].tolist())}
    assert acc == {("P0", "P1")}
    assert c.embedding_similarity[(c.a == 0) & (c.b == 1)][0] == pytest.approx(1.0)
    assert c.embedding_similarity[(c.a == 0) & (c.b == 2)][0] == pytest.approx(0.0)
    assert set(asked) == {0, 1, 2}  # only the title-similar pairs' images were needed
    assert c.counts["embedding_checked_pairs"] == 3
    no_vectors = find_duplicates(*args, params=params)
    assert not no_vectors.accepted.any() and np.isnan(no_vectors.embedding_similarity).all()
    higher = find_duplicates(*args, params=DedupParams(rule=EMB_RULE, color_veto=False, embedding_threshold=1.01),
                             embeddings=lookup)
    assert not higher.accepted.any()


def test_stage_reads_the_feature_store_of_the_embed_model(tmp_path, bench):
    from visprep.embed.registry import model_id_of
    from visprep.embed.store import FeatureStore
    from visprep.views.features import features_root

    small = build_dedup_benchmark(10, seed=2, use_opencv=False)
    ws = _workspace(tmp_path, small)
    inspect_stage(ws)
    ws.set_config(ws.config.model_copy(update={"dedup": ws.config.dedup.model_copy(
        update={"rule": EMB_RULE, "color_veto": False})}))  # this look-alike's colour would veto it
    with pytest.raises(FileNotFoundError, match="visprep embed"):
        dedup_stage(ws)
    ids = small.image_ids()
    vecs = np.eye(len(ids), 16, dtype=np.float32)
    look_base, look = small.lookalike_pairs[0]
    row = {p: k for k, p in enumerate(small.product_ids)}
    vecs[row[look]] = vecs[row[look_base]]  # the embedding cannot tell this look-alike from its base
    store = FeatureStore(features_root(ws), model_id_of(ws.config.embed.model), 16)
    store.append(ids, vecs)
    res = dedup_stage(ws)
    assert res.counts["embedding_checked_pairs"] >= 1 and res.counts["embedding_vectors_missing"] == 0
    gid = dict(zip(*(ws.read_table("product_groups").column(c).to_pylist() for c in ("product_id", "group_id"))))
    assert gid[look] == gid[look_base]  # same title, vectors equal: the rule merges them (the doc's caveat)
    emb = [e for e in ws.read_table("duplicate_edges").to_pylist() if e["signal"] == "embedding"]
    assert any({e["product_a"], e["product_b"]} == {look, look_base} and e["similarity"] == pytest.approx(1.0)
               for e in emb)
