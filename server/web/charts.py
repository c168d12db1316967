"""Small inline-SVG charts rendered on the server: no JavaScript library, no CDN.

Colours come from CSS classes (``seg-<status>``, ``bar``, ``line``) so the charts follow
the light/dark theme in app.css.
"""
from __future__ import annotations

from typing import Any, Sequence

from markupsafe import Markup, escape

from server.core.models import ExecutionStatus as S

# Stacking order of the status bars: outcomes first, then what is still on its way.
STATUS_ORDER = (S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.LOST, S.CANCELLED, S.REJECTED, S.EXPIRED,
                S.RUNNING, S.QUEUED, S.WAITING_APPROVAL)


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def human_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 60:
        return f"{_fmt(value)} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def stacked_bar(counts: dict[str, int], *, width: int = 600, height: int = 18, label: str = "") -> Markup:
    """One horizontal bar split by status (for executions by status)."""
    total = sum(counts.values())
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">']
    if not total:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" rx="4" class="seg-other" opacity=".25"/>')
    x = 0.0
    for status in list(STATUS_ORDER) + sorted(set(counts) - set(STATUS_ORDER)):
        n = counts.get(status, 0)
        if not n:
            continue
        w = width * n / total
        parts.append(
            f'<rect x="{x:.2f}" y="0" width="{max(w, 1):.2f}" height="{height}" class="seg-{escape(status)}">'
            f"<title>{escape(status)}: {n}</title></rect>"
        )
        x += w
    parts.append("</svg>")
    return Markup("".join(parts))


def runs_per_day(points: Sequence[dict[str, Any]], *, width: int = 640, height: int = 170) -> Markup:
    """Vertical bars per day: runs, with the failed part in red."""
    pad_l, pad_b, pad_t = 34, 20, 8
    inner_w, inner_h = width - pad_l - 4, height - pad_b - pad_t
    top = max([p["runs"] for p in points] + [1])
    step = inner_w / max(len(points), 1)
    bar_w = max(step * 0.7, 1)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Executions per day">']
    for frac in (0, 0.5, 1):
        if frac == 0.5 and top % 2:
            continue  # only whole numbers of runs on the axis
        y = pad_t + inner_h * (1 - frac)
        out.append(f'<line class="grid-line" x1="{pad_l}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end">{int(top * frac)}</text>')
    label_every = max(1, len(points) // 8)
    for i, p in enumerate(points):
        x = pad_l + i * step + (step - bar_w) / 2
        h_all = inner_h * p["runs"] / top
        h_bad = inner_h * p.get("failed", 0) / top
        base = pad_t + inner_h
        tip = f'{escape(p["day"])}: {p["runs"]} runs, {p.get("failed", 0)} failed'
        out.append(f'<g><title>{tip}</title>')
        if h_all:
            out.append(f'<rect class="bar seg-succeeded" x="{x:.1f}" y="{base - h_all:.1f}" width="{bar_w:.1f}" height="{h_all - h_bad:.1f}"/>')
        if h_bad:
            out.append(f'<rect class="bar bad" x="{x:.1f}" y="{base - h_bad:.1f}" width="{bar_w:.1f}" height="{h_bad:.1f}"/>')
        out.append(f'<rect x="{pad_l + i * step:.1f}" y="{pad_t}" width="{step:.1f}" height="{inner_h}" fill="transparent"/></g>')
        if i % label_every == 0:
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 5}" text-anchor="middle">{escape(p["day"][5:])}</text>')
    out.append(f'<line class="axis" x1="{pad_l}" x2="{width - 4}" y1="{pad_t + inner_h}" y2="{pad_t + inner_h}"/>')
    out.append("</svg>")
    return Markup("".join(out))


def duration_line(points: Sequence[dict[str, Any]], *, key: str = "avg_s", width: int = 640, height: int = 170) -> Markup:
    """Mean duration per day as a line (days without finished runs leave a gap)."""
    pad_l, pad_b, pad_t = 48, 20, 8
    inner_w, inner_h = width - pad_l - 4, height - pad_b - pad_t
    values = [p.get(key) for p in points]
    top = max([v for v in values if v is not None] + [1.0])
    step = inner_w / max(len(points) - 1, 1)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Mean duration per day">']
    for frac in (0, 0.5, 1):
        y = pad_t + inner_h * (1 - frac)
        out.append(f'<line class="grid-line" x1="{pad_l}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(human_seconds(top * frac))}</text>')
    segment: list[str] = []
    segments: list[list[str]] = []
    label_every = max(1, len(points) // 8)
    for i, (p, v) in enumerate(zip(points, values, strict=True)):
        x = pad_l + i * step
        if v is None:
            if segment:
                segments.append(segment)
            segment = []
        else:
            y = pad_t + inner_h * (1 - v / top)
            segment.append(f"{x:.1f},{y:.1f}")
            out.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5"><title>{escape(p["day"])}: '
                       f'{escape(human_seconds(v))}</title></circle>')
        if i % label_every == 0:
            out.append(f'<text x="{x:.1f}" y="{height - 5}" text-anchor="middle">{escape(p["day"][5:])}</text>')
    if segment:
        segments.append(segment)
    for seg in segments:
        if len(seg) > 1:
            out.append(f'<polyline class="line" points="{" ".join(seg)}"/>')
    out.append(f'<line class="axis" x1="{pad_l}" x2="{width - 4}" y1="{pad_t + inner_h}" y2="{pad_t + inner_h}"/>')
    out.append("</svg>")
    return Markup("".join(out))


def legend(statuses: Sequence[str]) -> Markup:
    items = "".join(f'<span><i class="seg-{escape(s)}"></i>{escape(s.replace("_", " "))}</span>' for s in statuses)
    return Markup(f'<div class="legend">{items}</div>')
