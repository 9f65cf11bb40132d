"""Tasks read through `datasets` from the hub: only when the user is online (or has a cached copy)."""

from __future__ import annotations

import logging

from iclft import UserError


def load_hub_dataset(*args, **kwargs):
    try:
        import datasets
    except ImportError:
        raise UserError("this task needs the `datasets` package: pip install 'iclft[hub]'") from None
    # Offline, huggingface_hub logs every retry of every request: the failure is told once, below.
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - offline shows up as many exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load dataset {'/'.join(args)!r} (offline? no cached copy?): {first}") from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
