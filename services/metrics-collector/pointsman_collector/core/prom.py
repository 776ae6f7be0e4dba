"""Reading Prometheus text exposition (version 0.0.4): only the samples the picker needs.

:func:`extract` finds the sample lines of the named metrics in the raw bytes with
``bytes.find`` and parses just those lines: a vLLM ``/metrics`` page is tens of kilobytes of
histogram buckets the picker never reads, and skipping them is what lets one process keep
hundreds of endpoints at a 50 ms interval. There is deliberately no whole-page parser here:
``bench/collector`` measured one 44x slower on a real vLLM page; the tests keep a reference
parser (``tests/helpers/promtext.py``) that a property test checks :func:`extract` against.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass


class ParseError(ValueError):
    """A line of the exposition is not in the Prometheus text format."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp_ms: int | None = None


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse_value(text: str) -> float:
    """A sample value: Go-style floats, ``NaN``, ``+Inf``, ``-Inf``."""
    try:
        return float(text)
    except ValueError:
        raise ParseError(f"bad sample value {text!r}") from None


def _parse_labels(line: str, i: int) -> tuple[dict[str, str], int]:
    """Parse ``name="value",...}`` from after ``{``; returns labels and the index after ``}``."""
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            raise ParseError(f"unterminated label set in {line!r}")
        if line[i] == "}":
            return labels, i + 1
        eq = line.find("=", i)
        if eq == -1:
            raise ParseError(f"label without '=' in {line!r}")
        name = line[i:eq].strip()
        if not name:
            raise ParseError(f"empty label name in {line!r}")
        i = eq + 1
        while i < n and line[i] in " \t":
            i += 1
        if i >= n or line[i] != '"':
            raise ParseError(f"label value must be quoted in {line!r}")
        i += 1
        close = line.find('"', i)
        if close == -1:
            raise ParseError(f"unterminated label value in {line!r}")
        segment = line[i:close]
        if "\\" not in segment:
            labels[name] = segment
            i = close + 1
        else:
            out: list[str] = []
            while True:
                if i >= n:
                    raise ParseError(f"unterminated label value in {line!r}")
                ch = line[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise ParseError(f"dangling escape in {line!r}")
                    nxt = line[i + 1]
                    out.append(_ESCAPES.get(nxt, "\\" + nxt))
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    out.append(ch)
                    i += 1
            labels[name] = "".join(out)
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ",":
            i += 1
        elif i < n and line[i] != "}":
            raise ParseError(f"expected ',' or '}}' in {line!r}")


_LABEL = r'[ \t]*[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*"[^"\\]*"[ \t]*'
_FAST_LINE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)"
    rf"(?:\{{((?:{_LABEL}(?:,{_LABEL})*,?)?)[ \t]*\}})?"
    r"[ \t]+(\S+)(?:[ \t]+(-?[0-9]+))?[ \t]*"
)
_FAST_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"([^"]*)"')


def parse_sample(line: str) -> Sample:
    """One sample line: ``name{labels} value [timestamp]``."""
    line = line.strip()
    m = _FAST_LINE.fullmatch(line)
    if m is not None:  # no escapes: one C-level match does it
        name, body, value, ts = m.groups()
        labels = dict(_FAST_PAIR.findall(body)) if body else {}
        return Sample(name, labels, parse_value(value), int(ts) if ts is not None else None)
    return _parse_sample_slow(line)


def _parse_sample_slow(line: str) -> Sample:
    brace = line.find("{")
    space = -1
    for idx, ch in enumerate(line):
        if ch in " \t":
            space = idx
            break
    labels: dict[str, str]
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        labels, end = _parse_labels(line, brace + 1)
        rest = line[end:]
    else:
        if space == -1:
            raise ParseError(f"sample without value: {line!r}")
        name = line[:space]
        labels = {}
        rest = line[space:]
    if not name:
        raise ParseError(f"sample without name: {line!r}")
    parts = rest.split()
    if not parts or len(parts) > 2:
        raise ParseError(f"expected 'value [timestamp]' in {line!r}")
    ts: int | None = None
    if len(parts) == 2:
        try:
            ts = int(parts[1])
        except ValueError:
            raise ParseError(f"bad timestamp in {line!r}") from None
    return Sample(name, labels, parse_value(parts[0]), ts)


#: Parsed sample lines by their exact bytes. Most lines an endpoint sends repeat from scrape to
#: scrape and across endpoints (info gauges, idle queues "0.0"), so a dict lookup replaces a parse.
#: Cached samples are shared: callers must not mutate their labels.
_LINE_CACHE: dict[bytes, Sample] = {}
_LINE_CACHE_MAX = 16384


def _sample(line: bytes) -> Sample:
    sample = _LINE_CACHE.get(line)
    if sample is None:
        sample = parse_sample(line.decode("utf-8", "replace"))
        if len(_LINE_CACHE) >= _LINE_CACHE_MAX:
            _LINE_CACHE.clear()
        _LINE_CACHE[line] = sample
    return sample


def extract_one(data: bytes, name: str) -> list[Sample]:
    """The samples named exactly ``name``, found without reading the rest of the page."""
    bname = name.encode()
    key = b"\n" + bname
    size = len(data)
    found: list[Sample] = []
    if data.startswith(bname):
        pos = 0
    else:
        pos = data.find(key)
        if pos != -1:
            pos += 1
    while pos != -1 and pos < size:
        after = pos + len(bname)
        eol = data.find(b"\n", pos)
        if eol == -1:
            eol = size
        nxt = data[after : after + 1]
        if nxt in (b"{", b" ", b"\t"):
            found.append(_sample(data[pos:eol].rstrip(b"\r")))
        # A family is one group of lines (the format requires it), so the next sample of
        # this name, if any, comes before the next comment line: search only that far.
        block_end = data.find(b"\n#", eol)
        pos = data.find(key, eol, size if block_end == -1 else block_end)
        if pos != -1:
            pos += 1
    return found


def extract(data: bytes, names: Iterable[str]) -> dict[str, list[Sample]]:
    """The samples of only ``names`` (exact sample names), found without reading the rest.

    Agrees with :func:`parse` on every name it is asked for (a property test checks it).
    """
    out: dict[str, list[Sample]] = {}
    for name in names:
        found = extract_one(data, name)
        if found:
            out[name] = found
    return out


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
