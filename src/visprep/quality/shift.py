"""Distribution shift between catalog photos and user query photos.

Two views, one verdict:

- **Domain classifier.** Catalog vs user embeddings (both from the feature store of the configured model; photos
  without a vector are embedded first, incrementally), standardised, PCA, class-balanced logistic regression,
  stratified k-fold; the AUC of the out-of-fold scores. 0.5 = the model cannot tell the domains apart. Its p-value
  is the one-sided Mann-Whitney U test of those scores (the AUC is U / (n1 n2)).
- **Per-feature drift.** Brightness (mean gray level), blur (Laplacian variance at a 256 px shorter side, the
  inspect stage's `blur_score`), resolution (shorter side, px) and aspect ratio (width / height, EXIF-upright):
  two-sample Kolmogorov-Smirnov statistic and p-value (scipy) and the population stability index over 10 bins
  cut at the pooled sample's deciles.

Verdict: **shift** when AUC >= `shift.auc` with p < `shift.p`, or some feature has
PSI >= `shift.psi` with KS p < `shift.p` (effect size and significance both, so a small sample's
PSI noise alone never triggers it); else **no shift**.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import ShiftConfig
from visprep.schema import DOMAIN_SHIFT
from visprep.stages import StageOutput
from visprep.workspace import QuarantineRecord, RunRecord, Workspace

FEATURES = ("brightness", "blur", "resolution", "aspect")
_SWAPPED = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90 degrees


def image_stats(data: bytes, *, max_pixels: int = 89_478_485,
                max_decoded_bytes: int = 192 << 20) -> np.ndarray:  # decode.DEFAULT_MAX_DECODED_BYTES, imported late
    """(4,) brightness, blur, resolution (shorter side px), aspect (width / height, upright) of an encoded image."""
    from visprep.images.blur import BLUR_SIDE, blur_score
    from visprep.images.decode import decode_image

    d = decode_image(data, min_side=BLUR_SIDE, max_pixels=max_pixels, gray=True, max_decoded_bytes=max_decoded_bytes)
    gray = d.pixels if d.pixels.ndim == 2 else d.pixels[..., 0]
    w, h = (d.height, d.width) if d.orientation in _SWAPPED else (d.width, d.height)
    return np.array([float(gray.mean()), blur_score(np.ascontiguousarray(gray)), float(min(w, h)), w / h])


def simulate_upload(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG bytes of an RGB catalog image made to look like a phone upload: off-centre crop, rescale, blur, heavy JPEG.

    Known-shift data for tests and benchmarks of the shift report.
    """
    import cv2

    h, w = rgb.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 0.9)), int(w * rng.uniform(0.6, 0.9))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = rgb[y:y + ch, x:x + cw]
    scale = rng.uniform(160, 320) / min(ch, cw)
    img = cv2.resize(img, (max(8, int(cw * scale)), max(8, int(ch * scale))), interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.0))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 60))])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode a {img.shape} image")
    return buf.tobytes()


