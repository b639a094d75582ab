"""Bulk title MinHash LSH against datasketch, border trimming, the trimmed-hash signal and the colour veto."""

import cv2
import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.dedup.benchset import render_garment
from visprep.dedup.candidates import DedupParams, find_duplicates
from visprep.dedup.titles import _bucket_pairs, title_candidate_pairs, title_signatures, title_tokens
from visprep.dedup.visual import image_signature, trim_box
from visprep.demo import load_fashion_mnist_subset

WORDS = [f"w{k}" for k in range(40)]


def _titles(seed: int, n: int) -> tuple[list[str], list[str | None]]:
    rng = np.random.default_rng(seed)
    titles = [" ".join(rng.choice(WORDS, int(rng.integers(0, 7)))) for _ in range(n)]
    blocks = [None if rng.random() < 0.05 else str(rng.choice(["A", "B"])) for _ in range(n)]
    return titles, blocks


def test_signatures_equal_datasketch_legacy_minhash():
    titles, _ = _titles(0, 400)
    sig, has = title_signatures(titles, chunk=37)  # several chunks
    ref = MinHash.bulk([[t.encode() for t in set(title_tokens(x))] for x in titles], num_perm=64, seed=1,
                       scheme="legacy")
    assert has.tolist() == [bool(title_tokens(x)) for x in titles]
    assert all((sig[k] == ref[k].hashvalues).all() for k in range(len(titles)))


@pytest.mark.parametrize("seed", [1, 2])
def test_candidates_equal_datasketch_lsh(seed):
    titles, blocks = _titles(seed, 1500)
    i, j = title_candidate_pairs(titles, blocks, max_bucket=10**9)
    ref = MinHash.bulk([[t.encode() for t in set(title_tokens(x))] for x in titles], num_perm=64, seed=1,
                       scheme="legacy")
    expected = set()
    for blk in ("A", "B"):
        members = [k for k, b in enumerate(blocks) if b == blk and title_tokens(titles[k])]
        lsh = MinHashLSH(threshold=0.5, num_perm=64)
        for k in members:
            lsh.insert(k, ref[k])
        for k in members:
            expected |= {(k, o) for o in lsh.query(ref[k]) if o > k}
    assert set(zip(i.tolist(), j.tolist())) == expected
    assert (i < j).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=60), st.integers(1, 8))
def test_bucket_pairs_brute_force(keys, cap):
    keys = np.asarray(keys, np.uint64)
    i, j, capped = _bucket_pairs(keys, max_bucket=cap)
    got = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    assert len(got) == len(i) and all(a != b for a, b in got)
    expected = set()
    n_capped = 0
    for k in set(keys.tolist()):
        members = sorted(np.flatnonzero(keys == k).tolist())
        if len(members) <= cap:
            expected |= {(a, b) for x, a in enumerate(members) for b in members[x + 1 :]}
        else:
            n_capped += 1
            assert sum(members[0] in p for p in got if set(p) <= set(members)) == len(members) - 1
            expected |= {p for p in got if set(p) <= set(members)}
    assert got == expected and capped == n_capped


@pytest.fixture(scope="module")
def garments():
    fm = load_fashion_mnist_subset()
    return [fm.images[k] for k in range(6)]


