"""Near-duplicates: the largest groups as thumbnail strips, with the evidence that joined them."""

from __future__ import annotations

from collections import defaultdict

from visprep.report.context import ReportContext
from visprep.report.page import empty, esc, figure, strip, table, thumb


def render(ctx: ReportContext) -> str:
    """The duplicates section's body."""
    return _summary(ctx) + _groups(ctx)


def _summary(ctx: ReportContext) -> str:
    out = ""
    if ctx.has("product_groups"):
        g = ctx.rows_of("SELECT count(*) AS groups, coalesce(sum(n), 0)::BIGINT AS products FROM "
                        "(SELECT group_id, count(*) AS n FROM product_groups GROUP BY 1 HAVING count(*) > 1)")[0]
        out += (f'<p>{g["groups"]:,} groups of two or more products ({g["products"]:,} products in them) out of '
                f'{ctx.rows("product_groups"):,} grouped products.</p>')
    if ctx.has("duplicate_edges"):
        rows = ctx.rows_of("SELECT signal, count(*) FILTER (WHERE accepted) AS accepted, "
                           "count(*) FILTER (WHERE NOT accepted OR accepted IS NULL) AS rejected "
                           "FROM duplicate_edges GROUP BY 1 ORDER BY accepted DESC, signal")
        out += figure(table(["signal", "pairs accepted", "pairs not accepted"],
                            [(r["signal"], r["accepted"], r["rejected"]) for r in rows], numeric=[1, 2]),
                      "Candidate duplicate pairs by the signal that found them and whether `dedup.rule` accepted "
                      "them: a signal that is never accepted costs time; colour or brand vetoes show here too.")
    return out


def _groups(ctx: ReportContext) -> str:
    if not ctx.has("product_groups"):
        return empty("No product groups: run `visprep dedup`.")
    lim = ctx.limits
    groups = ctx.rows_of("SELECT group_id, count(*) AS n FROM product_groups GROUP BY 1 HAVING count(*) > 1 "
                         "ORDER BY n DESC, group_id LIMIT $k", k=lim.dup_groups)
    if not groups:
        return empty("Every product is its own group: no near-duplicates were accepted.")
    members = ctx.rows_of(
        """
        SELECT group_id, product_id, canonical_product_id FROM product_groups
        WHERE group_id IN (SELECT unnest($ids))
        QUALIFY row_number() OVER (PARTITION BY group_id ORDER BY product_id <> canonical_product_id, product_id)
                <= $m
        ORDER BY group_id, product_id <> canonical_product_id, product_id
        """, ids=[g["group_id"] for g in groups], m=lim.group_members)
    pids = [m["product_id"] for m in members]
    images = ctx.product_images(pids)
    titles = ctx.titles(pids)
    evidence: dict[tuple[str, str], list[str]] = defaultdict(list)
    if ctx.has("duplicate_edges"):
        for e in ctx.rows_of(
                """
                SELECT product_a, product_b, signal, distance, similarity FROM duplicate_edges
                WHERE accepted AND product_a IN (SELECT unnest($ids)) AND product_b IN (SELECT unnest($ids))
                ORDER BY product_a, product_b, signal
                """, ids=pids):
            evidence[(e["product_a"], e["product_b"])].append(_signal(e))
    by_group: dict[str, list[dict]] = defaultdict(list)
    for m in members:
        by_group[m["group_id"]].append(m)
    out = []
    for g in groups:
        ms = by_group[g["group_id"]]
        ids = {m["product_id"] for m in ms}
        thumbs = [thumb(ctx.thumb(*images.get(m["product_id"], (None, None))),
                        ("★ " if m["product_id"] == m["canonical_product_id"] else "") + esc(m["product_id"]),
                        title=titles.get(m["product_id"], "")) for m in ms]
        ev = [f"{esc(a, limit=40)} ~ {esc(b, limit=40)}: {', '.join(signals)}"
              for (a, b), signals in sorted(evidence.items()) if a in ids and b in ids][:12]
        more = "" if g["n"] <= len(ms) else f" (showing {len(ms)} of {g['n']})"
        out.append(f"<h3>Group {esc(g['group_id'])}: {g['n']} products{more}</h3>"
                   + strip(thumbs, note="Evidence: " + ("; ".join(ev) if ev else "none recorded in "
                                                         "duplicate_edges (joined transitively)")))
    return ("<h3>Largest groups</h3>"
            + figure("".join(out), "The largest near-duplicate groups (★ the member kept as the group's face), "
                                   "with the hash distance or title similarity that joined each pair: products "
                                   "that are not the same item mean dedup.rule is too loose."))


def _signal(edge: dict) -> str:
    """One duplicate signal with its measure, as HTML text."""
    signal, d, sim = edge["signal"], edge["distance"], edge["similarity"]
    if signal in ("phash", "trimmed_phash") and d is not None:
        return f"{esc(signal)} {d} bits"
    if signal == "color" and d is not None:
        return f"colour distance {d}"
    if sim is not None:
        return f"{esc(signal)} similarity {sim:.2f}"
    return esc(signal).replace("_", " ")
