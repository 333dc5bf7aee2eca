"""The WIT world as data: where it lives and which functions it declares.

``pie/wit/inferlet.wit`` is the single definition of the host API. componentize-py generates
the inferlet side's bindings from it; the host side is checked against it here, so a function
added to one side and not the other fails at start-up with a message that names it.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

WIT_DIR = Path(__file__).parent / "wit"
WIT_FILE = WIT_DIR / "inferlet.wit"
WORLD = "inferlet"


class WitMismatchError(RuntimeError):
    """The host's implementation and the WIT world disagree."""


@cache
def package() -> tuple[str, str]:
    """(name, version) of the WIT package, e.g. ("pie:inferlet", "0.1.0")."""
    m = re.search(r"^package\s+([\w:-]+)@([\w.]+)\s*;", WIT_FILE.read_text(), re.M)
    if m is None:
        raise WitMismatchError(f"{WIT_FILE}: no versioned `package name@x.y.z;` line")
    return m.group(1), m.group(2)


@cache
def imported_functions() -> dict[str, tuple[str, ...]]:
    """Interface name -> the function names it declares, in file order."""
    text = re.sub(r"//[^\n]*", "", WIT_FILE.read_text())
    out: dict[str, tuple[str, ...]] = {}
    for m in re.finditer(r"interface\s+([\w-]+)\s*\{(.*?)\n\}", text, re.S):
        out[m.group(1)] = tuple(re.findall(r"^\s*([\w-]+)\s*:\s*func\b", m.group(2), re.M))
    return out


def instance_name(interface: str) -> str:
    """The name a component imports an interface under: ``pie:inferlet/runtime@0.1.0``."""
    name, version = package()
    return f"{name}/{interface}@{version}"


def check_host(implemented: dict[str, set[str]]) -> None:
    """Raise :class:`WitMismatchError` unless the host implements exactly the WIT's functions."""
    declared = {k: set(v) for k, v in imported_functions().items()}
    problems = []
    for iface in sorted(set(declared) | set(implemented)):
        missing = declared.get(iface, set()) - implemented.get(iface, set())
        extra = implemented.get(iface, set()) - declared.get(iface, set())
        problems += [f"{iface}.{f} is declared in {WIT_FILE.name} but not implemented" for f in sorted(missing)]
        problems += [f"{iface}.{f} is implemented but not declared in {WIT_FILE.name}" for f in sorted(extra)]
    if problems:
        raise WitMismatchError("; ".join(problems))