def _jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def test_trim_box_peels_frame_then_backdrop():
    img = np.full((100, 120, 3), 240, np.uint8)
    img[30:60, 40:90] = (20, 30, 200)
    framed = cv2.copyMakeBorder(img, 12, 12, 12, 12, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    (t, b, l, r), ref = trim_box(framed)
    assert (t, b, l, r) == (42, 72, 52, 102)
    assert np.allclose(ref, 240)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        trim_box(np.zeros((4, 4), np.uint8))


def test_trimmed_hash_survives_border_and_crop_but_not_another_garment(garments):
    base = render_garment(garments[0], (190, 36, 40))
    bordered = cv2.copyMakeBorder(base, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=(250, 250, 210))
    cropped = np.ascontiguousarray(base[10:-8, 12:-6])
    (h0, *_), c0 = image_signature(_jpeg(base))
    far = [(h0 ^ image_signature(_jpeg(render_garment(g, (190, 36, 40))))[0][0]).bit_count() for g in garments[1:]]
    for variant in (bordered, cropped):
        (h, *_), c = image_signature(_jpeg(variant))
        assert (h ^ h0).bit_count() <= 6 < min(far)
        assert np.hypot(*(c - c0)[1:]) < 5
    with pytest.raises(ValueError, match="unrecognised image signature"):  # ImageDecodeError, a ValueError
        image_signature(b"not an image")


def test_find_duplicates_trimmed_signal_and_colour_veto(garments):
    red, navy = (190, 36, 40), (28, 42, 92)
    base = render_garment(garments[0], red)
    images = [base, cv2.copyMakeBorder(base, 24, 24, 24, 24, cv2.BORDER_CONSTANT, value=(255, 255, 255)),
              render_garment(garments[0], navy), base]
    data = [_jpeg(x) for x in images]
    from visprep.images.facts import inspect_image

    codes = np.array([inspect_image(b).phash for b in data], np.uint64)
    ids = ["A", "B", "C", "D"]
    titles = ["Corvo Cotton Tee", "CORVO cotton tee - Sale", "Corvo Cotton Tee", "Corvo Cotton Tee"]
    args = (ids, titles, ["Apparel"] * 4, np.arange(4), [f"i{k}" for k in range(4)], codes)
    c = find_duplicates(*args, image_loader=data.__getitem__, colors=[None, None, None, "Blue"])
    acc = {(ids[a], ids[b]) for a, b in zip(c.a[c.accepted].tolist(), c.b[c.accepted].tolist())}
    assert ("A", "B") in acc  # bordered copy: through the trimmed hash
    assert c.trimmed_distance[(c.a == 0) & (c.b == 1)][0] <= 6
    assert not {("A", "C"), ("B", "C")} & acc  # the navy colour variant: vetoed by the image colour
    assert c.vetoed[(c.a == 0) & (c.b == 2)].all()
    # D is the same photo as A, but its declared colour alone cannot veto (A declares none): image colours agree.
    assert ("A", "D") in acc
    c2 = find_duplicates(*args, image_loader=data.__getitem__, colors=["Red", None, None, "Blue"])
    acc2 = {(ids[a], ids[b]) for a, b in zip(c2.a[c2.accepted].tolist(), c2.b[c2.accepted].tolist())}
    assert ("A", "D") not in acc2 and c2.declared_color_differs[(c2.a == 0) & (c2.b == 3)].all()
    # Without the images, only the plain pHash can match: the bordered copy is missed, as before.
    c3 = find_duplicates(*args, colors=None)
    assert not c3.accepted[(c3.a == 0) & (c3.b == 1)].any()
    c4 = find_duplicates(*args, image_loader=data.__getitem__, brands=["Corvo", None, None, "Oakline"])
    pair = (c4.a == 0) & (c4.b == 3)
    assert c4.declared_brand_differs[pair].all() and c4.vetoed[pair].all() and not c4.accepted[pair].any()
    assert c4.accepted[(c4.a == 0) & (c4.b == 1)].all()  # B declares no brand
    # Declared colours that agree do not overrule clearly different image colours (coarse names).
    c5 = find_duplicates(*args, image_loader=data.__getitem__, colors=["Blue", None, "blue", None])
    pair = (c5.a == 0) & (c5.b == 2)
    assert not c5.declared_color_differs[pair].any() and c5.vetoed[pair].all()
    assert c5.accepted[(c5.a == 0) & (c5.b == 1)].all()
    off = find_duplicates(*args, image_loader=data.__getitem__, params=DedupParams(color_veto=False))
    assert off.accepted[(off.a == 0) & (off.b == 2)].all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40),
    st.lists(st.integers(0, 3), min_size=n, max_size=n))))
