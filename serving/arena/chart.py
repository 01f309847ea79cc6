"""Leaderboard charts as inline SVG, drawn on the server: no JavaScript, no downloads (the page works offline).

``ratings_chart``: one row per model, the Bradley-Terry rating (dot) with its bootstrap interval (bar) and the Elo
rating (diamond). ``elo_history_chart``: each model's Elo rating after every vote.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

from serving.arena.ratings import Standing

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_FONT = 'font-family="sans-serif" font-size="12"'


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, num_ticks: int = 6) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten)."""
    span = max(high - low, 1e-9)
    raw = span / max(num_ticks - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _axis(low: float, high: float, start: float, length: float):
    """Tick values and a function from value to pixel along an axis of ``length`` pixels from ``start``."""
    ticks = nice_ticks(low, high)
    lo, hi = ticks[0], ticks[-1]

    def place(value: float) -> float:
        return start + (value - lo) / (hi - lo) * length

    return ticks, place


def ratings_chart(
    standings: Sequence[Standing], names: Sequence[str], *, initial_rating: float, width: int = 720
) -> str:
    """Bradley-Terry ratings with intervals and Elo ratings, one row per model in leaderboard order; a model's
    colour is that of its place in ``names`` (as in ``elo_history_chart``)."""
    label_width, right_pad, top, row_height = 170, 20, 34, 30
    height = top + row_height * len(standings) + 40
    values = [initial_rating]
    for standing in standings:
        values += [standing.bt_rating, standing.elo]
        values += [v for v in (standing.ci_low, standing.ci_high) if v is not None]
    ticks, place = _axis(min(values) - 5, max(values) + 5, label_width, width - label_width - right_pad)
    bottom = top + row_height * len(standings)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="ratings-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="ratings chart">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{label_width}" y="16" {_FONT} font-weight="bold">Bradley-Terry rating (dot, bar: interval) '
        f"and Elo (diamond)</text>",
    ]
    for tick in ticks:
        x = place(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" {_FONT} text-anchor="middle">{tick:g}</text>')
    x = place(initial_rating)
    parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="#999" stroke-dasharray="4 3"/>')
    for row, standing in enumerate(standings):
        y = top + row_height * row + row_height / 2
        fill = color(list(names).index(standing.name))
        parts.append(
            f'<text x="{label_width - 10}" y="{y + 4:.1f}" {_FONT} text-anchor="end">{html.escape(standing.name)}</text>'
        )
        if standing.ci_low is not None and standing.ci_high is not None:
            x1, x2 = place(standing.ci_low), place(standing.ci_high)
            parts.append(
                f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" stroke="{fill}" stroke-width="6" '
                'stroke-opacity="0.35" stroke-linecap="round"/>'
            )
        parts.append(f'<circle cx="{place(standing.bt_rating):.1f}" cy="{y:.1f}" r="6" fill="{fill}"/>')
        ex = place(standing.elo)
        parts.append(
            f'<path d="M {ex:.1f} {y - 7:.1f} L {ex + 6:.1f} {y:.1f} L {ex:.1f} {y + 7:.1f} L {ex - 6:.1f} {y:.1f} Z" '
            f'fill="white" stroke="{fill}" stroke-width="2"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def elo_history_chart(names: Sequence[str], history: np.ndarray, *, width: int = 720, height: int = 300) -> str:
    """Lines of Elo rating (``history``: ``[num_votes + 1, num_models]``) against the number of votes."""
    left, right_pad, top, bottom_pad, legend_width = 60, 20, 30, 40, 160
    plot_width = width - left - right_pad - legend_width
    plot_height = height - top - bottom_pad
    num_votes = history.shape[0] - 1
    # At most ~300 points a line: enough for the eye, small for the page.
    keep = np.unique(np.linspace(0, num_votes, min(num_votes + 1, 300)).round().astype(int))
    x_ticks, place_x = _axis(0, max(num_votes, 1), left, plot_width)
    y_ticks, place_y = _axis(float(history.min()) - 2, float(history.max()) + 2, 0, plot_height)
    x_ticks = [tick for tick in x_ticks if tick == int(tick)]

    def y_pixel(value: float) -> float:
        return top + plot_height - place_y(value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="elo-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Elo history chart">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="16" {_FONT} font-weight="bold">Elo rating after each vote</text>',
    ]
    for tick in y_ticks:
        y = y_pixel(tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_width}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" {_FONT} text-anchor="end">{tick:g}</text>')
    for tick in x_ticks:
        x = place_x(tick)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_height + 16}" {_FONT} text-anchor="middle">{int(tick)}</text>')
    parts.append(f'<text x="{left + plot_width / 2:.1f}" y="{height - 6}" {_FONT} text-anchor="middle">votes</text>')
    for index, name in enumerate(names):
        points = " ".join(f"{place_x(t):.1f},{y_pixel(history[t, index]):.1f}" for t in keep)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color(index)}" stroke-width="2"/>')
        y = top + 14 + 18 * index
        x = left + plot_width + 16
        parts.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{color(index)}" stroke-width="3"/>'
        )
        parts.append(f'<text x="{x + 24}" y="{y}" {_FONT}>{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
