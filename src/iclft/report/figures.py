"""Matplotlib helpers shared by the study reports (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def band(ax, x, d: dict, label: str, **kw):
    """Mean line with its 95% CI band from a per_layer_interval dict."""
    m = np.asarray(d["mean"], float)
    ax.plot(x, m, marker="o", ms=3, label=label, **kw)
    lo, hi = np.asarray(d["ci_low"], float), np.asarray(d["ci_high"], float)
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, alpha=0.2, **kw)


def errbar(ax, x, dicts: list[dict], label: str, **kw):
    m = np.array([d["mean"] for d in dicts], float)
    lo = np.array([d["ci_low"] for d in dicts], float)
    hi = np.array([d["ci_high"] for d in dicts], float)
    yerr = np.vstack([np.nan_to_num(m - lo), np.nan_to_num(hi - m)])
    ax.errorbar(x, m, yerr=yerr, marker="o", capsize=3, label=label, **kw)


def clamp_ylim(ax, metric: str, pad: float = 0.03) -> None:
    """Keep the y-axis inside the metric's range (a cosine axis never runs past ±1), with a small margin."""
    from iclft.metrics.stats import quantity

    q = quantity(metric)
    lo, hi = ax.get_ylim()
    span = (q.high - q.low) * pad if np.isfinite(q.high - q.low) else 0.0
    ax.set_ylim(max(lo, q.low - span), min(hi, q.high + span))
