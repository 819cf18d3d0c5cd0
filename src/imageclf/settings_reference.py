"""Every environment variable imageclf/settings.py reads, with its default and description, read from its source.

imageclf/settings.py declares each setting once: `NAME: type = _int("NAME", default)` under a `#:` comment that
describes it. This module finds them without importing anything of the service, so `imageclf run --help`
works in a client-only install and the documentation's Configuration page is generated from the same lines
(docs/hooks.py).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

_READERS = {"_str", "_int", "_float"}


@dataclass(frozen=True)
class Setting:
    name: str  # the environment variable
    default: str  # as written in imageclf/settings.py ("" for an empty string)
    description: str  # its `#:` comment, joined into one paragraph
    line: int


def _settings_source() -> str:
    """imageclf/settings.py as text: the package's own file, beside this one, whatever else `settings` names."""
    return Path(__file__).with_name("settings.py").read_text()


def _variables_read(node: ast.AST) -> list[tuple[str, ast.expr | None]]:
    """(variable, default expression) of every `_str/_int/_float("X", d)` or `os.environ.get("X", d)` in
    `node`, in source order."""
    found = []
    for call in ast.walk(node):
        if not (isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant)
                and isinstance(call.args[0].value, str)):
            continue
        function = call.func
        named = isinstance(function, ast.Name) and function.id in _READERS
        environ = (isinstance(function, ast.Attribute) and function.attr == "get"
                   and ast.unparse(function.value) == "os.environ")
        if named or environ:
            found.append((call.args[0].value, call.args[1] if len(call.args) > 1 else None))
    return sorted(found, key=lambda item: (item[1].lineno, item[1].col_offset) if item[1] else (0, 0))


def _shown(default: ast.expr | None) -> str:
    """The default as a reader wants it: a literal's value, a path as a path, anything computed as written."""
    if default is None:
        return ""
    try:
        return str(ast.literal_eval(default))
    except ValueError:
        pass
    if isinstance(default, ast.Call) and ast.unparse(default.func) == "os.path.join":
        return os.path.join(*(str(ast.literal_eval(arg)) if isinstance(arg, ast.Constant) else "$" + ast.unparse(arg)
                              for arg in default.args))
    return ast.unparse(default)


def settings_reference(source: str | None = None) -> list[Setting]:
    """Every variable imageclf/settings.py reads, first come first listed (a variable read again later, such as
    BATCH_SIZE for BATCH_SIZE_AUTO, keeps its first entry)."""
    source = _settings_source() if source is None else source
    lines = source.splitlines()
    found: dict[str, Setting] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        comment: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].startswith("#:"):
            comment.insert(0, lines[row][2:].strip())
            row -= 1
        for name, default in _variables_read(node):
            if name not in found:
                found[name] = Setting(name, _shown(default), " ".join(comment), node.lineno)
    return list(found.values())
