"""A whole-page Prometheus text parser, the reference the collector's fast extractor is tested
against (production reads only the families it needs: ``pointsman_collector.core.prom``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pointsman_collector.core.prom import Sample, parse_sample


@dataclass(slots=True)
class Exposition:
    """A parsed page: samples keyed by sample name (``x_bucket``, ``x_sum`` stay apart)."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> Exposition:
    """Parse a whole exposition; raises :class:`ParseError` on the first malformed line."""
    exp = Exposition()
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            parts = line[1:].strip().split(None, 2)
            if len(parts) >= 2 and parts[0] in ("HELP", "TYPE"):
                rest = parts[2] if len(parts) == 3 else ""
                if parts[0] == "TYPE":
                    exp.types[parts[1]] = rest.strip()
                else:
                    exp.helps[parts[1]] = rest.replace("\\n", "\n").replace("\\\\", "\\")
            continue
        sample = parse_sample(line)
        exp.samples.setdefault(sample.name, []).append(sample)
    return exp
