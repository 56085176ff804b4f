"""One self-contained HTML page: plotly.js inlined once, figures, tables; works offline."""

from __future__ import annotations

import dataclasses
import html

import plotly.io as pio
from plotly.offline import get_plotlyjs

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 24px 48px; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 8px; }
nav a { margin-right: 14px; }
h2 { margin-top: 36px; border-bottom: 1px solid #eee; }
p.note { color: #555; max-width: 980px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; position: sticky; top: 0; }
div.scroll { max-height: 560px; overflow: auto; }
code, pre { font-size: 12px; }
div.scroll td code { white-space: nowrap; }
pre { background: #f7f7f7; padding: 10px; overflow: auto; }
"""


@dataclasses.dataclass
class Section:
    anchor: str
    heading: str
    body: str  # HTML


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.heading)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p><nav>{nav}</nav></header>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.heading)}</h2>{section.body}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def figure(fig, div_id: str) -> str:
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def subheading(text: str) -> str:
    return f"<h3>{html.escape(text)}</h3>"


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def table(header: list[str], rows: list[list], scroll: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{markup}</div>' if scroll else markup


class Code(str):
    """A table cell shown as code (a command to copy)."""


def _cell(value) -> str:
    if isinstance(value, Code):
        return f"<td><code>{html.escape(value)}</code></td>"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"<td>{html.escape(str(value))}</td>"
    text = f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
    return f'<td class="num">{text}</td>'


def preformatted(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"
