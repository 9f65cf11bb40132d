"""Report rendering: each study's report as iclft writes it (SVG figures drawn side by side, SVG on the page) vs the
way it replaced (in order, a 300 dpi PNG and an SVG per figure, the PNG shrunk for the page), side by side on copies
of finished runs, alternating, best of --repeat. Wall time counts (the parallel figures are the point); CPU time
(this process and its children) is shown beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_report.py RUN_ALL_DIR [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

from iclft import rundir
from iclft.registry import STUDIES
from iclft.report import convergence, dual_view, html, implicit
from iclft.report.figures import DPI, plt, unlabelled

MODULES = (convergence, dual_view, implicit)


def old_save(fig, path: Path) -> Path:
    """save() before: a 300 dpi PNG and an SVG (with its 300 dpi heatmap rasters)."""
    assert not unlabelled(fig)
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not fig.get_layout_engine():
        fig.tight_layout()
    for suffix, extra in ((".png", {"pil_kwargs": {"compress_level": 1}}), (".svg", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], dpi=DPI, bbox_inches="tight", **extra)
        rundir.atomic_write_bytes(path.with_suffix(suffix), buf.getvalue())
    plt.close(fig)
    return path


def old_img(path: Path, alt: str = "") -> str:
    """html.img() before: the 300 dpi PNG shrunk to screen size by a box filter, inlined."""
    from PIL import Image

    with Image.open(path) as im:
        factor = -(-im.width // 1300)
        buf = io.BytesIO()
        im.reduce(max(factor, 1)).save(buf, format="PNG", compress_level=6)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img alt="{html.esc(alt)}" src="data:image/png;base64,{data}"></figure>'


def in_order(tasks: list[tuple], first: tuple[int, ...] = ()) -> list:
    return [fn(*args) for fn, *args in tasks]


@contextmanager
def the_old_way():
    with ExitStack() as stack:
        for mod in MODULES:
            stack.enter_context(mock.patch.object(mod, "save", old_save))
            stack.enter_context(mock.patch.object(mod, "draw_all", in_order))
        real = plt.Axes.imshow  # the heatmaps as before: resampled, not one SVG pixel per cell
        stack.enter_context(mock.patch.object(plt.Axes, "imshow", lambda self, *a, **k: real(
            self, *a, **{key: v for key, v in k.items() if key != "interpolation"})))
        stack.enter_context(mock.patch.object(html, "img", old_img))
        yield


def _cpu() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_all", type=Path, help="a finished `iclft run all` directory (it is copied, not changed)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, study in STUDIES.items():
            src = args.run_all / name
            if not (src / "summary.json").is_file():
                continue
            summary, records, spec_data, info = rundir.read_finished(src)
            spec = study.spec(**spec_data)
            best = {"before": (float("inf"), 0.0), "now": (float("inf"), 0.0)}
            for _ in range(args.repeat):
                for way in ("before", "now"):
                    out = Path(tmp) / f"{name}-{way}"
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.copytree(src, out, ignore=shutil.ignore_patterns(".lock", "figures"))
                    with the_old_way() if way == "before" else ExitStack():
                        w, c = time.perf_counter(), _cpu()
                        study.render(out, records, summary, spec, info)
                        wall, cpu = time.perf_counter() - w, _cpu() - c
                    best[way] = min(best[way], (wall, cpu))
            page = {way: (Path(tmp) / f"{name}-{way}" / "report.html").stat().st_size for way in best}
            rows.append((name, *best["before"], *best["now"], page["before"], page["now"]))
    print(f"{'study':12s} {'before wall':>11s} {'cpu':>6s} {'now wall':>9s} {'cpu':>6s} {'speed-up':>8s} "
          f"{'page before':>11s} {'page now':>9s}")
    for name, bw, bc, nw, nc, bp, np_ in rows:
        print(f"{name:12s} {bw:10.2f}s {bc:5.1f}s {nw:8.2f}s {nc:5.1f}s {bw / nw:7.2f}x {bp / 1e6:9.2f}MB "
              f"{np_ / 1e6:7.2f}MB")


if __name__ == "__main__":
    main()
