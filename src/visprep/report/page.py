"""HTML building blocks of the report: escaping, tables, figures, thumbnail strips and the page around them.

Everything from the workspace (titles, quarantined values, paths) goes through `esc`: a quarantined record may hold
any text, markup included, and the page must show it, not run it. The page has no script and loads nothing: its
images are data URIs.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from visprep.report.charts import Chart


def esc(value: Any, *, limit: int | None = 200) -> str:
    """`value` as HTML text, cut to `limit` characters (an ellipsis marks the cut); None shows as an empty string."""
    text = "" if value is None else str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)


def fmt(value: Any) -> str:
    """A number for a table cell: thousands separated, floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[int] = (),
          raw: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except columns in `raw` (already HTML); `numeric` columns align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            text = str(v) if i in raw else esc(fmt(v) if i in numeric else v)
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(content: str | Chart, caption: str) -> str:
    """A figure (a chart, a table or a gallery) with its one-line caption saying what to look for."""
    if not caption.strip():
        raise ValueError("every figure needs a caption saying what to look for")
    inner = f'<img src="{content.data_uri}" alt="{esc(caption)}" width="{content.width}" ' \
            f'height="{content.height}">' if isinstance(content, Chart) else content
    return f"<figure>{inner}<figcaption>{esc(caption, limit=None)}</figcaption></figure>"


def thumb(data_uri: str | None, label: str, *, title: str = "") -> str:
    """One thumbnail with a short label under it; a missing or undecodable image shows as a grey box."""
    img = (f'<img src="{data_uri}" alt="{esc(title or label)}">' if data_uri
           else '<span class="noimg">no image</span>')
    return f'<div class="thumb" title="{esc(title)}">{img}<span>{label}</span></div>'


def strip(thumbs: Iterable[str], *, note: str = "") -> str:
    """A row of thumbnails with an optional HTML note (the evidence that ties them together)."""
    return f'<div class="strip">{"".join(thumbs)}</div>' + (f'<p class="note">{note}</p>' if note else "")


def empty(message: str) -> str:
    """The notice of a section (or part of one) that has no data in this workspace."""
    return f'<p class="empty">{esc(message, limit=None)}</p>'


@dataclass(frozen=True)
class RenderedSection:
    """One section of the page: its anchor id, heading and body HTML; `empty` when the workspace had no data."""

    id: str
    title: str
    body: str
    empty: bool = False


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c5d0dc;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #dde2e8;padding:6px 24px;z-index:1}
nav a{margin-right:14px;color:#245;text-decoration:none;font-size:13px}nav a.none{color:#999}
main{padding:8px 24px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:16px 0;padding:8px 18px 14px}
h2{font-size:17px;margin:8px 0}h3{font-size:14px;margin:14px 0 6px}
figure{margin:10px 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto}
figcaption{font-size:12px;color:#4a5563;max-width:640px;margin-top:3px}
table{border-collapse:collapse;font-size:12px;margin:4px 0}
th,td{border:1px solid #dde2e8;padding:2px 7px;text-align:left;vertical-align:top;max-width:420px;
overflow-wrap:break-word}th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.strip{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0 2px}
.thumb{width:100px;font-size:10px;color:#4a5563;text-align:center;overflow:hidden}
.thumb img{width:96px;height:96px;object-fit:contain;background:#eee;display:block;margin:0 auto}
.thumb span{display:block;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.noimg{display:block;width:96px;height:96px;line-height:96px;background:#ddd;margin:0 auto}
.pair{display:inline-flex;gap:4px;border:1px solid #dde2e8;padding:4px;margin:3px;border-radius:4px}
.note{font-size:12px;color:#4a5563;margin:2px 0 10px}.empty{color:#8a5a00;background:#fff6e0;padding:6px 10px}
details{margin:2px 0 2px 14px}summary{cursor:pointer}.count{color:#4a5563}.leaf{margin-left:14px}
"""


def render_page(sections: Sequence[RenderedSection], *, title: str, subtitle: str) -> str:
    """The whole self-contained page: header, a link per section, the sections."""
    nav = "".join(f'<a href="#{s.id}"{" class=none" if s.empty else ""}>{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # An empty icon: otherwise the browser asks for /favicon.ico, a load that fails on file:// pages.
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle, limit=None)}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")
