"""The text forms chiron writes and checks: canonical JSON, safe member names, bounded JSON parsing, and
strings made safe to print."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

MAX_NAME = 1024

# Characters that change how a terminal or a text view shows what follows them: C0 and C1 controls
# (ESC starts terminal escape sequences), DEL, invisible format characters including every
# bidirectional control (U+202A-U+202E, U+2066-U+2069, U+200E/U+200F, U+061C), lone surrogates
# (which cannot even be encoded), and the line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


_PLAIN_ASCII = re.compile(r"[ -~]*")  # the usual name: checked by one regex (verify checks thousands)


def unsafe_char(text: str) -> str | None:
    """The first character of ``text`` that may not appear in a name, or None."""
    if _PLAIN_ASCII.fullmatch(text):
        return None
    for c in text:
        if unicodedata.category(c) in _UNSAFE_CATEGORIES:
            return c
    return None


def check_member_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a safe relative POSIX path (no traversal, no oddities).

    Names are printed to operators' terminals: control, format and bidirectional characters are
    refused, so a name can neither draw on the terminal nor read differently from what it is.
    """
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"member name {printable(name[:80])} is empty or too long")
    bad = unsafe_char(name)
    if bad is not None:
        raise ValueError(f"member name {printable(name)} holds the control or format character U+{ord(bad):04X}")
    if name.startswith("/") or "\\" in name:
        raise ValueError(f"member name {printable(name)} is absolute or has a backslash")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"member name {printable(name)} has an empty, '.' or '..' path segment")


def printable(text: str) -> str:
    """``text`` as it may safely be printed: quoted, with every character that is not printable
    (controls, escape sequences, bidirectional overrides, separators) shown as a Python escape.

    Use it for every string an archive, a delta or any other input file controls before it reaches a
    terminal or a log line: such a string must never erase or fake what chiron prints around it.
    """
    out = []
    for c in text:
        if c.isprintable() or c == " ":
            out.append(c)
        else:
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "'" + "".join(out) + "'"


def plain(text: str) -> str:
    """``text`` itself when every character is printable, else ``printable(text)`` (for names in
    running text, where quotes around every ordinary name would only add noise)."""
    return text if text.isprintable() else printable(text)


def canonical_json(obj: Any) -> bytes:
    """The one serialisation chiron writes for its own JSON, so bytes can be compared exactly."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def parse_json(data: bytes | str, what: str) -> Any:
    """Parse untrusted JSON; ValueError naming ``what`` when it is not JSON or nests too deeply.

    A document nested thousands of levels deep makes the parser recurse until RecursionError: that
    is a malformed input, not a crash. Callers check the shape of the result before anything else
    walks it recursively (chiron's own formats nest a few levels).
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what}: not valid JSON: {exc}") from None


# What a terminal acts on rather than shows: C0 and C1 controls, DEL (ESC is C0), and the bidirectional
# controls (LRM/RLM, ALM, embeddings, overrides, isolates).
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on shown as ``\\xNN`` / ``\\uNNNN``
    (newlines kept): the last guard on every line the CLI prints, whatever produced it."""
    return _TERMINAL_CONTROLS.sub(_escape, text)
