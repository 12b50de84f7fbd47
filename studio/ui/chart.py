"""Line charts drawn on the server as one inline SVG string, for a gr.HTML.

gradio's LinePlot (Vega-Lite) lays out and draws its whole chart again in the browser at every update and keeps
costing the browser while it shows data; an SVG string is put in place once and then costs nothing. On a machine
where the browser shares the cores of a training job, that is the difference (docs/benchmarks.md).

    chart.svg(df, "step", "value", color="series", title="loss", width=500)   # rows with a non-finite value are left out
"""
from __future__ import annotations

import html
import math

import pandas as pd

H = 300                                   # the viewBox's height; its width is the chart's; it scales to its column
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 46, 40  # room for the y ticks, the title and legend, the x ticks
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d", "#ff9da6", "#bab0ac"]
MAX_DOTS = 240                            # points drawn as dots (with their value on hover) up to this many in all


def ticks(lo: float, hi: float, n: int = 5, min_step: float = 0.0) -> list[float]:
    """About n round values (1, 2 or 5 times a power of ten apart, at least min_step) within [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = max((hi - lo) / n, min_step)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if v != 0 else "0"


def svg(df: pd.DataFrame | None, x: str, y: str, color: str | None = None, title: str = "", y_title: str = "",
        width: int = 640) -> str:
    """The chart of df's y against x, one line per value of `color`; a titled empty frame when there are no points.
    width: the width to draw at, about the column's in pixels (the text is scaled with the chart)."""
    rows = df[df[y].map(math.isfinite)] if df is not None and not df.empty else None
    head = f"<text x='{LEFT}' y='18' class='st-chart-title'>{html.escape(title)}</text>"
    if rows is None or rows.empty:
        return (f"<div class='st-chart' data-points='0'><svg viewBox='0 0 {width} {H}' role='img' aria-label='{html.escape(title)}'>"
                f"{head}<text x='{width / 2}' y='{H / 2}' text-anchor='middle' class='st-chart-empty'>no points yet</text></svg></div>")
    x0, x1 = float(rows[x].min()), float(rows[x].max())
    y0, y1 = float(rows[y].min()), float(rows[y].max())
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    px = lambda v: LEFT + (v - x0) / (x1 - x0) * (width - LEFT - RIGHT)  # noqa: E731
    py = lambda v: H - BOTTOM - (v - y0) / (y1 - y0) * (H - TOP - BOTTOM)  # noqa: E731
    parts = [head, f"<g class='st-axis st-x' aria-label='{html.escape(x)}'>"]
    for t in ticks(x0, x1, min_step=1 if pd.api.types.is_integer_dtype(rows[x]) else 0):
        parts.append(f"<line x1='{px(t):.1f}' x2='{px(t):.1f}' y1='{TOP}' y2='{H - BOTTOM}' class='st-grid'/>"
                     f"<text x='{px(t):.1f}' y='{H - BOTTOM + 16}' text-anchor='middle'>{_fmt(t)}</text>")
    parts.append(f"<text x='{(LEFT + width - RIGHT) / 2}' y='{H - 6}' text-anchor='middle' class='st-axis-title'>{html.escape(x)}</text></g>"
                 f"<g class='st-axis st-y' aria-label='{html.escape(y_title or y)}'>")
    for t in ticks(y0, y1):
        parts.append(f"<line x1='{LEFT}' x2='{width - RIGHT}' y1='{py(t):.1f}' y2='{py(t):.1f}' class='st-grid'/>"
                     f"<text x='{LEFT - 6}' y='{py(t) + 4:.1f}' text-anchor='end'>{_fmt(t)}</text>")
    parts.append("</g>")
    groups = list(rows.groupby(color, sort=False)) if color else [(y_title or y, rows)]
    dots = len(rows) <= MAX_DOTS
    legend_x = LEFT
    for i, (name, g) in enumerate(groups):
        c, label = COLORS[i % len(COLORS)], html.escape(str(name))
        g = g.sort_values(x)
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(g[x], g[y]))
        parts.append(f"<g class='st-series' data-series='{label}'><polyline points='{pts}' stroke='{c}'><title>{label}</title></polyline>")
        if dots or len(g) == 1:
            parts.extend(f"<circle cx='{px(a):.1f}' cy='{py(b):.1f}' r='2.5' fill='{c}'><title>{label}: {_fmt(b)} at {html.escape(x)} {_fmt(a)}</title></circle>"
                         for a, b in zip(g[x], g[y]))
        parts.append(f"</g><g class='st-legend'><rect x='{legend_x}' y='27' width='10' height='10' fill='{c}'/>"
                     f"<text x='{legend_x + 14}' y='36'>{label}</text></g>")
        legend_x += 24 + 7 * len(str(name))
    return (f"<div class='st-chart' data-points='{len(rows)}'><svg viewBox='0 0 {width} {H}' role='img' aria-label='{html.escape(title)}'>"
            + "".join(parts) + "</svg></div>")


CSS = """
.st-chart svg { width: 100%; height: auto; font: 11px sans-serif; fill: var(--body-text-color); }
.st-chart polyline { fill: none; stroke-width: 1.8; }
.st-chart .st-grid { stroke: var(--border-color-primary); stroke-width: 1; }
.st-chart .st-chart-title { font-size: 13px; font-weight: 600; }
.st-chart .st-chart-empty, .st-chart .st-axis-title { fill: var(--body-text-color-subdued); }
"""