def psi(reference: np.ndarray, current: np.ndarray, *, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index sum (c - r) ln(c / r) over `bins` bins cut at the pooled sample's quantiles
    (proportions floored at `floor`, so an empty bin is finite)."""
    r = np.asarray(reference, np.float64)
    c = np.asarray(current, np.float64)
    if len(r) == 0 or len(c) == 0:
        raise ValueError(f"psi needs two non-empty samples, got {len(r)} and {len(c)}")
    edges = np.unique(np.quantile(np.concatenate([r, c]), np.arange(1, bins) / bins))
    rp = np.bincount(np.searchsorted(edges, r, side="right"), minlength=len(edges) + 1) / len(r)
    cp = np.bincount(np.searchsorted(edges, c, side="right"), minlength=len(edges) + 1) / len(c)
    rp, cp = np.maximum(rp, floor), np.maximum(cp, floor)
    return float(((cp - rp) * np.log(cp / rp)).sum())


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature, catalog (reference) to user (current)."""

    feature: str
    ks: float
    p_value: float
    psi: float
    catalog_median: float
    user_median: float
    shift: bool


def feature_drift(catalog: np.ndarray, user: np.ndarray, *, psi_threshold: float, p_threshold: float
                  ) -> list[FeatureDrift]:
    """Per-feature KS and PSI of (N, 4) `catalog` vs (M, 4) `user` stats (columns in `FEATURES` order)."""
    from scipy.stats import ks_2samp

    out = []
    for k, name in enumerate(FEATURES):
        a, b = catalog[:, k], user[:, k]
        ks = ks_2samp(a, b)
        value = psi(a, b)
        out.append(FeatureDrift(name, float(ks.statistic), float(ks.pvalue), value, float(np.median(a)),
                                float(np.median(b)), bool(value >= psi_threshold and ks.pvalue < p_threshold)))
    return out


def domain_classifier_auc(catalog: np.ndarray, user: np.ndarray, *, folds: int = 5, seed: int = 0
                          ) -> tuple[float, float]:
    """(AUC, one-sided p) of a cross-validated logistic regression telling (M, D) `user` from (N, D) `catalog`."""
    from scipy.stats import mannwhitneyu
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([np.asarray(catalog, np.float32), np.asarray(user, np.float32)])
    y = np.concatenate([np.zeros(len(catalog), np.int64), np.ones(len(user), np.int64)])
    if min(len(catalog), len(user)) < folds:
        raise ValueError(f"the domain classifier needs at least folds={folds} images per domain, got "
                         f"{len(catalog)} catalog and {len(user)} user")
    smallest_train = len(x) - int(np.ceil(len(x) / folds))
    parts = max(1, min(64, x.shape[1], smallest_train - 1))
    model = make_pipeline(StandardScaler(), PCA(n_components=parts, random_state=seed),
                          LogisticRegression(class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    score = cross_val_predict(model, x, y, cv=cv, method="decision_function")
    auc = float(roc_auc_score(y, score))
    p = float(mannwhitneyu(score[y == 1], score[y == 0], alternative="greater").pvalue)
    return auc, p


@dataclass
class ShiftReport:
    """The shift verdict and what it rests on."""

    auc: float
    auc_p: float
    features: list[FeatureDrift]
    shift: bool
    reasons: list[str]
    n_catalog: int
    n_user: int
    rules: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (run records, `status --json`)."""
        return {"verdict": "shift" if self.shift else "no shift", "reasons": self.reasons,
                "domain_auc": round(self.auc, 4), "domain_auc_p": self.auc_p,
                "features": {f.feature: {"ks": round(f.ks, 4), "p": f.p_value, "psi": round(f.psi, 4),
                                         "catalog_median": round(f.catalog_median, 3),
                                         "user_median": round(f.user_median, 3), "shift": f.shift}
                             for f in self.features},
                "n_catalog": self.n_catalog, "n_user": self.n_user, "rules": self.rules}


def shift_rules(cfg: ShiftConfig) -> dict[str, str]:
    """The thresholds of the verdict, in words."""
    return {"domain_auc": f"AUC >= {cfg.auc} and Mann-Whitney p < {cfg.p}",
            "feature": f"PSI >= {cfg.psi} and KS p < {cfg.p}"}


def shift_report(catalog_vecs: np.ndarray, user_vecs: np.ndarray, catalog_stats: np.ndarray,
                 user_stats: np.ndarray, *, cfg: ShiftConfig) -> ShiftReport:
    """Domain-classifier AUC on the vectors, drift of the image stats, and the verdict under `cfg`'s thresholds."""
    auc, p = domain_classifier_auc(catalog_vecs, user_vecs, folds=cfg.folds, seed=cfg.seed)
    drift = feature_drift(catalog_stats, user_stats, psi_threshold=cfg.psi, p_threshold=cfg.p)
    reasons = []
    if auc >= cfg.auc and p < cfg.p:
        reasons.append(f"domain classifier AUC {auc:.3f} >= {cfg.auc}")
    reasons += [f"{f.feature}: PSI {f.psi:.2f} >= {cfg.psi}, KS {f.ks:.2f} (p {f.p_value:.1e})"
                for f in drift if f.shift]
    return ShiftReport(auc, p, drift, bool(reasons), reasons, len(catalog_vecs), len(user_vecs), shift_rules(cfg))


# --- the workspace side -----------------------------------------------------------------------------------------

def catalog_images(ws: Workspace) -> pa.Table:
    """(image_id, format) of every decoded catalog photo (source 'catalog'; synthetic views left out)."""
    return ws.sql("""
        SELECT DISTINCT i.image_id, i.format FROM pi
        JOIN u ON u.url = pi.url AND u.status = 'ok'
        JOIN i ON i.image_id = u.image_id AND i.status = 'ok'
        WHERE coalesce(pi.source, 'catalog') = 'catalog'
        ORDER BY i.image_id""",
        pi=ws.read_table("product_images", ["url", "source"]), u=ws.latest_urls(),
        i=ws.read_table("images", ["image_id", "status", "format"]))


def user_images(ws: Workspace) -> list[str]:
    """Image ids of the accepted (cleaned) user query photos of `tables/queries`."""
    q = ws.read_table("queries", ["image_id", "status"])
    ok = q.filter(pc.and_(pc.equal(q.column("status"), "accepted"), pc.is_valid(q.column("image_id"))))
    return sorted(set(ok.column("image_id").to_pylist()))


def _sample(ids: list[str], n: int, rng: np.random.Generator) -> list[str]:
    return ids if len(ids) <= n else sorted(rng.choice(np.array(ids, dtype=object), n, replace=False).tolist())


def vectors_for(ws: Workspace, image_ids: list[str], exts: list[str], *, embedder: Any = None
                ) -> tuple[np.ndarray, np.ndarray, int, list[QuarantineRecord], str]:
    """Vectors of `image_ids` from the configured model's feature store, embedding (and storing) the ones it lacks.

    Returns (vectors (N, D), found (N,) bool, newly embedded, failures, model id).
    """
    from visprep.embed.registry import get_embedder, model_id_of
    from visprep.embed.store import FeatureStore
    from visprep.views.features import features_root

    cfg = ws.config.embed
    options = dict(cfg.options)
    if cfg.threads:
        options.setdefault("threads", cfg.threads)
    model_id = embedder.model_id if embedder is not None else model_id_of(cfg.model, **options)
    root = features_root(ws)
    try:
        store: FeatureStore | None = FeatureStore.open_existing(root, model_id)
    except FileNotFoundError:
        store = None
    have = store.positions(image_ids) >= 0 if store is not None else np.zeros(len(image_ids), bool)
    todo = np.flatnonzero(~have).tolist()
    failures: list[QuarantineRecord] = []
    added = 0
    if todo:
        embedder = embedder or get_embedder(cfg.model, **options)
        if store is None:
            store = FeatureStore(root, model_id, embedder.dim, index_kind=cfg.index, hnsw_m=cfg.hnsw_m)
        for start in range(0, len(todo), cfg.checkpoint_every):
            chunk = todo[start:start + cfg.checkpoint_every]
            ids, data = [], []
            for k in chunk:
                try:
                    data.append(ws.store.get(image_ids[k], exts[k]))
                    ids.append(image_ids[k])
                except OSError as exc:
                    failures.append(QuarantineRecord(reason="missing_bytes", detail=f"{type(exc).__name__}: {exc}",
                                                     record_id=image_ids[k], field="image_id", value=image_ids[k]))
            vecs, good, errors = [], [], []
            for b in range(0, len(data), cfg.batch_size):
                v, g, e = embedder.embed_partial(data[b:b + cfg.batch_size])
                vecs.append(v)  # the good inputs' vectors only
                good.extend((b + np.flatnonzero(g)).tolist())
                errors.extend((b + int(x.split(":", 1)[0]), x.split(":", 1)[1].strip()) for x in e)
            for i, detail in errors:
                failures.append(QuarantineRecord(reason="embed_decode", detail=detail, record_id=ids[i],
                                                 field="image_id", value=ids[i]))
            if good:
                store.append([ids[i] for i in good], np.concatenate(vecs), update_index=False, writer="shift")
                added += len(good)
        store.index()
    assert store is not None
    vectors, found = store.get(image_ids)
    return vectors, found, added, failures, model_id


@dataclass
class ShiftResult:
    """One `visprep shift` run."""

    report: ShiftReport | None = None
    model_id: str = ""
    embedded: int = 0
    failed: int = 0
    run_id: str = ""


def _stats(ws: Workspace, ids: list[str], exts: list[str]) -> tuple[np.ndarray, list[QuarantineRecord]]:
    from visprep.images.decode import ImageDecodeError

    rows, bad = [], []
    for i, e in zip(ids, exts):
        try:
            rows.append(image_stats(ws.store.get(i, e), max_pixels=ws.config.inspect.max_pixels,
                                    max_decoded_bytes=ws.config.inspect.max_decoded_bytes))
        except (OSError, ImageDecodeError, ValueError) as exc:
            rows.append(np.full(len(FEATURES), np.nan))
            bad.append(QuarantineRecord(reason="stats_decode", detail=f"{type(exc).__name__}: {exc}", record_id=i,
                                        field="image_id", value=i))
    return np.array(rows).reshape(-1, len(FEATURES)), bad


def shift_applies(ws: Workspace) -> bool:
    """Whether `visprep run` has a shift to measure: at least `shift.folds` accepted user photos in
    `tables/queries`, and a feature store of the configured embed model (the embed stage ran)."""
    from visprep.views.features import embed_model_id, store_dir

    if not ws.has_table("queries") or len(user_images(ws)) < ws.config.shift.folds:
        return False
    model_id = embed_model_id(ws)  # None: no embedder to compare with, nothing to measure
    return model_id is not None and store_dir(ws, model_id).is_dir()


def shift_stage(ws: Workspace, *, embedder: Any = None) -> ShiftResult:
    """Measure catalog-vs-user-photo shift into `tables/domain_shift` (the user-photo mix is the mix stage)."""
    from visprep.pipeline import execute

    return execute(ws, "shift", lambda ws, run: compute_shift(ws, run, embedder=embedder))


def compute_shift(ws: Workspace, run: RunRecord, *, embedder: Any = None) -> StageOutput:
    """The shift stage's computation: `domain_shift`, and the photos it could not measure (quarantine "shift").
    The user photos' vectors it lacks go into the feature store (parts tagged "shift", its `user_features`)."""
    from visprep.images.sniff import extension_for

    cfg = ws.config.shift
    res = ShiftResult(run_id=run.run_id)
    rng = np.random.default_rng(cfg.seed)
    cat = catalog_images(ws)
    ext_of = {i: extension_for(f) for i, f in zip(cat.column("image_id").to_pylist(),
                                                 cat.column("format").to_pylist())}
    cat_ids = _sample(sorted(ext_of), cfg.max_images, rng)
    usr_ids = _sample(user_images(ws), cfg.max_images, rng)
    if len(usr_ids) < cfg.folds or len(cat_ids) < cfg.folds:
        raise ValueError(f"shift needs at least shift.folds = {cfg.folds} catalog photos and user "
                         f"photos; have {len(cat_ids)} catalog, {len(usr_ids)} accepted in tables/queries "
                         f"(run `visprep queries PHOTOS`)")
    ids = cat_ids + usr_ids
    exts = [ext_of[i] for i in cat_ids] + ["jpg"] * len(usr_ids)  # the queries stage stores JPEG
    vecs, found, res.embedded, failures, res.model_id = vectors_for(ws, ids, exts, embedder=embedder)
    stats, bad = _stats(ws, ids, exts)
    failures += bad
    ok = found & np.isfinite(stats).all(axis=1)
    is_cat = np.arange(len(ids)) < len(cat_ids)
    report = shift_report(vecs[ok & is_cat], vecs[ok & ~is_cat], stats[ok & is_cat], stats[ok & ~is_cat], cfg=cfg)
    res.report, res.failed = report, len(failures)
    rules = report.rules
    rows = [{"check": "domain_auc", "value": report.auc, "p_value": report.auc_p, "threshold": rules["domain_auc"],
             "shift": report.auc >= cfg.auc and report.auc_p < cfg.p}]
    rows += [{"check": f.feature, "value": f.ks, "p_value": f.p_value, "psi": f.psi,
              "catalog_median": f.catalog_median, "user_median": f.user_median, "threshold": rules["feature"],
              "shift": f.shift} for f in report.features]
    for r in rows:
        r.update(n_catalog=report.n_catalog, n_user=report.n_user, run_id=run.run_id)
    return StageOutput(tables={"domain_shift": pa.Table.from_pylist(rows, schema=DOMAIN_SHIFT)},
                       quarantine={"shift": failures}, result=res,
                       metrics={"shift": report.as_dict(), "model_id": res.model_id},
                       counts={"catalog_images": report.n_catalog, "user_images": report.n_user,
                               "embedded": res.embedded, "failed": res.failed})
