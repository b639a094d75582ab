"""Quarantine: refused records by stage and reason, with a few examples of each."""

from __future__ import annotations

from visprep.report.charts import bar_chart
from visprep.report.context import ReportContext
from visprep.report.page import esc, figure, table


def render(ctx: ReportContext) -> str:
    """Counts by (stage, reason) from the shared counts, then examples per reason."""
    counts = ctx.counts.quarantine
    k = ctx.limits.table_rows
    labels = [f"{s}: {r}" for s, r, _ in counts[:k]]
    chart = bar_chart(labels, [n for _, _, n in counts[:k]], title="quarantined records by stage and reason",
                      xlabel="records", color="#b5543b")
    examples = ctx.rows_of(
        """
        SELECT stage, reason, record_id, field, value, detail, source, line FROM quarantine
        QUALIFY row_number() OVER (PARTITION BY stage, reason ORDER BY hash(coalesce(record_id, ''),
                                   coalesce(source, ''), coalesce(line, 0), $seed)) <= $n
        ORDER BY stage, reason
        """, seed=ctx.seed, n=ctx.limits.quarantine_examples)
    rows = [(e["stage"], e["reason"], e["record_id"],
             e["field"], e["value"], e["detail"],
             "" if e["source"] is None else f"{e['source']}" + ("" if e["line"] is None else f":{e['line']}"))
            for e in examples]
    total = ctx.counts.quarantined
    return (figure(table(["stage", "reason", "count"], counts, numeric=[2]),
                   f"{total:,} refused records by stage and reason (the numbers `visprep status` prints): a reason "
                   "that grows between runs points at a feed that changed.")
            + figure(chart, "The same counts as bars: the longest bars are where the input data needs fixing "
                            "first.")
            + f"<h3>Examples ({ctx.limits.quarantine_examples} per reason)</h3>"
            + figure(table(["stage", "reason", "record", "field", "value", "detail", "source"], rows),
                     "A few refused records of each reason with the field and value at fault: check that the "
                     "reason is right before fixing the feed.")
            + f'<p class="note">Every refused record: tables/quarantine.parquet in {esc(ctx.ws.root)}.</p>')
