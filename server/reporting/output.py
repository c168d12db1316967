"""Command output for people: ANSI colours as HTML (or stripped), tails and slices by offset.

Programs print colour codes (``ESC[1;32m``) that are noise in a CSV and unreadable raw on a
page. ``to_html`` escapes the text and turns SGR codes (colours, bold, underline) into
``<span class="ansi-…">``; every other escape sequence is dropped. ``strip`` removes them all.

``slice_from`` serves a running step's output incrementally: the reader says how much it has
(``offset``, in characters) and gets only what came after, in whole lines while the step is
still running, so a line is never shown half-written and then again whole.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape

# CSI sequences (ESC [ ... final byte), OSC sequences (ESC ] ... BEL/ST), and lone ESC x
ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
TAIL_LINES = 200  # lines shown before "show all"


def strip(text: str | None) -> str:
    """The text without any escape sequence (for CSV, messages and downloads)."""
    return ESCAPE.sub("", text or "")


def _apply(state: frozenset[str], params: str) -> frozenset[str]:
    """The style after one SGR sequence (``params`` like ``1;32``)."""
    codes = [int(p) if p.isdigit() else 0 for p in (params.split(";") if params else ["0"])]
    current = set(state)
    i = 0
    while i < len(codes):
        c = codes[i]
        if c == 0:
            current.clear()
        elif c == 1:
            current.add("ansi-bold")
        elif c == 4:
            current.add("ansi-underline")
        elif c in (22, 24):
            current.discard("ansi-bold" if c == 22 else "ansi-underline")
        elif 30 <= c <= 37 or 90 <= c <= 97:
            current = {s for s in current if not s.startswith("ansi-fg-")}
            current.add(f"ansi-fg-{COLOURS[c % 10]}")
        elif 40 <= c <= 47 or 100 <= c <= 107:
            current = {s for s in current if not s.startswith("ansi-bg-")}
            current.add(f"ansi-bg-{COLOURS[c % 10]}")
        elif c == 39:
            current = {s for s in current if not s.startswith("ansi-fg-")}
        elif c == 49:
            current = {s for s in current if not s.startswith("ansi-bg-")}
        elif c in (38, 48):  # 256 colours / true colour: skipped, not guessed
            i += 2 if codes[i + 1:i + 2] == [5] else 4
        i += 1
    return frozenset(current)


def state_after(text: str) -> frozenset[str]:
    """The style in force at the end of ``text`` (where the next slice starts)."""
    state: frozenset[str] = frozenset()
    for m in ESCAPE.finditer(text or ""):
        if m.group(2) == "m":
            state = _apply(state, m.group(1))
    return state


def to_html(text: str | None, state: frozenset[str] = frozenset()) -> str:
    """Escaped HTML of ``text`` with its SGR colours as spans, starting in style ``state``."""
    out: list[str] = []
    pos = 0
    text = text or ""

    def emit(chunk: str) -> None:
        if not chunk:
            return
        if state:
            out.append(f'<span class="{" ".join(sorted(state))}">{escape(chunk)}</span>')
        else:
            out.append(escape(chunk))

    for m in ESCAPE.finditer(text):
        emit(text[pos:m.start()])
        pos = m.end()
        if m.group(2) == "m":
            state = _apply(state, m.group(1))
    emit(text[pos:])
    return "".join(out)


def tail(text: str | None, lines: int = TAIL_LINES) -> tuple[str, int]:
    """The last ``lines`` lines of ``text`` and how many lines were left out before them."""
    text = text or ""
    parts = text.splitlines(keepends=True)
    if len(parts) <= lines:
        return text, 0
    return "".join(parts[-lines:]), len(parts) - lines


def last_line(text: str | None) -> str:
    """The last non-empty line, without escape codes (a host's error in one line)."""
    for line in reversed(strip(text).splitlines()):
        if line.strip():
            return line.strip()
    return ""


@dataclass
class Slice:
    text: str  # raw, escape codes included
    html: str
    next_offset: int


def slice_from(text: str | None, offset: int, *, running: bool) -> Slice:
    """What came after ``offset``; while ``running`` only whole lines (up to the last newline)."""
    text = text or ""
    offset = max(0, min(offset, len(text)))
    end = len(text)
    if running:
        newline = text.rfind("\n", offset)
        end = newline + 1 if newline >= 0 else offset
    chunk = text[offset:end]
    return Slice(chunk, to_html(chunk, state_after(text[:offset])) if chunk else "", end)
