"""The sweep report as one self-contained HTML file: styles inline, pictures as base64 PNGs, so it
can be mailed, attached to a ticket or opened from a cluster's scratch dir as is."""

from __future__ import annotations

import base64
from html import escape

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #e6f4e6; font-weight: 600; }
tr.tied td { background: #f4f9e6; }  /* not distinguishable from the best set-up */
tr.failed td { background: #fbe9e9; }
tr.running td, tr.interrupted td, tr.not.started td, tr.missing td { color: #888; font-style: italic; }
td.error { white-space: normal; max-width: 40em; }
.scroll { overflow-x: auto; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
/* validation overlays are small (a few crops): show them large, with crisp pixels */
img.overlay { width: min(100%, 900px); image-rendering: pixelated; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px; }
"""


def html_table(table: pd.DataFrame, statuses: list[str], numeric: set[str],
               tied: list[bool] | None = None) -> str:
    """``table`` (already formatted as strings) as an HTML table; each row gets its status as CSS
    class, the first completed row ``best``, rows flagged in ``tied`` ``tied``."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    rows, best_seen = [], False
    tied = tied or [False] * len(statuses)
    for values, status, is_tied in zip(table.itertuples(index=False), statuses, tied, strict=True):
        classes = [status, *(["tied"] if is_tied else [])]
        if status == "completed" and not best_seen:  # rows come ranked: the first one is best
            classes.append("best")
            best_seen = True
        cells = "".join(
            f'<td class="{"num" if column in numeric else "error" if column == "error" else ""}">'
            f"{escape(str(value))}</td>"
            for column, value in zip(table.columns, values, strict=True))
        rows.append(f'<tr class="{" ".join(classes)}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def image_tag(png: bytes, alt: str, css_class: str = "") -> str:
    """An ``<img>`` holding the PNG itself (base64 data URI)."""
    data = base64.b64encode(png).decode()
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def render_page(title: str, intro: list[str], table: str,
                figures: list[tuple[str, bytes, str]], failures: list[tuple[str, str, str]]) -> str:
    """The whole page: ``intro`` lines (plain text), the ``table`` HTML, ``figures`` as
    (caption, PNG bytes, CSS class: plot | overlay), and ``failures`` as (job, error, traceback),
    tracebacks collapsed."""
    parts = [f"<h1>{escape(title)}</h1>", *(f"<p>{escape(line)}</p>" for line in intro),
             "<h2>Leaderboard</h2>", f'<div class="scroll">{table}</div>']
    for caption, png, css_class in figures:
        parts.append(f"<figure>{image_tag(png, caption, css_class)}"
                     f"<figcaption>{escape(caption)}</figcaption></figure>")
    if failures:
        parts.append("<h2>Failed jobs</h2>")
        for job, error, trace in failures:
            parts.append(f"<h3>{escape(job)}</h3><p>{escape(error)}</p>")
            if trace:
                parts.append(f"<details><summary>traceback</summary><pre>{escape(trace)}</pre>"
                             "</details>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")
