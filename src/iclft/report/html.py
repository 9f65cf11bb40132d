"""A small, dependency-free HTML page builder: images inlined as base64 so the page opens offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:1.8em;border-bottom:1px solid #bbb}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em;margin:1em 0}
.finding{background:#eef5ff;border-left:4px solid #3573c9;padding:.5em 1em;margin:.6em 0}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}code{background:#f4f4f4;padding:0 .2em}
"""


def esc(x) -> str:
    return html.escape(str(x))


def img(path: Path, alt: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(alt)}</figcaption></figure>")


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def stand_in_note(about: str) -> str:
    return ('<div class="note"><b>Stand-in model.</b> No pretrained built-in model is shipped in this install, so '
            '"builtin" is a small <i>randomly initialised</i> Llama. Its numbers exercise the pipeline and mean '
            f"nothing about {esc(about)}.</div>")


def page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{''.join(parts)}</body></html>")


def fmt_ci(d: dict, digits: int = 3) -> str:
    """'mean [low, high]' from a t_interval dict."""
    if d is None or d.get("mean") is None:
        return "n/a"
    m, lo, hi = d.get("mean"), d.get("ci_low"), d.get("ci_high")

    def f(v):
        return "nan" if v is None or v != v else f"{v:.{digits}f}"

    return f"{f(m)} [{f(lo)}, {f(hi)}]"
