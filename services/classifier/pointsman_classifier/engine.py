"""Everything that runs a model, for one batch of prompts at a time.

The default path tokenizes each batch once and runs the shared encoder once; the category and
jailbreak checks read its pooled layers (the jailbreak check through the safety branch, which
runs inside the same pass: ``fastbert.SafetyBranch``). A "bring your own" Hugging Face sequence-classification
directory replaces a head (it has its own tokenizer and weights, so it runs its own pass), and a
token-classification directory adds model-found PII (names, organisations, ...) to the pattern
recognisers. Label maps always come from the model's own ``config.json`` (``id2label``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pointsman_classifier import heads as heads_mod
from pointsman_classifier import piihead
from pointsman_classifier.config import ClassifierConfig, in_flight
from pointsman_classifier.core import ENGINE_STATS, Outputs
from pointsman_classifier.encoder import Encoder, Features, Pending, Prepared, pick_device
from pointsman_classifier.pii import MODEL_TYPES, Finding

log = logging.getLogger(__name__)

#: The shipped safety branch's file stem in ``pointsman_classifier/models`` (and ``heads_dir``).
SAFETY_BRANCH = "safety"


class _LocalModel:
    """A local Hugging Face model directory of one ``AutoModelFor...`` kind (``task``: its name
    in errors), with its tokenizer and its labels in index order."""

    def __init__(
        self, auto: Any, task: str, path: str, device: torch.device, max_length: int,
        dtype: torch.dtype,
    ) -> None:  # fmt: skip
        from transformers import AutoTokenizer

        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{task} model directory {path} not found")
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        model: Any = auto.from_pretrained(path)
        self.model: Any = model.to(device, dtype=dtype).eval()
        self.device = device
        self.max_length = max_length
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]


class SequenceClassifier(_LocalModel):
    """A local Hugging Face ``AutoModelForSequenceClassification`` directory."""

    def __init__(self, path: str, device: torch.device, max_length: int, dtype: torch.dtype):
        from transformers import AutoModelForSequenceClassification

        super().__init__(
            AutoModelForSequenceClassification, "sequence-classification", path, device,
            max_length, dtype,
        )  # fmt: skip

    @torch.inference_mode()
    def probs(self, texts: list[str]) -> npt.NDArray[np.float32]:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        logits = self.model(**enc).logits.float()
        out: npt.NDArray[np.float32] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out


class TokenClassifier(_LocalModel):
    """A local ``AutoModelForTokenClassification`` directory (BIO or plain labels) for PII."""

    def __init__(
        self, path: str, device: torch.device, max_length: int, dtype: torch.dtype, threshold: float
    ):
        from transformers import AutoModelForTokenClassification

        super().__init__(
            AutoModelForTokenClassification, "token-classification", path, device, max_length,
            dtype,
        )  # fmt: skip
        self.threshold = threshold

    @torch.inference_mode()
    def find(self, texts: list[str]) -> list[list[Finding]]:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        offsets = enc.pop("offset_mapping").tolist()
        probs = torch.softmax(self.model(**enc.to(self.device)).logits.float(), dim=-1)
        score, idx = probs.max(dim=-1)
        out: list[list[Finding]] = []
        for b in range(len(texts)):
            out.append(
                spans_from_tokens(
                    [self.labels[i] for i in idx[b].tolist()],
                    score[b].tolist(),
                    offsets[b],
                    self.threshold,
                )
            )
        return out


def spans_from_tokens(
    labels: list[str],
    scores: list[float],
    offsets: list[list[int]],
    threshold: float,
    text: str | None = None,
) -> list[Finding]:
    """Merge per-token labels (``B-X``/``I-X``/``X``/``O``) into character spans of entity X.

    With ``text``, whole words: a word piece glued to the previous one (no space, letters or
    digits on both sides) takes that piece's entity, so a span never ends inside a word; spans
    of one type with at most one space between them are one entity ("909 Pod Strání 954": the
    house number and the street), and so are spans of any types glued together (nothing, "-" or
    "." between: "Patterson-Fletcher", "S.L.U.", the first span's type); a span without a letter or digit is dropped, and the ``n`` of
    an escaped newline (``\\n``, two characters) does not start one.
    """
    if text is not None:
        labels, scores = _whole_words(labels, scores, offsets, threshold, text)
    found: list[Finding] = []
    cur: list[Any] | None = None  # [type, start, end, min score]
    for lab, sc, (start, end) in zip(labels, scores, offsets, strict=True):
        if start == end:  # special or padding token
            continue
        if lab == "O" or sc < threshold:
            if cur is not None:
                found.append(Finding(cur[1], cur[2], cur[0], cur[3], "model"))
                cur = None
            continue
        prefix, _, etype = lab.partition("-") if lab[:2] in ("B-", "I-") else ("", "", lab)
        if cur is not None and cur[0] == etype and prefix != "B":
            cur[2] = end
            cur[3] = min(cur[3], sc)
            continue
        if cur is not None:
            found.append(Finding(cur[1], cur[2], cur[0], cur[3], "model"))
        cur = [etype, start, end, sc]
    if cur is not None:
        found.append(Finding(cur[1], cur[2], cur[0], cur[3], "model"))
    return found if text is None else _tidy(found, text)


#: Types of names: a text that uses capital letters writes them with one.
_NAME_TYPES = frozenset({"PERSON", "ORGANIZATION", "LOCATION"})
#: Between two lines of one postal address: a real line break, with spaces or commas.
_ADDRESS_LINE_GAP = re.compile(r"[ \t,]*\n[\s,]*")
#: A house number before a street that has a number of its own ("788 Fitjabraut 87",
#: "43292 69 Spencer Street"): the group match is the house number, the rest starts at its end.
_HOUSE_NUMBER = re.compile(r"(\d{1,6}[A-Za-z]?) +(?=[^\n,]*\d)")
#: A legal form on its own: an organisation's name ends with it, it is not the name.
_LEGAL_FORM = re.compile(
    r"Inc\.?|Incorporated|Corp\.?|Corporation|Company|Co\.?|Ltd\.?|Limited|Co\.\s?Ltd\.?|LLC|LLP|LP|"
    r"PLC|plc|AG|KG|GmbH|SA|S\.A\.?|SARL|SAS|SpA|S\.p\.A\.?|SRL|S\.L\.?|BV|B\.V\.|NV|N\.V\.|A/S|"
    r"ApS|AB|Oy"
)
#: The words of a name before a legal form: up to four, capitalised but for particles ("van
#: Laarhoven BV", "Analog Devices, Inc.", "Sounds Great, Inc").
_NAME_BEFORE = re.compile(
    r"(?:(?:[A-Z][\w&'.\-]*|&|van|de|der|den|von|du|la|le|e|i|and|y)\s+){0,3}"
    r"[A-Z][\w&'.\-]*,?\s+$"
)
#: How far back a name before a lone legal form is looked for (characters).
_NAME_REACH = 80
#: A capitalised word and one space, before an organisation span.
_WORD_BEFORE = re.compile(r"(?<![\w'&\-])[A-Z][\w'&\-]*( )$")
#: Where a sentence or a line starts: a capitalised word after it may be capitalised for that.
_SENTENCE_END = frozenset('.!?:\n"(')
#: Runs of digits.
_NUMBER = re.compile(r"\d+")
#: A place and the postcode after it ("Rotterdam 21490", "Montreal KA19 9EJ"): group 1 the
#: place (no digit), group 2 the postcode (four to six digits, or the British form).
_PLACE_POSTCODE = re.compile(
    r"([^\d,\n]*[^\W\d_]) (\d{4,6}(?:-\d{3,4})?|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})"
)
#: A state or province code ("MV 85768"): its postcode stays with it.
_REGION_CODE = re.compile(r"[A-Z]{1,3}")


def _tidy(found: list[Finding], text: str) -> list[Finding]:
    """Spans as the data this head is measured on marks them (``pointsman eval pii``):

    - a word glued to the previous span, or a span of its type one space away, continues it;
    - in a text that uses capital letters, a name (person, organisation, place) without a capital
      letter or a digit is not one: "will", "rent", the "s" of "'s", the "o" of "y/o" (the
      MiniLM is uncased and cannot see it; in the training data no person span is all lower
      case, 7 of 6,946 organisations are, and the places that are, Faker's "nan" placeholder).
      A text without any capital keeps them;
    - place spans on consecutive lines of a postal address are one address (the training data
      marks every such block as one span, 266 to 0);
    - on one line, a house number before a street that has a number of its own is an entity of
      its own ("788" and "Fitjabraut 87": 414 to 143 in presidio's templates of the training
      data, 1,519 to 204 in ours), and so is a postcode after a place ("Rotterdam" and "21490":
      300 to 30, 942 to 74);
    - a legal form alone ("Inc.", "BV") is the end of an organisation's name, not the name;
    - a one-word place or organisation right next to a person's name is part of the name, and a
      lone letter is no name (7 of 55,000 name spans in the training data are one letter);
    - a one-word organisation takes the capitalised word before it, unless a sentence starts
      there.
    """
    cased = text != text.lower()
    out: list[Finding] = []
    for f in found:
        start = f.start
        if 0 < start < f.end and text[start - 1] == "\\" and text[start] in "nt":
            start += 1
        if not any(c.isalnum() for c in text[start : f.end]):
            continue
        last = out[-1] if out else None
        gap = text[last.end : start] if last is not None and last.end <= start else None
        if last is not None and (
            (last.entity_type == f.entity_type and gap in ("", " "))
            or gap in ("", "-", ".")
            or (
                last.entity_type == f.entity_type == "LOCATION"
                and gap is not None
                and _ADDRESS_LINE_GAP.fullmatch(gap) is not None
            )
        ):
            # One entity: same type with at most a space between, or any two spans glued
            # together ("Patterson-Fletcher", "S.L.U.", a date's pieces): a word holds one
            # entity, the first span's type; or two lines of one address.
            out[-1] = Finding(
                last.start, f.end, last.entity_type, min(last.score, f.score), f.source
            )
        else:
            out.append(Finding(start, f.end, f.entity_type, f.score, f.source))
    out = [
        f
        for f in out
        if f.entity_type not in _NAME_TYPES or not _not_a_name(text[f.start : f.end], cased)
    ]
    out = _one_word_organisations(_names_of_people(_legal_forms(out, text), text), text)
    return [piece for f in out for piece in _address_parts(f, text)]


def _one_word_organisations(found: list[Finding], text: str) -> list[Finding]:
    """A one-word organisation span takes an untagged capitalised word right before it ("Penn"
    of "Penn Fruit", "Everyday" of "Everyday Health"), unless that word starts a sentence or a
    line ("Ask Google"). Training split, presidio templates: ORGANIZATION F1 0.851 -> 0.862."""
    out: list[Finding] = []
    for f in found:
        if f.entity_type == "ORGANIZATION" and " " not in text[f.start : f.end]:
            low = max(f.start - 40, out[-1].end if out else 0)
            m = _WORD_BEFORE.search(text, low, f.start)
            if m is not None:
                before = text[: m.start()].rstrip(" ")
                if before and before[-1] not in _SENTENCE_END and not before.endswith("\\n"):
                    f = Finding(m.start(), f.end, f.entity_type, f.score, f.source)
        out.append(f)
    return out


def _legal_forms(found: list[Finding], text: str) -> list[Finding]:
    """A lone legal form ("Inc.", "BV", "S.A.") tagged as an organisation takes the name before
    it: the span right before it (a space or ", " between), whatever its type, or else the
    capitalised words there."""
    out: list[Finding] = []
    for f in found:
        if f.entity_type == "ORGANIZATION" and _LEGAL_FORM.fullmatch(text, f.start, f.end):
            last = out[-1] if out else None
            if last is not None and text[last.end : f.start] in ("", " ", ", "):
                out[-1] = Finding(
                    last.start, f.end, f.entity_type, min(last.score, f.score), f.source
                )
                continue
            low = max(f.start - _NAME_REACH, last.end if last is not None else 0, 0)
            m = _NAME_BEFORE.search(text, low, f.start)
            if m is not None:
                f = Finding(m.start(), f.end, f.entity_type, f.score, f.source)
        out.append(f)
    return out


def _not_a_name(span: str, cased: bool) -> bool:
    """A lone letter ("C" of "C'mon"), or in a cased text a word without a capital or a digit."""
    if sum(c.isalnum() for c in span) == 1 and not span.strip().isdigit():
        return True
    return cased and not any(c.isupper() or c.isdigit() for c in span)


def _names_of_people(found: list[Finding], text: str) -> list[Finding]:
    """A one-word place or organisation span one space before or after a person's name is part
    of that name ("Antu" + "Valencia", "Chase" + "Usamov"): the training data never puts an
    organisation one space from a person, and a place 46 times against 19,455 person spans;
    legal forms aside ("Haymaker Corp.")."""
    out: list[Finding] = []
    for f in found:
        last = out[-1] if out else None
        if last is not None and text[last.end : f.start] == " ":
            pair = (last.entity_type, f.entity_type)
            other = f if pair[0] == "PERSON" else last if pair[1] == "PERSON" else None
            if (
                other is not None
                and other.entity_type in ("LOCATION", "ORGANIZATION")
                and " " not in text[other.start : other.end]
                and not _LEGAL_FORM.fullmatch(text, other.start, other.end)
            ):
                out[-1] = Finding(last.start, f.end, "PERSON", min(last.score, f.score), f.source)
                continue
        out.append(f)
    return out


def _address_parts(f: Finding, text: str) -> list[Finding]:
    """``f``, or for a one-line place span made of a house number and a numbered street, or of a
    place and its postcode, the two parts."""
    if f.entity_type != "LOCATION" or any(c in "\n," for c in text[f.start : f.end]):
        return [f]
    m = _HOUSE_NUMBER.match(text, f.start, f.end)
    if m is not None and _street_with_number(text[m.end() : f.end]):
        cut, rest = m.end(1), m.end()
    else:
        m = _PLACE_POSTCODE.fullmatch(text, f.start, f.end)
        if m is None or _REGION_CODE.fullmatch(m.group(1)):
            return [f]
        cut, rest = m.end(1), m.start(2)
    return [
        Finding(f.start, cut, f.entity_type, f.score, f.source),
        Finding(rest, f.end, f.entity_type, f.score, f.source),
    ]


def _street_with_number(rest: str) -> bool:
    """Whether ``rest`` (what follows a house number) is a street and its number alone: a name
    with one number at either end ("Fitjabraut 87", "69 Spencer Street"). A whole address on
    one line ("154 Dodson Street Apt. 046 Mayfield") is one span in the data, and "9691 2587"
    holds no street."""
    words = rest.split()
    numbered = [w for w in words if _NUMBER.search(w)]
    return (
        len(numbered) == 1
        and len(words) > 1
        and numbered[0] in (words[0], words[-1])
        and any(c.isalpha() for c in rest)
    )


def _whole_words(
    labels: list[str], scores: list[float], offsets: list[list[int]], threshold: float, text: str
) -> tuple[list[str], list[float]]:
    labels, scores = list(labels), list(scores)
    prev_end = -1
    for k, (start, end) in enumerate(offsets):
        if start == end:
            prev_end = -1
            continue
        glued = (
            k > 0
            and start == prev_end
            and 0 < start < len(text)
            and text[start - 1].isalnum()
            and text[start].isalnum()
        )
        if glued:
            before = labels[k - 1]
            if before == "O" or scores[k - 1] < threshold:
                labels[k], scores[k] = "O", 1.0
            else:
                labels[k] = "I-" + (before[2:] if before[:2] in ("B-", "I-") else before)
                scores[k] = scores[k - 1]
        prev_end = end
    return labels, scores


#: Tokens shared by consecutive windows of a long prompt (PII token head).
WINDOW_STRIDE = 32


def decode_tags(
    labels: tuple[str, ...],
    probs: npt.NDArray[np.float32],
    offsets: list[list[int]],
    threshold: float,
    text: str,
) -> list[Finding]:
    """Spans from BIO tag probabilities ``[tokens, labels]``: each token takes its most likely
    tag, scored by its entity's probability (``B-X`` and ``I-X`` together: where a word starts
    an entity or continues one is often a close call, whether it is one is not)."""
    ids = probs.argmax(axis=1).tolist()
    kind = [lab[2:] if lab[:2] in ("B-", "I-") else lab for lab in labels]
    by_kind: dict[str, list[int]] = {}
    for j, k in enumerate(kind):
        by_kind.setdefault(k, []).append(j)
    scores = [float(probs[t, by_kind[kind[i]]].sum()) for t, i in enumerate(ids)]
    return spans_from_tokens([labels[i] for i in ids], scores, offsets, threshold, text)


def _union(a: list[Finding], b: list[Finding]) -> list[Finding]:
    """Findings of overlapping windows: overlapping spans of one type become their union."""
    out: list[Finding] = []
    for f in sorted(a + b):
        last = out[-1] if out else None
        if last is not None and last.entity_type == f.entity_type and f.start < last.end:
            out[-1] = Finding(
                last.start, max(last.end, f.end), f.entity_type, min(last.score, f.score), f.source
            )
        else:
            out.append(f)
    return out


def safety_branch_path(cfg: ClassifierConfig, heads_dir: Path | None) -> Path | None:
    """The safety branch the jailbreak check runs: ``safety.*`` in ``heads_dir``, else the
    shipped one, unless jailbreak checks are off, a model is configured
    (``jailbreak.model``) or ``heads_dir`` holds a frozen-feature ``jailbreak.*`` head."""
    if not cfg.jailbreak.enabled or cfg.jailbreak.model:
        return None
    if heads_dir is not None:
        if (heads_dir / f"{SAFETY_BRANCH}.safetensors").exists():
            return heads_dir / f"{SAFETY_BRANCH}.safetensors"
        if (heads_dir / "jailbreak.safetensors").exists():
            return None
    return heads_mod.shipped_dir() / f"{SAFETY_BRANCH}.safetensors"


def branch_probs(
    pooled: npt.NDArray[np.float32], weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """The safety branch's head: softmax of a linear layer over its pooled output."""
    z = pooled @ weight.T + bias
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return p


def window_max(
    scores: npt.NDArray[np.float32], n: int, owner: tuple[int, ...], margin: float = 0.0
) -> npt.NDArray[np.float32]:
    """Per text the highest score of its windows: rows ``0..n-1`` are the texts' first windows,
    row ``n + j`` a further window of text ``owner[j]``.

    A further window's score first loses ``margin`` in log-odds (``s / (s + (1 - s) e^margin)``):
    every window is one more chance of a false positive, and a long benign prompt has many.
    """
    out = scores[:n].copy()
    if owner:
        more = scores[n:].astype(np.float64)
        more = more / (more + (1.0 - more) * np.exp(margin))
        np.maximum.at(out, np.asarray(owner, dtype=np.int64), more.astype(out.dtype))
    return out


@dataclass(frozen=True)
class Batch:
    """Texts with their tokenization for the shared encoder (:meth:`Engine.prepare`)."""

    texts: list[str]
    encoded: Prepared
    prepare_s: float = 0.0


@dataclass(frozen=True)
class InFlight:
    """A batch whose encoder pass was launched (:meth:`Engine.launch`)."""

    batch: Batch
    pending: Pending


def one_blas_thread() -> None:
    """numpy's BLAS on one thread in the engine's process (torch's own threads are not BLAS's).

    The heads are matrix products of a batch's few hundred rows. Measured on the 2-core
    development machine, with other jobs running: the shipped category and jailbreak heads took
    48 ms for a batch of 8 with OpenBLAS's default threads (they spin, waiting for cores the
    encoder and other processes hold) and 0.23 ms on one thread; a batch of 64, 0.7 ms.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1, user_api="blas")


class Engine:
    """Loads every configured model once and classifies batches of prompt texts."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        one_blas_thread()
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        heads_dir = Path(cfg.heads_dir) if cfg.heads_dir else None
        branch = safety_branch_path(cfg, heads_dir)
        self.encoder = Encoder(
            cfg.encoder,
            device=cfg.device,
            max_length=cfg.max_length,
            dtype=cfg.dtype,
            threads=cfg.threads or None,
            quantize=cfg.quantize,
            max_batch=cfg.batching.max_batch,
            cuda_graphs=cfg.cuda_graphs,
            branch=branch,
        )
        dtype = next(self.encoder.model.parameters()).dtype
        self.category_model: SequenceClassifier | None = None
        self.category_head: heads_mod.Head | None = None
        if cfg.category.model:
            self.category_model = SequenceClassifier(
                cfg.category.model, self.device, cfg.max_length, dtype
            )
        else:
            self.category_head = heads_mod.load("category", heads_dir)
            heads_mod.check_encoder(
                self.category_head, self.encoder.hidden_size, self.encoder.n_layers
            )
        self.jailbreak_model: SequenceClassifier | None = None
        self.jailbreak_head: heads_mod.Head | None = None
        self._jb_positive: list[int] = []
        if cfg.jailbreak.enabled:
            if cfg.jailbreak.model:
                self.jailbreak_model = SequenceClassifier(
                    cfg.jailbreak.model, self.device, cfg.max_length, dtype
                )
                labels = self.jailbreak_model.labels
            elif self.encoder.branch is not None:
                labels = self.encoder.branch.labels
            else:
                self.jailbreak_head = heads_mod.load("jailbreak", heads_dir)
                heads_mod.check_encoder(
                    self.jailbreak_head, self.encoder.hidden_size, self.encoder.n_layers
                )
                labels = self.jailbreak_head.labels
            wanted = {p.lower() for p in cfg.jailbreak.positive_labels}
            self._jb_positive = [i for i, lab in enumerate(labels) if lab.lower() in wanted]
            if not self._jb_positive:
                raise ValueError(
                    f"jailbreak model labels {labels} contain none of "
                    f"jailbreak.positive_labels {cfg.jailbreak.positive_labels}"
                )
        #: Batches to hand over at once (``batching.in_flight`` resolved for the device).
        self.in_flight = in_flight(cfg.batching, self.device.type)
        self.depth = self._depth()
        # The depth argument of the encoder: None = every layer (the cache's embedding needs it).
        self._encode_depth = None if self.depth == self.encoder.n_layers else self.depth
        self._run_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(ENGINE_STATS, 0.0)
        self.pii_model: TokenClassifier | None = None
        self.pii_head: piihead.PiiBranch | None = None
        if cfg.pii.enabled and cfg.pii.model:
            self.pii_model = TokenClassifier(
                cfg.pii.model, self.device, cfg.max_length, dtype, cfg.pii.model_threshold
            )
        elif cfg.pii.enabled and cfg.pii.ner:
            self.pii_head = self._load_pii_head(heads_dir)
            if self.pii_head is not None:
                self.depth = max(self.depth, self.pii_head.at)
                self._encode_depth = None if self.depth == self.encoder.n_layers else self.depth

    def _load_pii_head(self, heads_dir: Path | None) -> piihead.PiiBranch | None:
        """The PII token head of ``heads_dir`` (else the shipped one), attached to the encoder."""
        base = heads_dir if heads_dir and (heads_dir / f"{piihead.NAME}.json").exists() else None
        branch = piihead.load(base or heads_mod.shipped_dir())
        if branch is None:
            log.warning("pii: no token head found; names and places are not detected")
            return None
        if branch.shape["hidden"] != self.encoder.hidden_size or branch.at > self.encoder.n_layers:
            raise heads_mod.HeadError(
                f"pii head expects {branch.shape['hidden']} features at layer {branch.at}, but the "
                f"encoder gives {self.encoder.hidden_size} with {self.encoder.n_layers} layers; "
                "retrain it for this encoder (python -m pointsman_lab.pii_train)"
            )
        if not self.encoder.attach_branch(branch):
            log.warning("pii: the token head needs a BERT encoder; names and places not detected")
            return None
        return branch

    def pii_types(self) -> list[str]:
        """Entity types the configured PII model or token head finds (the patterns aside)."""
        if self.pii_model is not None:
            return sorted({lab.partition("-")[2] or lab for lab in self.pii_model.labels} - {"O"})
        return list(MODEL_TYPES) if self.pii_head is not None else []

    def _pii_spans(
        self,
        text: str,
        probs: npt.NDArray[np.float32],
        n_tokens: int,
        further: Sequence[npt.NDArray[np.float32]] = (),
    ) -> list[Finding]:
        """Spans from the token head's tag probabilities of ``text``'s first window, plus those
        of the windows beyond it when the text had more tokens than ``max_length`` (``further``:
        their tag probabilities from the batch's own pass, when it had them all)."""
        assert self.pii_head is not None
        threshold = self.cfg.pii.model_threshold
        found: list[Finding] = []
        # Column 0 is "O": a text whose every token is most likely "O" has no entity.
        if bool((probs.argmax(axis=1) != 0).any()):
            # Character offsets only for texts with a tag: most prompts have none.
            enc = self.encoder.tokenizer(
                self.encoder._clip([text]),
                truncation=True,
                max_length=self.encoder.max_length,
                return_offsets_mapping=True,
            )
            offsets = [list(o) for o in enc["offset_mapping"][0]]
            if len(offsets) == len(probs):
                found = decode_tags(self.pii_head.labels, probs, offsets, threshold, text)
        if n_tokens >= self.encoder.max_length or len(text) > 8 * self.encoder.max_length:
            found = _union(found, self._pii_windows(text, further))
        return found

    @torch.inference_mode()
    def _pii_windows(
        self, text: str, further: Sequence[npt.NDArray[np.float32]] = ()
    ) -> list[Finding]:
        """The token head over windows 2.. of a long text (``max_length`` tokens each,
        overlapping by :data:`WINDOW_STRIDE`).

        The safety branch's windows are the same windows (same tokenizer, length and stride), and
        the batch's pass already ran the PII head on them: when it has every one of them
        (``further``), only the offsets are computed here: a 7,000-character prompt took 319
        instead of 526 ms on the CPU (``python -m bench.classifier.long_prompts``). Otherwise
        (more windows than ``jailbreak.max_windows``) a pass through the trunk up to the head's
        layer."""
        assert self.pii_head is not None and self.encoder.fast is not None
        enc = self.encoder.tokenizer(
            text,
            truncation=True,
            max_length=self.encoder.max_length,
            stride=WINDOW_STRIDE,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=True,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"][1:], enc["attention_mask"][1:]
        if not len(ids):
            return []
        counts = [int(mask[w].sum()) for w in range(len(ids))]
        rows: Sequence[npt.NDArray[np.float32]]
        if len(further) == len(ids) and all(
            len(f) == n for f, n in zip(further, counts, strict=True)
        ):
            rows = further
        else:
            rows = self._pii_pass(ids, mask, counts)
        threshold = self.cfg.pii.model_threshold
        found: list[Finding] = []
        for w, n in enumerate(counts):
            offsets = [list(o) for o in enc["offset_mapping"][w + 1][:n].tolist()]
            found = _union(
                found, decode_tags(self.pii_head.labels, rows[w][:n], offsets, threshold, text)
            )
        return found

    def _pii_pass(
        self, ids: torch.Tensor, mask: torch.Tensor, counts: list[int]
    ) -> list[npt.NDArray[np.float32]]:
        """The PII head's tag probabilities of windows, through the trunk up to its layer (the
        safety branch left out). With int8 weights each window runs alone, as in the encoder:
        dynamic quantization scales a whole call's activations at once, and padded neighbours
        changed the entities found (issue 13)."""
        assert self.pii_head is not None and self.encoder.fast is not None
        dev, at = self.device, self.pii_head.at
        calls = [(ids, mask)]
        if self.encoder.quantize == "int8":
            calls = [(ids[w : w + 1, :n], mask[w : w + 1, :n]) for w, n in enumerate(counts)]
        rows: list[npt.NDArray[np.float32]] = []
        for i, m in calls:
            _, side = self.encoder.fast.run(i.to(dev), m.to(dev), at, masked=True, safety=False)
            assert side is not None
            rows.extend(side.float().cpu().numpy())
        return rows

    def _depth(self) -> int:
        """How many encoder layers a request needs: the deepest one a head reads, or all of them
        when the semantic cache needs the sentence embedding (the last layer's mean).

        The shipped heads read layers 1-4 of the MiniLM's 6, so without the cache the top two
        layers (a third of the encoder's work) are never computed.
        """
        n = self.encoder.n_layers
        if self.cfg.cache.enabled:
            return n
        wanted = [0]
        for head in (self.category_head, self.jailbreak_head):
            if head is not None:
                wanted += [i if i >= 0 else n + 1 + i for i in head.layers]
        if self.encoder.branch is not None:
            wanted.append(self.encoder.branch.start)
        return max(wanted)  # the PII head's layer is added when it is attached

    @property
    def name(self) -> str:
        return f"{self.encoder.name}@{self.device.type}"

    def info(self) -> dict[str, Any]:
        """What runs, for logs and benchmarks."""
        return {
            "name": self.name,
            "device": str(self.device),
            "layers": self.encoder.n_layers,
            "hidden": self.encoder.hidden_size,
            "quantize": self.encoder.quantize,
            "fast_path": self.encoder.fast is not None,
            "cuda_graphs": self.encoder.gpu is not None and self.encoder.gpu.use_graphs,
            "depth": self.depth,
            "threads": torch.get_num_threads(),
        }

    def warm_up(self) -> None:
        """One pass before serving, so the first request does not pay for lazy initialisation."""
        self.encoder.warm_shapes(self.cfg.batching.max_batch, self._encode_depth)
        self.run(["warm-up", "a second, somewhat longer warm-up text for the encoder"])

    def stats(self) -> dict[str, float]:
        """Counters since start (:data:`ENGINE_STATS`): ``device_s`` is the encoder's time on its
        device (GPU: measured with CUDA events), so its growth over wall time is the busy share."""
        with self._stats_lock:
            return dict(self._stats)

    def prepare(self, texts: list[str]) -> Batch:
        """The CPU half of a batch: tokenization for the shared encoder. Thread-safe."""
        start = time.perf_counter()
        windows = self.cfg.jailbreak.max_windows if self.encoder.branch is not None else 1
        encoded = self.encoder.prepare(texts, windows)
        return Batch(texts, encoded, time.perf_counter() - start)

    def run(self, texts: list[str]) -> list[Outputs]:
        """Classify one batch. Concurrent callers form a pipeline: each tokenizes its batch
        (the Rust tokenizer releases the GIL) while another's forward pass runs, and the forward
        passes themselves take turns."""
        batch = self.prepare(texts)
        with self._run_lock:
            return self.run_prepared(batch)

    def run_prepared(self, batch: Batch) -> list[Outputs]:
        """The models over a batch from :meth:`prepare` (one caller at a time)."""
        return self.finish(self.launch(batch))[0]

    def launch(self, batch: Batch) -> InFlight:
        """Start the shared encoder on a prepared batch (on a GPU: enqueue it and return)."""
        # The shared encoder always runs, as deep as the heads and the semantic cache need.
        return InFlight(batch, self.encoder.launch(batch.encoded, self._encode_depth))

    def finish(self, flight: InFlight) -> tuple[list[Outputs], dict[str, float]]:
        """Wait for a launched batch and run the heads: the outputs, and this batch's counters
        (:data:`ENGINE_STATS`). Launching the next batch before finishing this one keeps the GPU
        busy while the CPU runs the heads."""
        start = time.perf_counter()
        batch = flight.batch
        texts = batch.texts
        outs = [Outputs() for _ in texts]
        feats: Features
        every, device_s = self.encoder.collect(flight.pending)
        feats = every.head(len(texts))  # without the further windows of long texts
        # Only the semantic cache reads the sentence embedding (the encoder then runs every layer).
        emb = feats.embedding() if self.cfg.cache.enabled else None
        for i, o in enumerate(outs):
            o.embedding = emb[i] if emb is not None else None
            o.tokens = feats.tokens[i]
        cat_probs: npt.NDArray[np.float32] | None = None
        cat_labels: list[str] = []
        if self.category_head is not None:
            cat_probs, cat_labels = self.category_head.probs(feats), self.category_head.labels
        elif self.category_model is not None:
            cat_probs, cat_labels = self.category_model.probs(texts), self.category_model.labels
        if cat_probs is not None:
            for i, o in enumerate(outs):
                o.categories = dict(zip(cat_labels, cat_probs[i].tolist(), strict=True))
        jb: npt.NDArray[np.float32] | None = None
        branch = self.encoder.branch
        if branch is not None and every.branch is not None and self.jailbreak_model is None:
            jb = branch_probs(every.branch, branch.head_weight, branch.head_bias)
        elif self.jailbreak_head is not None:
            jb = self.jailbreak_head.probs(feats)
        elif self.jailbreak_model is not None:
            jb = self.jailbreak_model.probs(texts)
        if jb is not None:
            score = window_max(
                jb[:, self._jb_positive].sum(axis=1),
                len(texts),
                batch.encoded.owner,
                self.cfg.jailbreak.window_margin,
            )
            for i, o in enumerate(outs):
                o.jailbreak = float(score[i])
        if self.pii_model is not None:
            for o, found in zip(outs, self.pii_model.find(texts), strict=True):
                o.pii = found
        elif self.pii_head is not None and feats.side is not None:
            further: list[list[npt.NDArray[np.float32]]] = [[] for _ in texts]
            if every.side is not None:
                for j, i in enumerate(batch.encoded.owner):
                    further[i].append(every.side[len(texts) + j])
            for i, o in enumerate(outs):
                o.pii = self._pii_spans(texts[i], feats.side[i], feats.tokens[i], further[i])
        stats = {
            "batches": 1.0,
            "items": float(len(texts)),
            "tokens": float(sum(feats.tokens)),
            "prepare_s": batch.prepare_s,
            "device_s": device_s,
            "finish_s": time.perf_counter() - start,
        }
        with self._stats_lock:
            for k, v in stats.items():
                self._stats[k] += v
        return outs, stats