def test_groups_match_union_find(case):
    from visprep.dedup.groups import UnionFind, canonical_members, connected_groups

    n, edges, prio = case
    a = np.asarray([e[0] for e in edges], np.int64)
    b = np.asarray([e[1] for e in edges], np.int64)
    labels = connected_groups(n, a, b)
    uf = UnionFind(n)
    for x, y in edges:
        uf.union(x, y)
    roots = uf.roots()
    assert all((labels[x] == labels[y]) == (roots[x] == roots[y]) for x in range(n) for y in range(n))
    firsts = [int(np.flatnonzero(labels == g)[0]) for g in range(labels.max() + 1)]
    assert firsts == sorted(firsts)  # labelled in order of first member
    canon = canonical_members(labels, [(p, k) for k, p in enumerate(prio)])
    for k in range(n):
        members = np.flatnonzero(labels == labels[k]).tolist()
        assert canon[k] == min(members, key=lambda m: (prio[m], m))


def test_stage_reads_the_image_store_and_keeps_veto_evidence(tmp_path, garments):
    import datetime as dt

    import pyarrow as pa

    from visprep.dedup.stage import dedup_stage
    from visprep.images.facts import inspect_image
    from visprep.workspace import Workspace

    base = render_garment(garments[1], (190, 36, 40))
    images = {"A": base, "B": cv2.copyMakeBorder(base, 24, 24, 24, 24, cv2.BORDER_CONSTANT, value=(0, 0, 0)),
              "C": render_garment(garments[1], (28, 42, 92)), "E": base}
    ws = Workspace(tmp_path)
    ids = {p: ws.store.put(_jpeg(img), "jpg") for p, img in images.items()}
    ws.write_table("products", pa.Table.from_pylist([
        {"product_id": p, "title": "Corvo Cotton Tee" + (" - Sale" if p == "B" else ""), "category": "Apparel",
         "top_category": "Apparel", "brand": "Oakline" if p == "E" else None} for p in images]))
    ws.write_table("product_images", pa.Table.from_pylist(
        [{"product_id": p, "position": 0, "url": f"file:///{p}.jpg", "source": "catalog"} for p in images]))
    now = dt.datetime.now(dt.UTC)
    ws.write_table("urls", pa.Table.from_pylist([{"url": f"file:///{p}.jpg", "status": "ok", "image_id": i,
                                                  "format": "jpeg", "fetched_at": now} for p, i in ids.items()]))
    ws.write_table("images", pa.table({"image_id": list(ids.values()), "status": ["ok"] * 4, "phash": pa.array(
        [inspect_image(ws.store.get(i, "jpg")).phash for i in ids.values()], pa.uint64())}))
    res = dedup_stage(ws)
    groups = dict(zip(*(ws.read_table("product_groups").column(c).to_pylist() for c in ("product_id", "group_id"))))
    assert groups["A"] == groups["B"] != groups["C"]
    assert groups["E"] == "A"  # the same photo as A; only A and E... E declares a brand, A none: no brand veto
    edges = ws.read_table("duplicate_edges").to_pylist()
    ab = {e["signal"]: e for e in edges if (e["product_a"], e["product_b"]) == ("A", "B")}
    assert ab["trimmed_phash"]["accepted"] and ab["trimmed_phash"]["distance"] <= 6
    assert ab["trimmed_phash"]["image_a"] == ids["A"]
    vetoed = [e for e in edges if e["signal"] == "color" and not e["accepted"]]
    assert {(e["product_a"], e["product_b"]) for e in vetoed} >= {("A", "C")}
    assert res.counts["color_vetoed_pairs"] >= 1


@pytest.mark.parametrize("seed", [3, 4])
def test_brand_subblocks_equal_filtered_full_candidates(seed):
    """With subblocks, the candidates are exactly the full ones minus pairs of two different declared brands."""
    titles, blocks = _titles(seed, 1200)
    rng = np.random.default_rng(seed)
    brands = [None if rng.random() < 0.3 else str(rng.choice(["x", "y", "z"])) for _ in titles]
    full = set(zip(*(a.tolist() for a in title_candidate_pairs(titles, blocks, max_bucket=10**9))))
    sub = set(zip(*(a.tolist() for a in title_candidate_pairs(titles, blocks, max_bucket=10**9, subblocks=brands))))
    expected = {(i, j) for i, j in full if brands[i] is None or brands[j] is None or brands[i] == brands[j]}
    assert sub == expected
