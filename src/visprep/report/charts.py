"""Charts as inline PNG data URIs, drawn with matplotlib's object API (no pyplot: no global figure state)."""

from __future__ import annotations

import base64
import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 80
"""Pixels per inch of the PNGs: a 6 x 3 in chart is 480 x 240 px, a few tens of kB."""


@dataclass(frozen=True)
class Chart:
    """A rendered chart: its PNG as a data URI and its size in pixels."""

    data_uri: str
    width: int
    height: int


def new_figure(width_in: float = 6.0, height_in: float = 3.0) -> Figure:
    """A blank matplotlib figure of `width_in` x `height_in` inches, with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def render(fig: Figure) -> Chart:
    """Encode `fig` as PNG and return it as a `Chart`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf)
    w, h = canvas.get_width_height()
    return Chart(data_uri="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                 width=int(w), height=int(h))


def png_file_chart(data: bytes, *, max_bytes: int = 600_000) -> Chart | None:
    """A PNG someone else drew (e.g. an experiment's chart.png) as a `Chart`; None when too big or not a PNG."""
    if len(data) > max_bytes or not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 24:
        return None
    w, h = struct.unpack(">II", data[16:24])  # the IHDR chunk always comes first
    return Chart(data_uri="data:image/png;base64," + base64.b64encode(data).decode("ascii"), width=w, height=h)


def bar_chart(labels: list[str], values: list[float], *, title: str, xlabel: str = "", horizontal: bool = True,
              log: bool = False, color: str = "#3b6ea8") -> Chart:
    """A bar chart of `values` by `labels` (horizontal by default, largest first as given)."""
    n = max(1, len(labels))
    fig = new_figure(6.0, min(6.0, 1.0 + 0.22 * n) if horizontal else 3.0)
    ax = fig.add_subplot()
    if horizontal:
        ax.barh(range(len(labels)), values, color=color)
        ax.set_yticks(range(len(labels)), [_short(s) for s in labels], fontsize=8)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
    else:
        ax.bar(range(len(labels)), values, color=color)
        ax.set_xticks(range(len(labels)), [_short(s) for s in labels], fontsize=8, rotation=30, ha="right")
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(xlabel)
    ax.set_title(title, fontsize=10)
    return render(fig)


def _short(label: str, n: int = 38) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"
