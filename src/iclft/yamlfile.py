"""Reading a user's YAML file: `yaml.safe_load`, but strict. A key given twice is an error (PyYAML keeps the last
one silently, so a spec could say one thing and run another), and every way the file can be unreadable is one
`UserError` line."""

from __future__ import annotations

from pathlib import Path

import yaml

from iclft import UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)  # merge keys (<<) first: overriding a merged key is allowed, as YAML says
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def loads(text: str):
    """Parse YAML text strictly (duplicate keys raise `yaml.YAMLError`)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path, what: str = "YAML file"):
    """The parsed content of `path`; a missing, unreadable, non-UTF-8 or malformed file (or a duplicate key) is one
    UserError naming `what` and the place."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {str(path)!r} is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return loads(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"malformed YAML in {str(path)!r}{where}: {getattr(exc, 'problem', exc)}") from None
