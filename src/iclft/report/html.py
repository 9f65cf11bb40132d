"""A small, dependency-free HTML page builder: images inlined as base64 so the page opens offline."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:1.8em;border-bottom:1px solid #bbb}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em;margin:1em 0}
.finding{background:#eef5ff;border-left:4px solid #3573c9;padding:.5em 1em;margin:.6em 0}
.banner{background:#fde2d6;border:2px solid #D55E00;padding:.6em 1em;margin:1em 0;font-weight:600}
.warn{background:#fde2d6;border-left:4px solid #D55E00;padding:.6em 1em;margin:.6em 0}
.caveat{display:block;font-size:.85em;color:#7a2e00;margin-top:.3em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}code{background:#f4f4f4;padding:0 .2em}
"""


def esc(x) -> str:
    return html.escape(str(x))


def img(path: Path, alt: str = "") -> str:
    """The figure's SVG inlined (the page opens offline, alone, and the figure stays sharp at any zoom), linked
    with the 300 dpi PNG beside it when `iclft report --png` wrote one."""
    svg = Path(path).with_suffix(".svg")
    data = base64.b64encode(svg.read_bytes()).decode("ascii")
    files = [f for f in (svg, svg.with_suffix(".png")) if f.is_file()]
    link = " (" + ", ".join(f'<a href="{esc(f.parent.name + "/" + f.name)}">{f.suffix[1:].upper()}</a>'
                            for f in files) + ")"
    return (f'<figure><img alt="{esc(alt)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{esc(alt)}{link}</figcaption></figure>")


def small_run_banner(preset: str | list[str], n_seeds: int, size: str) -> str:
    """A banner for a quick (or otherwise small) run, on every page it has: its numbers exercise the pipeline.
    `preset`: the run's preset, or every preset of the runs a page compares (`n_seeds`: the fewest seeds)."""
    from iclft.metrics.stats import MIN_SEEDS

    presets = [preset] if isinstance(preset, str) else sorted(set(preset))
    if "quick" not in presets and n_seeds >= MIN_SEEDS:
        return ""
    what = ("Quick run" if presets == ["quick"] else "Small run" if len(presets) == 1
            else "Quick or small runs" if "quick" in presets else "Small runs")
    label = "preset" if len(presets) == 1 else "presets"
    return (f'<div class="banner">{what}: {label} {esc(", ".join(presets))}, {esc(size)} (a verdict needs ≥ '
            f"{MIN_SEEDS} seeds). Its numbers check the pipeline, not the papers — not for citation.</div>")


def index_link(out: Path) -> str:
    """A link from a study's page back to the page of the `run all` or sweep that holds it (none for a run of its
    own): the directory marks (rundir.ROOT_MARK) say which."""
    from iclft.rundir import ROOT_MARK

    out = Path(out).absolute()
    places = ((out.parent, "../", "run all", "report.html", "every study of this run"),
              (out.parent.parent, "../../", "sweep", "index.html", "every cell of this sweep"))
    for root, up, kind, page_name, what in places:
        mark = root / ROOT_MARK
        if mark.is_file() and mark.read_text(encoding="utf-8").strip() == kind:
            return f'<p class="up"><a href="{up}{page_name}">← {what}</a> (<code>{esc(root.name)}</code>)</p>'
    return ""


def warnings_section(warnings: list[str]) -> str:
    return "".join(f'<div class="warn">{esc(w)}</div>' for w in warnings)


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
    if m != m:  # e.g. Rec2FTP when FT-KV fixes no query: a number that does not exist, not a "nan" to read
        return "undefined"

    def f(v):
        return "nan" if v is None or v != v else f"{v:.{digits}f}"

    return f"{f(m)} [{f(lo)}, {f(hi)}]"


# ------------------------------------------------------------------------------------------- shared sections

VERDICT_CLASS = {"reproduced": "yes", "opposite": "opp", "inconclusive": "no", "not testable": "na",
                 "too few seeds to tell": "few"}
CSS += """
.v{font-weight:600;padding:0 .4em;border-radius:3px}.v.yes{background:#d7ecff;color:#0b4a8b}
.v.opp{background:#f6d5d0;color:#8a1c0c}.v.no{background:#f3e0c9;color:#7a3d00}.v.na{background:#e8e0f0;color:#4b2a6b}
.v.few{background:#eee;color:#555}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#3573c9}
.tok{display:inline-block;border:1px solid #bbb;border-radius:2px;padding:0 .15em;margin:1px;font:0.85em monospace;
background:#fafafa;white-space:pre}.prompt{margin:.3em 0 .8em;line-height:1.9}
table.text td,table.text th{text-align:left;vertical-align:top}
a.csv{font-size:.85em;margin-left:.6em}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
.scroll{overflow-x:auto}table.text td,table.text th{overflow-wrap:break-word}p.up{margin:-.6em 0 1em;font-size:.9em}
.about td,.about th{text-align:left}div.run{min-width:13em}.md table td,.md table th{text-align:left;vertical-align:top}
"""


def verdict_badge(v: str) -> str:
    from iclft.metrics.stats import verdict_kind

    return f'<span class="v {VERDICT_CLASS.get(verdict_kind(v), "few")}">{esc(v)}</span>'


def fmt_p(p) -> str:
    return "n/a" if p is None or p != p else f"{p:.3g}"


def headline_rows(headlines: list[dict]) -> list[list]:
    """Rows of (claim, this run, paper, effect and tests, verdict) — the effect with its interval first."""
    rows = []
    for h in headlines:
        t = h.get("test")
        if t:
            scale = " (Fisher z)" if t.get("scale") == "fisher_z" else ""
            # the effect is the mean paired difference across seeds with its t-interval (the test's own numbers);
            # "this run" beside it is the quantity itself with its quantity-aware interval
            tests = (f"effect{scale} (mean paired difference, t-interval) {fmt_ci(t['diff'])}, "
                     f"d<sub>z</sub> = {fmt_p(t['dz'])}; "
                     f"paired t p = {fmt_p(t['t_p'])} (Holm {fmt_p(h.get('p_holm'))}), "
                     f"Wilcoxon p = {fmt_p(t['wilcoxon_p'])}, n = {t['n']}")
        else:
            tests = (f"interval above {100 * h['threshold']:g} %?" if h.get("percent")
                     else f"interval above {h['threshold']:g}?")
        if h.get("sesoi"):
            sesoi = (f"{100 * h['sesoi']:.3g} points" if h.get("percent") and not t else
                     f"{h['sesoi']:.3g} (z of r = {math.tanh(h['sesoi']):.2g})" if t and t.get("scale") == "fisher_z"
                     else f"{h['sesoi']:.3g}")
            tests += f"; smallest effect of interest {sesoi}"
        rows.append([esc(h["claim"]), esc(h["metric"]) + "<br>" + esc(fmt_value(h)), esc(h["paper"]), tests,
                     verdict_cell(h)])
    return rows


def fmt_value(h: dict) -> str:
    """A headline's value with its interval, in the unit the paper prints (Rec2FTP in %)."""
    v = h["value"]
    if h.get("percent") and v and v.get("mean") is not None and v["mean"] == v["mean"]:
        v = {k: (x * 100 if isinstance(x, float) else x) for k, x in v.items() if k in ("mean", "ci_low", "ci_high")}
        return fmt_ci(v, 1) + " %"
    return fmt_ci(v)


def verdict_cell(h: dict) -> str:
    """The verdict, with the caveat that qualifies it (a tuning that barely changed the model)."""
    caveat = f'<span class="caveat">⚠ {esc(h["caveat"])}</span>' if h.get("caveat") else ""
    return verdict_badge(h["verdict"]) + caveat


def raw_table(header: list[str], rows: list[list]) -> str:
    """Like `table`, for header and body cells that are already HTML (text, so left-aligned); wide tables scroll
    inside the page instead of running past it."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="text"><tr>{head}</tr>{body}</table></div>'


def headlines_section(headlines: list[dict], multiplicity: str) -> str:
    table_html = raw_table(["claim", "this run (95% CI)", "paper", "effect, then tests", "verdict"],
                           headline_rows(headlines))
    seeds = []
    for h in headlines:
        vals = h["value"].get("per_seed") or []
        seeds.append([h["metric"], ", ".join("nan" if v != v else f"{v:.3f}" for v in vals), h["value"].get("method")])
    per_seed = ("<details><summary>per-seed values behind each headline</summary>"
                + table(["headline", "per-seed values (seed order)", "interval method"], seeds) + "</details>")
    return (f"<h2>Headline findings</h2>{table_html}<p><small>{esc(multiplicity)}.</small></p>{per_seed}")


def csv_table(out: Path, name: str, header: list[str], rows: list[list]) -> str:
    """A table, the same table as `tables/NAME.csv` beside the report, and an inline CSV download link."""
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    from iclft.rundir import atomic_write_text

    atomic_write_text(Path(out) / "tables" / f"{name}.csv", buf.getvalue())
    data = base64.b64encode(buf.getvalue().encode("utf-8")).decode("ascii")
    link = f'<a class="csv" download="{esc(name)}.csv" href="data:text/csv;base64,{data}">CSV</a>'
    return table(header, rows) + f"<p>{link} <small>(also <code>tables/{esc(name)}.csv</code>)</small></p>"


def prompt_examples(examples: dict) -> str:
    """Example prompts per setting as the model saw them: one box per token."""
    if not examples:
        return ""
    parts = ["<h3>Example prompts (tokenised, exactly as the model saw them)</h3>"]
    for setting, prompts in examples.items():
        parts.append(f"<p><b>{esc(setting)}</b></p>")
        for toks in prompts:
            parts.append('<div class="prompt">' + "".join(f'<span class="tok">{esc(t)}</span>' for t in toks)
                         + "</div>")
    return "".join(parts)


def methods_section(out: Path, spec, model_info: dict, interval_note: str) -> str:
    """Model, exact hyper-parameters and preset, example prompts, how intervals were made, files."""
    import json

    import yaml

    ex_path = Path(out) / "examples.json"
    examples = json.loads(ex_path.read_text(encoding="utf-8")) if ex_path.is_file() else {}
    sha = model_info.get("model_sha256")
    preset = getattr(spec, "preset", "default")
    model = (f"<p>Model <code>{esc(model_info.get('model'))}</code> ({esc(model_info.get('family'))}, "
             f"{model_info.get('n_layers')} layers, {model_info.get('n_params', 0):,} parameters, "
             f"{esc(model_info.get('dtype', getattr(spec, 'dtype', '')))}, attention "
             f"{esc(model_info.get('attn_implementation', getattr(spec, 'attn_implementation', '')))}); weights "
             f"SHA-256 <code>{esc(sha[:16] + '…' if sha else 'not hashed')}</code>. Preset "
             f"<b>{esc(preset)}</b>.</p>")
    spec_text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    write_metrics_page(Path(out))
    return ("<h2>Methods and data</h2>" + model
            + f"<details><summary>exact spec (spec.yaml)</summary><pre>{esc(spec_text)}</pre></details>"
            + f"<p>{esc(interval_note)}</p>" + prompt_examples(examples)
            + "<p>Files beside this page: <code>records.parquet</code> (raw per-trial numbers), "
              "<code>summary.json</code> (every interval with its per-seed values and method), "
              "<code>manifest.json</code>, <code>examples.json</code>, <code>tables/*.csv</code>, "
              "<code>figures/</code>, and <a href='metrics.html'>metrics.html</a>: every metric's definition "
              "(iclft's METRICS.md, shipped with the package).</p>")


METRICS_MD = Path(__file__).with_name("METRICS.md")


def write_metrics_page(out: Path) -> Path:
    """OUT/metrics.html: the package's metric definitions, so a report's definitions travel with it."""
    from iclft.rundir import atomic_write_text

    atomic_write_text(out / "metrics.html", metrics_html())
    return out / "metrics.html"


def metrics_html() -> str:
    """METRICS.md as a page: Markdown (CommonMark with tables; raw HTML in it is shown as text), its first heading
    the title, every heading an anchor (metrics.html#aggregation)."""
    import re

    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "typographer": False}).enable("table")
    text = METRICS_MD.read_text(encoding="utf-8")
    title, _, body = text.partition("\n") if text.startswith("# ") else ("# iclft metric definitions", "", text)
    tokens = md.parse(body)
    for tok, inline in zip(tokens, tokens[1:], strict=False):
        if tok.type == "heading_open":
            tok.attrSet("id", re.sub(r"[^a-z0-9]+", "-", inline.content.lower()).strip("-"))
    return page(title[2:].strip(), [f'<div class="md">{md.renderer.render(tokens, md.options, {})}</div>'])


INTERVALS = ("Intervals: 95%, across seeds, chosen per quantity (iclft.metrics.stats.QUANTITIES): proportions "
             "(accuracy, Rec2FTP) by the hull of a Wilson interval over all trials and a score interval of the "
             "between-seed variance; correlations per seed by Fisher z; cosines and other bounded means by a score "
             "interval whose seed spread shrinks toward the range's bounds (the t-interval far from them, always "
             "inside the range); unbounded quantities by a Student-t interval. Each seed draws its own "
             "demonstrations and its own test queries, so an interval covers the population mean over "
             "demonstration draws and queries, not only the queries measured (coverage: benchmarks/coverage.py)")
