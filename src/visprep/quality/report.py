"""The data-quality section of `visprep status`: stale embeddings, class balance, and the last popularity, shift and
label-noise results."""

from __future__ import annotations

from typing import Any

from visprep.workspace import Workspace


def quality_status(ws: Workspace, *, examples: int = 20) -> dict[str, Any]:
    """JSON-able quality summary of the workspace (each part independent: one failing is reported, not raised)."""
    from visprep.quality.imbalance import category_balance
    from visprep.quality.staleness import stale_embeddings

    out: dict[str, Any] = {}
    if ws.has_table("images"):
        try:
            out["stale_embeddings"] = stale_embeddings(ws, examples=examples).as_dict()
        except (ImportError, ValueError, OSError) as exc:  # e.g. the configured embedder is not installed
            out["stale_embeddings"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        out["class_balance"] = category_balance(ws).as_dict()
    except ValueError as exc:
        out["class_balance"] = {"error": f"{type(exc).__name__}: {exc}"}
    pop = ws.last_run("popularity")
    if pop:
        m = pop.get("metrics", {})
        out["popularity"] = {"run_id": pop["run_id"], "temperature": m.get("temperature"),
                             "before": m.get("before"), "after": m.get("after"), "exposure": m.get("exposure")}
    sh = ws.last_run("shift")
    if sh:
        m = sh.get("metrics", {})
        out["shift"] = {"run_id": sh["run_id"], **(m.get("shift") or {}), "mix": m.get("mix")}
    mx = ws.last_run("mix")  # the user-photo mix has its own run record since it became a stage of `run`
    if mx:
        out.setdefault("shift", {})["mix"] = (mx.get("metrics") or {}).get("mix")
    if ws.has_table("label_issues"):
        out["label_issues"] = ws.read_table("label_issues", ["product_id"]).num_rows
    return out


def quality_lines(q: dict[str, Any]) -> list[str]:
    """Plain-text lines of `quality_status` for the terminal."""
    lines = []
    st = q.get("stale_embeddings")
    if st and "error" in st:
        lines.append(f"embeddings: cannot check ({st['error']})")
    elif st:
        stale = st["stale"]
        n_stale = sum(stale.values())
        lines.append(f"embeddings ({st['model_id']}): {st['up_to_date']} of {st['products']} products current, "
                     f"{st['partial']} partial, {n_stale} without a current vector "
                     f"({', '.join(f'{k} {v}' for k, v in stale.items())}); {st['images_to_embed']} images to embed"
                     + (f"; other model stores: {st['other_models']}" if st["other_models"] else ""))
        for e in st["examples"]:
            lines.append(f"  {e['product_id']}: {e['reason']} ({e['detail']}, {e['images']} images)")
        if n_stale or st["partial"] or st["images_to_embed"]:
            lines.append(f"  fix: `{st['fix']}` (incremental: embeds only the images without a current vector)")
    cb = q.get("class_balance")
    if cb and "error" not in cb and cb.get("categories"):
        lines.append(f"class balance ({'/'.join(cb['splits'])}, K = {cb['k']}, temperature {cb['temperature']}): "
                     f"max/min share {cb['imbalance_ratio_natural']} natural -> {cb['imbalance_ratio_stratified']} "
                     f"stratified" + (f"; {cb['note']}" if cb["note"] else ""))
        for c in cb["categories"]:
            real = "" if c["realised_share"] is None else f", realised {c['realised_share']:.3f}"
            lines.append(f"  {c['category']}: {c['products']} products, {c['images']} images, share "
                         f"{c['natural_share']:.3f} -> {c['stratified_share']:.3f}{real}")
    pop = q.get("popularity")
    if pop and pop.get("before"):
        b, a = pop["before"], pop["after"]
        head = next((k for k in b if k.endswith("_share")), None)
        lines.append(f"popularity (T = {pop['temperature']}): positive mass Gini {b['gini']} -> {a['gini']}"
                     + (f", {head.removesuffix('_share')} head share {b[head]} -> {a[head]}" if head else ""))
    sh = q.get("shift")
    if sh and "verdict" in sh:
        lines.append(f"catalog vs user photos: {sh['verdict']} (domain AUC {sh['domain_auc']}, "
                     f"{sh['n_catalog']}/{sh['n_user']} photos)"
                     + (f": {'; '.join(sh['reasons'])}" if sh["reasons"] else ""))
    if sh and sh.get("mix"):
        lines.append(f"  user-photo pairs: {sh['mix']['added']} (fraction {sh['mix']['fraction']})")
    if "label_issues" in q:
        lines.append(f"label issues flagged: {q['label_issues']}")
    return lines
