"""Parsing helpers shared by the CLI command modules."""

from __future__ import annotations

from segladder.errors import SegladderError


def parse_int_list(text: str | None, what: str = "frames") -> list[int] | None:
    """'0,1,2', '0-4' or '0-2,6' → [ints]; None or '' → None (all)."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise SegladderError(f"--{what} '{text}': expected indices like '0-4' or '3,4,5'.") from None
    return out


def parse_str_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [p.strip() for p in text.split(",") if p.strip()]
