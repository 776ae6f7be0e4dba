"""The PII token head: tags to spans, the entity-level metric, the shipped head on real text."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from pointsman_classifier import core, pii  # noqa: E402
from pointsman_classifier.config import ClassifierConfig  # noqa: E402
from pointsman_classifier.engine import spans_from_tokens  # noqa: E402
from pointsman_lab.pii_eval import Span, matches, normalise, score  # noqa: E402


def _words(text: str) -> list[list[int]]:
    """Whitespace-token offsets, with a special token at each end as the real tokenizer has."""
    out, pos = [[0, 0]], 0
    for w in text.split(" "):
        out.append([pos, pos + len(w)])
        pos += len(w) + 1
    return [*out, [0, 0]]


def test_bio_tags_decode_back_to_the_gold_spans_adjacent_ones_too() -> None:
    from pointsman_classifier.piihead import LABELS
    from pointsman_lab.pii_train import bio_tags

    text = "Mail 637 Strojírenská 1006 Apt. 5 to Ana Lima in Oslo"
    gold = [
        Span(5, 8, "LOCATION"),  # 637: the building number, its own span
        Span(9, 26, "LOCATION"),  # Strojírenská 1006, right after it
        Span(27, 33, "LOCATION"),  # Apt. 5
        Span(37, 45, "PERSON"),
        Span(49, 53, "LOCATION"),
    ]
    offsets = _words(text)
    tags = bio_tags([(s, e) for s, e in offsets], gold, LABELS)
    assert tags[0] == tags[-1] == -100  # special tokens carry no loss
    labels = [LABELS[t] if t >= 0 else "O" for t in tags]
    assert labels[1:5] == ["O", "B-LOCATION", "B-LOCATION", "I-LOCATION"]
    found = spans_from_tokens(labels, [0.9] * len(labels), offsets, 0.5)
    assert [(f.start, f.end, f.entity_type) for f in found] == [
        (s.start, s.end, s.entity_type) for s in gold
    ]
    # With the text, spans of one type one space apart are one entity: the whole address.
    whole = spans_from_tokens(labels, [0.9] * len(labels), offsets, 0.5, text)
    assert [(text[f.start : f.end], f.entity_type) for f in whole] == [
        ("637 Strojírenská 1006 Apt. 5", "LOCATION"),
        ("Ana Lima", "PERSON"),
        ("Oslo", "LOCATION"),
    ]


def test_decoding_drops_punctuation_and_escaped_newlines() -> None:
    text = "Name:\\nAna , Oslo"  # an escaped newline: backslash and n, as in JSON-ish prompts
    offsets = [[0, 0], [0, 4], [4, 5], [5, 6], [6, 10], [11, 12], [13, 17], [0, 0]]
    labels = ["O", "O", "O", "O", "B-PERSON", "B-LOCATION", "B-LOCATION", "O"]
    found = spans_from_tokens(labels, [0.9] * 8, offsets, 0.5, text)
    # "nAna" is one word to the tokenizer; the span starts after the escape. The lone comma goes.
    assert [(text[f.start : f.end], f.entity_type) for f in found] == [
        ("Ana", "PERSON"),
        ("Oslo", "LOCATION"),
    ]


def test_word_pieces_take_the_entity_of_their_word() -> None:
    text = "Fremont at Rikencorp"
    # "Fre" "##mont" "at" "Riken" "##corp": pieces glued to the one before them.
    offsets = [[0, 0], [0, 3], [3, 7], [8, 10], [11, 16], [16, 20], [0, 0]]
    labels = ["O", "B-PERSON", "B-LOCATION", "O", "O", "I-ORGANIZATION", "O"]
    found = spans_from_tokens(labels, [0.9] * 7, offsets, 0.5, text)
    # The word's first piece decides: Fremont is one PERSON, Rikencorp (first piece O) nothing.
    assert [(f.start, f.end, f.entity_type) for f in found] == [(0, 7, "PERSON")]
    # Without the text (a configured model's output) the pieces stay as tagged.
    raw = spans_from_tokens(labels, [0.9] * 7, offsets, 0.5)
    assert [f.entity_type for f in raw] == ["PERSON", "LOCATION", "ORGANIZATION"]


def test_spans_glued_together_are_one_entity_of_the_first_type() -> None:
    pieces = [
        ("Patterson", "B-ORGANIZATION"),
        ("-", "I-ORGANIZATION"),
        ("Fletcher", "B-PERSON"),
        (" and", "O"),
        (" Minería", "B-ORGANIZATION"),
        (" S.L", "I-ORGANIZATION"),
        (".", "I-ORGANIZATION"),
        ("U", "B-PERSON"),
        (". on", "O"),
        (" 2018", "B-DATE_TIME"),
        ("-", "I-DATE_TIME"),
        ("03", "B-DATE_TIME"),
        ("-09", "I-DATE_TIME"),
    ]
    text, offsets, labels = "", [[0, 0]], ["O"]
    for piece, label in pieces:
        lead = len(piece) - len(piece.lstrip(" "))
        offsets.append([len(text) + lead, len(text) + len(piece)])
        labels.append(label)
        text += piece
    offsets.append([0, 0])
    labels.append("O")
    found = spans_from_tokens(labels, [0.9] * len(labels), offsets, 0.5, text)
    assert [(text[f.start : f.end], f.entity_type) for f in found] == [
        ("Patterson-Fletcher", "ORGANIZATION"),  # "-" between: one word, one entity
        ("Minería S.L.U", "ORGANIZATION"),  # "U" glued after "." joins the organisation
        ("2018-03-09", "DATE_TIME"),
    ]
    # A space between spans of different types keeps them apart (but see
    # test_a_word_next_to_a_persons_name_is_part_of_it).
    offsets = [[0, 0], [0, 3], [4, 10], [0, 0]]
    apart = spans_from_tokens(
        ["O", "B-PERSON", "B-DATE_TIME", "O"], [0.9] * 4, offsets, 0.5, "Ana Monday"
    )
    assert [f.entity_type for f in apart] == ["PERSON", "DATE_TIME"]


def test_low_scores_end_a_span() -> None:
    text = "Ana Lima"
    offsets = [[0, 0], [0, 3], [4, 8], [0, 0]]
    found = spans_from_tokens(
        ["O", "B-PERSON", "I-PERSON", "O"], [1, 0.9, 0.2, 1], offsets, 0.5, text
    )
    assert [(f.start, f.end) for f in found] == [(0, 3)]


def test_types_are_normalised_to_the_reported_names() -> None:
    assert normalise("GPE") == normalise("STREET_ADDRESS") == normalise("ZIP_CODE") == "LOCATION"
    assert normalise("person") == "PERSON" and normalise("EMAIL_ADDRESS") == "EMAIL_ADDRESS"


def test_overlap_rule_needs_half_of_the_longer_span() -> None:
    gold = [Span(0, 3, "LOCATION"), Span(4, 21, "LOCATION")]
    found = [Span(0, 21, "LOCATION")]  # one span over "637 Strojírenská 1006"
    # 17 common characters of 21 match the street; the 3 of "637" do not.
    assert matches(gold, found) == [(1, 0)]
    assert matches(gold, found, "exact") == []
    assert matches([Span(0, 10, "PERSON")], [Span(0, 4, "PERSON")]) == []  # 4 < 10 / 2
    assert matches([Span(0, 10, "PERSON")], [Span(0, 5, "PERSON")]) == [(0, 0)]
    assert matches([Span(0, 10, "PERSON")], [Span(0, 10, "LOCATION")]) == []  # type differs


def test_each_span_matches_once() -> None:
    gold = [Span(0, 10, "PERSON")]
    found = [Span(0, 9, "PERSON"), Span(1, 10, "PERSON")]
    r = score([gold], [found], ["PERSON"])
    assert (r["precision"], r["recall"]) == (0.5, 1.0)
    assert r["per_type"]["PERSON"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1, "found": 2}
    )


def test_score_micro_averages_detected_types_and_lists_the_others() -> None:
    gold = [
        [Span(0, 5, "PERSON"), Span(10, 15, "GPE"), Span(20, 22, "AGE")],
        [Span(0, 8, "ZIP_CODE")],
    ]
    found = [
        [Span(0, 5, "PERSON"), Span(10, 15, "LOCATION"), Span(30, 35, "ORGANIZATION")],
        [Span(0, 8, "STREET_ADDRESS")],  # the pattern recogniser's name: LOCATION as well
    ]
    r = score(gold, found, ["PERSON", "LOCATION", "ORGANIZATION"])
    assert r["not_detected"] == {"AGE": 1}
    assert r["support"] == 3
    assert r["precision"] == pytest.approx(3 / 4) and r["recall"] == 1.0
    assert r["per_type"]["ORGANIZATION"]["precision"] == 0.0
    assert set(r["per_type"]) == {"PERSON", "LOCATION", "ORGANIZATION"}


def test_allowed_types_cover_the_new_names() -> None:
    cfg = ClassifierConfig.model_validate(
        {
            "models": {
                "no-pii": {"pii_allowed": []},
                "places": {"pii_allowed": ["LOCATION", "STREET_ADDRESS", "DATE_TIME"]},
                "people": {"pii_allowed": ["PERSON", "ORGANIZATION"]},
            }
        }
    )
    found = frozenset({"PERSON", "ORGANIZATION"})
    assert core.pii_allowed(cfg, "people", found)
    assert not core.pii_allowed(cfg, "places", found)
    assert not core.pii_allowed(cfg, "no-pii", frozenset({"DATE_TIME"}))
    assert core.pii_allowed(cfg, "places", frozenset({"LOCATION", "DATE_TIME"}))
    assert core.pii_allowed(cfg, "unlisted", found)  # default_allowed: *


@pytest.mark.parametrize(
    "section",
    [
        {"models": {"m": {"pii_allowed": ["PERSONS"]}}},
        {"pii": {"default_allowed": ["EMAIL_ADDRESS", "ADDRESS"]}},
    ],
)
def test_unknown_allowed_types_fail_at_start_up(section: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown PII type"):
        ClassifierConfig.model_validate(section)


def test_a_configured_model_may_use_its_own_labels() -> None:
    cfg = ClassifierConfig.model_validate(
        {"pii": {"model": "/some/dir"}, "models": {"m": {"pii_allowed": ["B-NAME"]}}}
    )
    assert cfg.models["m"].pii_allowed == ["B-NAME"]


def test_known_types_include_the_model_types() -> None:
    assert set(pii.MODEL_TYPES) <= pii.KNOWN_TYPES
    assert pii.PATTERN_TYPES <= pii.KNOWN_TYPES


def _tiny_bert() -> Any:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return BertModel(cfg).eval()  # type: ignore[no-untyped-call]


def test_branch_runs_in_the_same_pass_and_leaves_the_trunk_alone() -> None:
    from pointsman_classifier.fastbert import PooledBert
    from pointsman_classifier.piihead import PiiBranch

    model = _tiny_bert()
    fast = PooledBert(model)
    ids = torch.randint(5, 200, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.inference_mode():
        before = fast(ids, mask)
        branch = PiiBranch.from_trunk(model, at=2, n_layers=1)
        torch.nn.init.normal_(branch.out.weight)
        fast.pii_branch = branch
        pooled, side = fast.run(ids, mask)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        want = branch(hidden.hidden_states[2], mask[:, None, None, :].bool())
        _, shallow = fast.run(ids, mask, depth=1)  # stops below the branch's layer
    torch.testing.assert_close(pooled, before)
    assert side is not None and side.shape == (3, 9, len(branch.labels))
    torch.testing.assert_close(side[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(side[1, :5], want[1, :5], rtol=1e-4, atol=1e-5)
    assert shallow is None


def test_branch_saves_and_loads(tmp_path: Path) -> None:
    from pointsman_classifier.piihead import PiiBranch, load

    branch = PiiBranch.from_trunk(_tiny_bert(), at=1, n_layers=1)
    branch.meta = {"validation": {"f1": 0.5}}
    branch.save(tmp_path)
    again = load(tmp_path)
    assert again is not None and again.at == 1 and again.labels == branch.labels
    assert again.meta["validation"] == {"f1": 0.5}
    x = torch.randn(2, 5, 32)
    with torch.inference_mode():
        torch.testing.assert_close(again(x, None), branch(x, None), rtol=1e-2, atol=1e-3)
    assert load(tmp_path / "missing") is None


# -- the shipped head, through the engine as the service runs it -----------------------------


@pytest.fixture(scope="module")
def engine() -> Any:
    from pointsman_classifier.engine import Engine

    return Engine(ClassifierConfig(threads=1))


def _found(out: Any, text: str) -> set[tuple[str, str]]:
    return {(f.entity_type, text[f.start : f.end]) for f in out.pii}


def _covers(out: Any, text: str, etype: str, value: str) -> bool:
    start = text.index(value)
    return any(
        f.entity_type == etype and f.start <= start and f.end >= start + len(value) for f in out.pii
    )


def test_shipped_head_finds_a_person_a_city_an_address_and_an_organisation(engine: Any) -> None:
    text = "Send the contract to Maria Keller at 221 Baker Street, London; she works for Siemens."
    [out] = engine.run([text])
    assert _covers(out, text, "PERSON", "Maria Keller"), _found(out, text)
    assert _covers(out, text, "LOCATION", "London"), _found(out, text)
    assert _covers(out, text, "LOCATION", "Baker Street"), _found(out, text)
    assert _covers(out, text, "ORGANIZATION", "Siemens"), _found(out, text)
    assert all(f.source == "model" for f in out.pii)


def test_shipped_head_finds_address_fragments_and_dates(engine: Any) -> None:
    text = "Please deliver it to Apt. 595 before March 3, 2024."
    [out] = engine.run([text])
    assert _covers(out, text, "LOCATION", "595"), _found(out, text)
    assert _covers(out, text, "DATE_TIME", "March 3, 2024"), _found(out, text)


def test_shipped_head_leaves_plain_questions_alone(engine: Any) -> None:
    texts = ["What is 2+2?", "Explain how photosynthesis works.", "Write a haiku about rain."]
    assert [o.pii for o in engine.run(texts)] == [[], [], []]


def test_long_prompts_are_read_in_windows(engine: Any) -> None:
    text = "The weather was fine and the meeting went well. " * 60 + "Please call Maria Keller."
    [out] = engine.run([text])
    assert out.tokens == engine.encoder.max_length  # the shared pass stopped long before
    assert _covers(out, text, "PERSON", "Maria Keller"), _found(out, text)


def test_a_long_prompts_entities_do_not_depend_on_its_neighbours_or_on_the_window_cap(
    engine: Any,
) -> None:
    """Every window's entities as if that window ran alone: reused from the batch's own pass
    (every window there), or from a pass of their own when ``max_windows`` left some out."""
    from pointsman_classifier.engine import Engine

    filler = "The quarterly figures were reviewed by the team on Tuesday and next March. "
    pii = " Call Maria Keller at 221 Baker Street, London, on 3 March 2024 about Siemens. "
    texts = [
        filler * 20 + pii + filler * 30 + pii,
        pii + filler * 45,
        "Is this short prompt fine?",
    ]

    def found(outs: list[Any]) -> list[set[tuple[str, int, int]]]:
        return [{(f.entity_type, f.start, f.end) for f in o.pii} for o in outs]

    together = found(engine.run(texts))
    alone = [found(engine.run([t]))[0] for t in texts]
    assert together == alone
    # The windows find the name. Not its type: with int8 weights that depends on the CPU's
    # kernels (AVX2 or AMX/VNNI), and in this long text it is near the PERSON/LOCATION line.
    [first] = engine.run(texts[:1])
    name = texts[0].index("Maria Keller")
    assert any(f.start <= name and f.end > name for f in first.pii), _found(first, texts[0])
    # Two safety windows at most: the PII windows then take their own pass, with the same result.
    capped = Engine(
        ClassifierConfig.model_validate({"threads": 1, "jailbreak": {"max_windows": 2}})
    )
    assert found(capped.run(texts)) == together


def test_the_head_can_be_switched_off() -> None:
    from pointsman_classifier.engine import Engine

    eng = Engine(ClassifierConfig.model_validate({"threads": 1, "pii": {"ner": False}}))
    assert eng.pii_head is None and eng.pii_types() == []
    [out] = eng.run(["Send the contract to Maria Keller in London."])
    assert out.pii == []


def test_eval_cli_reports_per_type_and_json(tmp_path: Path, capsys: Any) -> None:
    from pointsman_lab.pii_eval import main

    text = "Maria Keller moved to London. Her email is maria@example.com"
    rows = [
        {
            "full_text": text,
            "spans": [
                {"entity_type": "PERSON", "start_position": 0, "end_position": 12},
                {"entity_type": "GPE", "start_position": 22, "end_position": 28},
                {"entity_type": "EMAIL_ADDRESS", "start_position": 43, "end_position": 60},
                {"entity_type": "AGE", "start_position": 0, "end_position": 1},
            ],
        }
    ]
    path = tmp_path / "pii.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    assert main([str(path), "--json", "--threads", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert {"f1", "precision", "recall", "per_type"} <= set(result)
    assert result["per_type"]["EMAIL_ADDRESS"]["recall"] == 1.0
    assert result["per_type"]["PERSON"]["support"] == 1
    assert result["not_detected"] == {"AGE": 1}
    assert main([str(tmp_path / "missing.json")]) == 2


def test_pointsman_eval_pii_runs_the_pii_evaluation(capsys: Any) -> None:
    from pointsman.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "pii", "--help"])
    assert exc.value.code == 0
    assert "usage: pointsman eval pii" in capsys.readouterr().out


def test_a_token_scores_its_entitys_probability_not_its_tags() -> None:
    import numpy as np

    from pointsman_classifier.engine import decode_tags
    from pointsman_classifier.piihead import LABELS

    text = "Baker Street"
    offsets = [[0, 0], [0, 5], [6, 12], [0, 0]]
    probs = np.zeros((4, len(LABELS)), dtype=np.float32)
    probs[[0, 3], 0] = 1.0
    b, i = LABELS.index("B-LOCATION"), LABELS.index("I-LOCATION")
    probs[1, [0, b, i]] = [0.3, 0.36, 0.34]  # B or I is a close call; LOCATION is not
    probs[2, [0, b, i]] = [0.1, 0.1, 0.8]
    [f] = decode_tags(LABELS, probs, offsets, 0.6, text)
    assert (f.start, f.end, f.entity_type) == (0, 12, "LOCATION")
    assert f.score == pytest.approx(0.7)
    probs[1, [0, b, i]] = [0.5, 0.3, 0.2]  # "O" most likely: not an entity
    [g] = decode_tags(LABELS, probs, offsets, 0.6, text)
    assert (g.start, g.end) == (6, 12)


def test_merge_lets_the_model_span_replace_the_address_patterns() -> None:
    text = "Ship to 12 Elm Street Apt. 5, Springfield"
    patterns = pii.find(text)
    assert [f.entity_type for f in patterns] == ["STREET_ADDRESS"]
    model = [pii.Finding(8, 41, "LOCATION", 0.9, "model")]
    assert pii.merge(patterns, model) == patterns  # the checked patterns win by default
    assert pii.merge(patterns, model, prefer=frozenset({"STREET_ADDRESS"})) == model


def test_type_weights_scale_a_types_tags_only() -> None:
    from pointsman_classifier.piihead import LABELS
    from pointsman_lab.pii_train import tag_weights

    w = dict(zip(LABELS, tag_weights(LABELS, {"LOCATION": 2.0}).tolist(), strict=True))
    assert w["B-LOCATION"] == w["I-LOCATION"] == 2.0
    assert w["O"] == w["B-PERSON"] == w["I-ORGANIZATION"] == 1.0
    with pytest.raises(ValueError, match="CITY"):
        tag_weights(LABELS, {"CITY": 2.0})


def _decode(text: str, labels: str) -> list[tuple[str, str]]:
    """Decode one tag per whitespace-separated word of ``text``: ``labels`` has one letter per
    word, ``O`` none, ``P``/``L``/``G`` a person, place or organisation (``B-``)."""
    import re

    kinds = {"O": "O", "P": "B-PERSON", "L": "B-LOCATION", "G": "B-ORGANIZATION"}
    words = [[m.start(), m.end()] for m in re.finditer(r"\S+", text)]
    assert len(words) == len(labels)
    tags = ["O", *(kinds[c] for c in labels), "O"]
    offsets = [[0, 0], *words, [0, 0]]
    found = spans_from_tokens(tags, [0.9] * len(tags), offsets, 0.5, text)
    return [(text[f.start : f.end], f.entity_type) for f in found]


def test_lower_case_names_are_dropped_only_in_a_text_that_uses_capitals() -> None:
    # "will" tagged as a place: a cased text would have written it with a capital.
    found = _decode("Remove Kaija from the will of Acme", "OPOOLOG")
    assert found == [("Kaija", "PERSON"), ("Acme", "ORGANIZATION")]
    # A lowercase word inside a name is part of it ("van").
    assert _decode("Ask Jan van Dyke", "OPPP") == [("Jan van Dyke", "PERSON")]
    # A lone letter is no name, cased or not.
    assert _decode("C mon Ana", "POP") == [("Ana", "PERSON")]
    assert _decode("c mon ana", "POP") == [("ana", "PERSON")]
    # An all-lower-case text says nothing by its case: its names stay.
    assert _decode("i met ana in oslo", "OOPOL") == [("ana", "PERSON"), ("oslo", "LOCATION")]
    # Digits count as cased: "12" is kept as a place (a house number).
    assert _decode("At 12", "OL") == [("12", "LOCATION")]


def test_address_lines_are_one_place_across_real_line_breaks_only() -> None:
    text = "Meet at 135 Löberöd 27\n Suite 215\n ÅSARP , Sweden"
    # Every line of the block joins; "ÅSARP , Sweden" (no line break between) stays two places.
    assert _decode(text, "OOLLLLLLOL") == [
        ("135 Löberöd 27\n Suite 215\n ÅSARP", "LOCATION"),
        ("Sweden", "LOCATION"),
    ]
    # An escaped line break (a backslash and an n) is text, not a line break.
    found = _decode("Olmstraat 69 \\n Echt", "LLOL")
    assert [t for _, t in found] == ["LOCATION", "LOCATION"]
    # People on consecutive lines stay apart.
    assert _decode("Ana\nBo", "PP") == [("Ana", "PERSON"), ("Bo", "PERSON")]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # A house number, then a street with its own number: two entities.
        ("788 Fitjabraut 87", ["788", "Fitjabraut 87"]),
        ("43292 69 Spencer Street", ["43292", "69 Spencer Street"]),
        # A whole address on one line, or two numbers without a street: one span.
        ("154 Dodson Street Apt. 046 Mayfield", ["154 Dodson Street Apt. 046 Mayfield"]),
        ("9691 2587", ["9691 2587"]),
        # A house number and a street without one: one address.
        ("79 Wolfe Street", ["79 Wolfe Street"]),
        # A street name first: nothing to split.
        ("Strojírenská 96", ["Strojírenská 96"]),
        # Several lines: one address, its house number kept (the data marks blocks whole).
        ("1497 32 Chemin\n ANNECY", ["1497 32 Chemin\n ANNECY"]),
        # A place and its postcode: two entities; a region code keeps its postcode. (A street
        # with a four-digit house number looks the same and is cut too: "Strojírenská", "1006".)
        ("Rotterdam 21490", ["Rotterdam", "21490"]),
        ("Montreal KA19 9EJ", ["Montreal", "KA19 9EJ"]),
        ("Czech Republic 82704", ["Czech Republic", "82704"]),
        ("MV 85768", ["MV 85768"]),
    ],
)
def test_house_numbers_and_postcodes_on_one_line_are_entities_of_their_own(
    text: str, want: list[str]
) -> None:
    found = _decode(f"Go to {text}", "OO" + "L" * len(text.split()))
    assert found == [(w, "LOCATION") for w in want]


def test_a_lone_legal_form_takes_the_name_before_it() -> None:
    # The span right before it, whatever its type ("Haymaker" taken for a person).
    found = _decode("Haymaker Corp. is hiring", "PGOO")
    assert found == [("Haymaker Corp.", "ORGANIZATION")]
    found = _decode("Ask Analog Devices, Inc. today", "OLLGO")
    assert found == [("Analog Devices, Inc.", "ORGANIZATION")]
    # No span before it: the capitalised words (and particles) there.
    found = _decode("Valerio joined van Laarhoven BV on Monday", "POOOGOO")
    assert found == [("Valerio", "PERSON"), ("van Laarhoven BV", "ORGANIZATION")]
    # A legal form with nothing named before it stays as it is.
    assert _decode("the SA is", "OGO") == [("SA", "ORGANIZATION")]


def test_a_word_next_to_a_persons_name_is_part_of_it() -> None:
    # One-word place or organisation spans one space from a person's name: the name's parts.
    assert _decode("Ask Antu Valencia now", "OPGO") == [("Antu Valencia", "PERSON")]
    assert _decode("Ask Chase Usamov now", "OLPO") == [("Chase Usamov", "PERSON")]
    # Not a legal form, not a place of several words, not across a comma.
    assert _decode("Haymaker Corp. hires", "PGO") == [("Haymaker Corp.", "ORGANIZATION")]
    found = _decode("Ana New York", "PLL")
    assert found == [("Ana", "PERSON"), ("New York", "LOCATION")]
    found = _decode("Ana , Oslo", "POL")
    assert found == [("Ana", "PERSON"), ("Oslo", "LOCATION")]


_WORDS = ["788", "Fitjabraut", "87", "Inc.", "BV", "will", "C", "Ana", "\n", "\\n", ",", "Oslo"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_WORDS),
            st.sampled_from(["O", "B-PERSON", "I-PERSON", "B-LOCATION", "I-LOCATION",
                             "B-ORGANIZATION", "B-DATE_TIME"]),
            st.sampled_from([" ", "", ", ", "\n"]),
        ),
        max_size=14,
    )
)  # fmt: skip
def test_decoded_spans_are_ordered_in_bounds_and_apart(
    words: list[tuple[str, str, str]],
) -> None:
    text, offsets, labels = "", [[0, 0]], ["O"]
    for word, label, sep in words:
        text += sep
        offsets.append([len(text), len(text) + len(word)])
        labels.append(label)
        text += word
    offsets.append([0, 0])
    labels.append("O")
    found = spans_from_tokens(labels, [0.9] * len(labels), offsets, 0.5, text)
    for f in found:
        assert 0 <= f.start < f.end <= len(text)
        assert any(c.isalnum() for c in text[f.start : f.end])
    for a, b in itertools.pairwise(found):
        assert a.end <= b.start


def test_a_one_word_organisation_takes_the_capitalised_word_before_it() -> None:
    assert _decode("She joined Penn Fruit today", "OOOGO") == [("Penn Fruit", "ORGANIZATION")]
    # Not a word that starts a sentence or a line, not a lower-case one, not a tagged one.
    assert _decode("Call Acme", "OG") == [("Acme", "ORGANIZATION")]
    assert _decode("Done. Ask Acme", "OOG") == [("Acme", "ORGANIZATION")]
    assert _decode("She joined big Acme", "OOOG") == [("Acme", "ORGANIZATION")]
    found = _decode("She met Oslo Acme", "OOLG")
    assert found == [("Oslo", "LOCATION"), ("Acme", "ORGANIZATION")]
