"""`visprep report`: one self-contained HTML page a team reads before training.

It shows the catalog, the quarantine, image quality, near-duplicates, pairs and mined negatives, behaviour, labels,
evaluation and experiments, and the run timeline, from the workspace's tables and run records. Images are inline
JPEG thumbnails and charts inline PNGs; the page has no script and loads nothing. Galleries are seeded samples and
tables are aggregated in DuckDB, so the page stays small and fast to build on a workspace of any size.
"""

from __future__ import annotations

from visprep.report.build import ReportResult, build_report, report_path
from visprep.report.context import ReportLimits
from visprep.report.counts import WorkspaceCounts, workspace_counts
from visprep.report.sections import SECTIONS

__all__ = ["SECTIONS", "ReportLimits", "ReportResult", "WorkspaceCounts", "build_report", "report_path",
           "workspace_counts"]
