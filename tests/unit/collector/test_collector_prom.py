"""The Prometheus text parsers: the general one and the fast extractor must agree."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman_collector.core import prom
from tests.helpers import promtext

FIXTURES = Path(__file__).parent / "fixtures"
PAGES = sorted(p.name for p in FIXTURES.glob("*.txt"))


def page(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize(
    ("line", "name", "labels", "value"),
    [
        ("up 1", "up", {}, 1.0),
        ("x{} 2.5", "x", {}, 2.5),
        (
            'vllm:num_requests_waiting{engine="0",model_name="m/x"} 2.0',
            "vllm:num_requests_waiting",
            {"engine": "0", "model_name": "m/x"},
            2.0,
        ),
        ('a{le="+Inf"} 3', "a", {"le": "+Inf"}, 3.0),
        ('a{x="1",} 1e+06', "a", {"x": "1"}, 1e6),
        (
            'a{x="q\\"uote",y="back\\\\slash",z="new\\nline"} -1',
            "a",
            {"x": 'q"uote', "y": "back\\slash", "z": "new\nline"},
            -1.0,
        ),
        ('a{x="has } and , inside"} 7', "a", {"x": "has } and , inside"}, 7.0),
        (
            'lora{running_lora_adapters="a,b",waiting_lora_adapters=""} 1.76e+09',
            "lora",
            {"running_lora_adapters": "a,b", "waiting_lora_adapters": ""},
            1.76e9,
        ),
        ("a +Inf", "a", {}, math.inf),
        ("a -Inf 1700000000000", "a", {}, -math.inf),
    ],
)
def test_parse_sample(line: str, name: str, labels: dict[str, str], value: float) -> None:
    s = prom.parse_sample(line)
    assert (s.name, s.labels, s.value) == (name, labels, value)


def test_parse_nan() -> None:
    assert math.isnan(prom.parse_sample("a NaN").value)


@pytest.mark.parametrize(
    "line",
    ["a", 'a{x="1"', "a{x=1} 2", "a{x} 1", "a 1 2 3", "a one", '{x="1"} 2', 'a{x="1" y="2"} 3'],
)
def test_malformed_lines_raise(line: str) -> None:
    with pytest.raises(prom.ParseError):
        prom.parse_sample(line)


def test_parse_vllm_page_types_and_histograms() -> None:
    exp = promtext.parse(page("vllm_v1.txt"))
    assert exp.types["vllm:time_to_first_token_seconds"] == "histogram"
    assert exp.types["vllm:num_requests_waiting"] == "gauge"
    buckets = exp.samples["vllm:time_to_first_token_seconds_bucket"]
    assert buckets[-1].labels["le"] == "+Inf"
    assert buckets[-1].value == exp.samples["vllm:time_to_first_token_seconds_count"][0].value == 3
    assert "vllm:prefix_cache_queries_total" in exp.samples
    assert "vllm:prefix_cache_queries_created" in exp.samples


@pytest.mark.parametrize("name", PAGES)
def test_extract_agrees_with_parse_on_real_pages(name: str) -> None:
    text = page(name)
    full = promtext.parse(text).samples
    wanted = sorted(full)
    fast = prom.extract(text.encode(), wanted)
    assert fast == full


def test_extract_does_not_confuse_prefixes() -> None:
    data = page("vllm_v1.txt").encode()
    got = prom.extract(data, ["vllm:num_requests_waiting"])
    assert [s.name for s in got["vllm:num_requests_waiting"]] == ["vllm:num_requests_waiting"]
    assert prom.extract(data, ["vllm:num_requests"]) == {}
    assert prom.extract(data, ["absent"]) == {}


def test_extract_first_line_and_no_trailing_newline() -> None:
    data = b'a{x="1"} 1\nb 2\na{x="2"} 3'
    got = prom.extract(data, ["a", "b"])
    assert [s.value for s in got["a"]] == [1.0, 3.0]
    assert [s.value for s in got["b"]] == [2.0]


# ----- property tests -------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
LABEL_NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True)
LABEL_VALUES = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]),
    max_size=12,
)
VALUES = st.floats(allow_nan=False) | st.integers(-(10**12), 10**12).map(float)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(name: str, labels: dict[str, str], value: float) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{body}}} {value!r}" if labels else f"{name} {value!r}"


SAMPLES = st.lists(
    st.tuples(NAMES, st.dictionaries(LABEL_NAMES, LABEL_VALUES, max_size=4), VALUES),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(SAMPLES)
def test_render_then_parse_roundtrips(samples: list[tuple[str, dict[str, str], float]]) -> None:
    lines = ["# HELP x some help", "# TYPE x gauge"]
    lines += [_render(*s) for s in samples]
    exp = promtext.parse("\n".join(lines) + "\n")
    got = [(s.name, s.labels, s.value) for ss in exp.samples.values() for s in ss]
    assert sorted(got, key=repr) == sorted(samples, key=repr)


@settings(max_examples=150, deadline=None)
@given(SAMPLES, st.lists(NAMES, max_size=5))
def test_extract_matches_parse(
    samples: list[tuple[str, dict[str, str], float]], extra: list[str]
) -> None:
    text = "\n".join(["# TYPE foo counter", *(_render(*s) for s in samples)])
    full = promtext.parse(text).samples
    wanted = [s[0] for s in samples[:3]] + extra
    fast = prom.extract(text.encode(), wanted)
    assert fast == {n: full[n] for n in wanted if n in full}
