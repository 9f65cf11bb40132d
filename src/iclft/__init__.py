"""iclft: does in-context learning change a language model the way fine-tuning does?"""

__version__ = "0.1.0"


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
