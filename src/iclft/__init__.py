"""iclft: does in-context learning change a language model the way fine-tuning does?"""

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input from the user: the CLI prints one line and exits with code 2."""
