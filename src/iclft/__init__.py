"""iclft: does in-context learning change a language model the way fine-tuning does?

From Python (a notebook), the same runs as the `iclft` command line:

    run = iclft.run("dual", out="runs/dual", quick=True)   # `iclft run dual --quick --out runs/dual`
    run = iclft.load("runs/dual")                           # a finished run directory, checksums verified
    run.records, run.summary, run.headlines, run.spec, run.manifest, run.report, run.figures
    cache = iclft.capture("builtin", ["The movie was great."], sites=["resid_post"])   # activations

Bad input raises `iclft.UserError` with the message the command line prints.
"""

import contextlib as _contextlib

__version__ = "0.1.0"

__all__ = ["Run", "UserError", "capture", "load", "run"]


class UserError(Exception):
    """Bad input from the user: the CLI prints one line and exits with code 2."""


def quiet_libraries() -> None:
    """transformers' deprecation notices about its own internals (e.g. `past_key_values`), printed once per
    unit, say nothing a user can act on: silence them (CLI and worker processes)."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # unlabelled "Loading weights" bars: the CLI says what it loads
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.nn\.modules\.module")
    warnings.filterwarnings("ignore", message=r".*past_key_values.*deprecated", category=FutureWarning)


@_contextlib.contextmanager
def quietly():
    """`quiet_libraries()` for the length of an API call, then the caller's own settings back (a notebook's
    transformers verbosity, progress bars and warning filters are its user's)."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        quiet_libraries()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def __getattr__(name: str):
    # Imported on first use: `import iclft` (every worker process, the CLI) stays light.
    if name in ("run", "load", "Run"):
        from iclft import api

        return getattr(api, name)
    if name == "capture":  # the subpackage is itself callable: iclft.capture(model, prompts, sites=...)
        import importlib

        return importlib.import_module("iclft.capture")
    raise AttributeError(f"module 'iclft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
