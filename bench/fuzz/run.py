"""Sending the corpus to a gateway and counting what came back (the I/O around corpus.py)."""

from __future__ import annotations

import http.client
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.fuzz.corpus import Answer, Case, judge


def send(url: str, case: Case, timeout: float = 60.0) -> Answer:
    """One case on a connection of its own; the path exactly as given."""
    host, _, port = url.removeprefix("http://").partition(":")
    try:
        if case.raw is not None:
            return _send_raw(host, int(port), case.raw, timeout)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.putrequest(case.method, case.path, skip_accept_encoding=True)
            for k, v in case.headers:
                conn.putheader(k, v)
            if case.body is not None:
                conn.putheader("content-length", str(len(case.body)))
            conn.endheaders(case.body)
            response = conn.getresponse()
            data = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, headers, data)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, error=f"{type(exc).__name__}: {exc}")


def _send_raw(host: str, port: int, raw: bytes, timeout: float) -> Answer:
    # No half-close after the request: Envoy takes it as the client going away.
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            length = _content_length(head) if sep else None
            if length is not None and len(rest) >= length:
                break
    if not data:
        return Answer(0, error="connection closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Answer(status, headers, body)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or 0)
    return None


@dataclass
class Report:
    """Answers by family and status, and every problem found."""

    by_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: list[tuple[Case, Answer, list[str]]] = field(default_factory=list)
    sent: int = 0

    #: Answers worth a look though not wrong: 5xx to inputs that may be accepted.
    odd: list[tuple[Case, Answer, list[str]]] = field(default_factory=list)

    def notable(self) -> list[tuple[Case, Answer, list[str]]]:
        return self.odd

    def statuses(self) -> list[int]:
        return sorted({s for _, s in self.by_status})

    def families(self) -> list[str]:
        return sorted({f for f, _ in self.by_status})

    def table(self) -> str:
        """Rows: families; columns: statuses; plus the problems per family."""
        statuses = self.statuses()
        bad = Counter(c.family for c, _, _ in self.problems)
        head = ["family", *map(str, statuses), "total", "problems"]
        rows = [head, ["---"] + ["---:"] * (len(head) - 1)]
        for fam in self.families():
            counts = [self.by_status[(fam, s)] for s in statuses]
            rows.append([fam, *map(str, counts), str(sum(counts)), str(bad[fam])])
        totals = [sum(self.by_status[(f, s)] for f in self.families()) for s in statuses]
        rows.append(["all", *map(str, totals), str(self.sent), str(len(self.problems))])
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def run(url: str, corpus: list[Case], workers: int = 4) -> Report:
    """Every case through the gateway (``workers`` at a time), judged."""
    report = Report()
    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(lambda c: send(url, c), corpus))
    for case, answer in zip(corpus, answers, strict=True):
        report.sent += 1
        report.by_status[(case.family, answer.status)] += 1
        problems = judge(case, answer)
        if problems:
            report.problems.append((case, answer, problems))
        elif answer.status >= 500:
            report.odd.append((case, answer, []))
    return report
