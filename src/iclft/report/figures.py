"""Matplotlib helpers shared by the study reports (Agg backend: no display needed)."""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from iclft.rundir import atomic_write_bytes  # noqa: E402

# One colour-blind safe palette (Okabe & Ito 2008) with one meaning per setting in every figure of every report.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "grey": "#999999"}
COLORS = {
    "zsl": OKABE_ITO["black"], "icl": OKABE_ITO["blue"], "it": OKABE_ITO["vermillion"], "sl": OKABE_ITO["orange"],
    "ft_kv": OKABE_ITO["green"], "ft_full": OKABE_ITO["green"], "ft_lora": OKABE_ITO["purple"],
    "random": OKABE_ITO["grey"], "control": OKABE_ITO["sky"], "chance": OKABE_ITO["grey"],
}
# svg.hashsalt: the same figure gives the same SVG bytes (clip-path ids are hashes), so a re-render is comparable
plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
                     "xtick.labelsize": 9, "ytick.labelsize": 9, "svg.fonttype": "none", "figure.dpi": 100,
                     "svg.hashsalt": "iclft"})
DPI = 300
_PNG = False  # also write 300 dpi PNGs (`iclft report --png`); the page shows the SVG


@contextmanager
def png_too(on: bool = True):
    """While open (and `on`), save() also writes each figure as a PNG at 300 dpi beside its SVG, for slides and
    journals that want raster files: drawing it costs more than the SVG, so reports leave it out unless asked."""
    global _PNG
    before, _PNG = _PNG, on
    try:
        yield
    finally:
        _PNG = before


def draw_all(tasks: list[tuple], first: tuple[int, ...] = ()) -> list:
    """[fn(*args) for fn, *args in tasks], drawn side by side in forked processes, one per core: a report's figures
    are independent and drawing them is most of its time. Each `fn` saves its figure and returns what save()
    returned (or None). `first`: indices of the slowest tasks, started first so that the cores finish together.
    In order, in this process, on one core, where fork is missing, or when other threads run here (a Ray driver):
    a forked copy of a threaded process may deadlock."""
    import multiprocessing
    import os
    import threading
    from concurrent.futures import ProcessPoolExecutor

    global _TASKS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(len(tasks), cores)
    if n <= 1 or "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return [fn(*args) for fn, *args in tasks]
    order = [*first, *(i for i in range(len(tasks)) if i not in first)]
    _TASKS = tasks  # the children inherit the tasks (records included) when forked: nothing is pickled but an index
    try:
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
            done = dict(zip(order, pool.map(_draw, order), strict=True))
    finally:
        _TASKS = None
    return [done[i] for i in range(len(tasks))]


_TASKS: list[tuple] | None = None


def _draw(i: int):
    fn, *args = _TASKS[i]
    return fn(*args)


def unlabelled(fig) -> list[str]:
    """Axes of `fig` without an x or y label (a colour bar needs its one label): empty when all are labelled."""
    bad = []
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        name = ax.get_title() or f"axes {i}"
        if hasattr(ax, "_colorbar"):
            if not (ax.get_ylabel() or ax.get_xlabel()):
                bad.append(f"{name}: colour bar")
        elif not ax.get_xlabel() or not ax.get_ylabel():
            bad.append(name)
    return bad


def save(fig, path: Path) -> Path:
    """The figure as FIGURE.svg (whatever `path`'s suffix): the report page shows it and it prints at any size;
    inside png_too() also a 300 dpi FIGURE.png. Written atomically; every axis must be labelled. Returns the SVG's
    path. A PNG left from an earlier render is removed unless written again, so none is older than its SVG."""
    bad = unlabelled(fig)
    if bad:
        plt.close(fig)
        raise ValueError(f"figure {Path(path).name}: unlabelled axes: {', '.join(bad)}")
    svg = Path(path).with_suffix(".svg")
    svg.parent.mkdir(parents=True, exist_ok=True)
    if not fig.get_layout_engine():
        import warnings

        with warnings.catch_warnings():  # tight_layout warns on axes it cannot fit; saving still works
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
    # no timestamp in the SVG: the same figure, the same bytes; dpi: the resolution of its embedded heatmap images
    formats = [("svg", {"metadata": {"Date": None}})]
    if _PNG:
        formats.append(("png", {"pil_kwargs": {"compress_level": 1}}))
    else:
        svg.with_suffix(".png").unlink(missing_ok=True)
    for fmt, extra in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", **extra)
        atomic_write_bytes(svg.with_suffix("." + fmt), buf.getvalue())  # a unique temporary name, then a rename
    plt.close(fig)
    return svg


def band(ax, x, d: dict, label: str, metric: str | None = None, **kw):
    """Mean line with its 95% CI band from a per_layer_interval dict; with `metric`, the band is clipped to the
    metric's range (an interval never runs past a cosine's ±1 or below an accuracy's 0)."""
    m = np.asarray(d["mean"], float)
    ax.plot(x, m, marker="o", ms=3, label=label, **kw)
    lo, hi = np.asarray(d["ci_low"], float), np.asarray(d["ci_high"], float)
    if metric is not None:
        lo, hi = _clip(lo, metric), _clip(hi, metric)
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, alpha=0.2, color=kw.get("color"), lw=0)


def errbar(ax, x, dicts: list[dict], label: str, metric: str | None = None, **kw):
    m = np.array([d["mean"] for d in dicts], float)
    lo = np.array([d["ci_low"] for d in dicts], float)
    hi = np.array([d["ci_high"] for d in dicts], float)
    if metric is not None:
        lo, hi = _clip(lo, metric), _clip(hi, metric)
    yerr = np.vstack([np.nan_to_num(np.maximum(m - lo, 0)), np.nan_to_num(np.maximum(hi - m, 0))])
    ax.errorbar(x, m, yerr=yerr, marker="o", capsize=3, label=label, **kw)


def _clip(v: np.ndarray, metric: str) -> np.ndarray:
    from iclft.metrics.stats import quantity

    q = quantity(metric)
    return np.clip(v, q.low, q.high)


def clamp_ylim(ax, metric: str, pad: float = 0.03) -> None:
    """Keep the y-axis inside the metric's range (a cosine axis never runs past ±1), with a small margin."""
    from iclft.metrics.stats import quantity

    q = quantity(metric)
    lo, hi = ax.get_ylim()
    span = (q.high - q.low) * pad if np.isfinite(q.high - q.low) else 0.0
    ax.set_ylim(max(lo, q.low - span), min(hi, q.high + span))
