"""Personal data: found per kind (and look-alikes not), redacted with placeholders, held to none by
validation, and all of it without a network call."""

import json
import socket
from collections import Counter

import pandas as pd
import pytest
from pydantic import ValidationError

from graftline.tasks.data import pii
from graftline.tasks.data.splits import Split, Splits
from graftline.tasks.data.validate import validate_splits
from graftline.tasks.settings import ValidationParams

FOUND = {  # kind -> (text, the text redacted)
    "email": ("write to jane.roe@example.co.uk about it", "write to <EMAIL> about it"),
    "phone": ("call me on +1 415-555-0132 after six", "call me on <PHONE> after six"),
    "card": ("my card 4111 1111 1111 1111 was charged twice", "my card <CARD> was charged twice"),
    "iban": ("refund to DE89 3704 0044 0532 0130 00 please", "refund to <IBAN> please"),
    "ip": ("the router at 192.168.1.20 drops packets", "the router at <IP> drops packets"),
    "url": ("see https://shop.example.com/orders?id=3 for details", "see <URL> for details"),
}
NOT_FOUND = {
    "16 digits failing the Luhn check (an order number)": "order 1234567812345678 is late",
    "a short number (a ticket)": "Order #16476: the keyboard repeats letters",
    "an amount and a date": "revenue rose to EUR 164.7 mn on 03.02.2011",
    "a missing space after a full stop": "what a film...you will love it.It is great",
    "a shop's name": "bought it on Amazon.com last week",
}


@pytest.fixture(scope="module")
def scanner():
    return pii.Scanner({"order_id": r"ORD-\d{8}"})


@pytest.mark.parametrize("kind", list(FOUND))
def test_each_kind_is_found_and_replaced_by_its_placeholder(scanner, kind):
    text, expected = FOUND[kind]
    assert [f.kind for f in scanner.find(text)] == [kind]
    assert scanner.redact(text) == (expected, {kind: 1})


@pytest.mark.parametrize("case", list(NOT_FOUND))
def test_look_alikes_are_not_personal_data(scanner, case):
    assert scanner.find(NOT_FOUND[case]) == []


def test_user_patterns_overlaps_and_the_dotted_quad_choice(scanner):
    text = "ticket ORD-12345678 from bob@mail.net, build 1.2.3.4"
    redacted, counts = scanner.redact(text)
    # the e-mail's domain is not a second finding; a dotted quad is an IP even as a version (documented)
    assert redacted == "ticket <ORDER_ID> from <EMAIL>, build <IP>"
    assert counts == {"order_id": 1, "email": 1, "ip": 1}
    with pytest.raises(ValidationError, match="not a regular expression"):
        ValidationParams(pii_patterns={"order_id": "ORD-(\\d"})
    with pytest.raises(ValidationError, match="not a usable kind name"):
        ValidationParams(pii_patterns={"email": "x"})


def tricky_texts(n: int, seed: int = 5) -> list[str]:
    """Personal data and look-alikes at random places in long prose: numbers far from their
    neighbours and near the phone windows' edges, extensions, IPv6 forms, numbers in brackets."""
    import random

    rng = random.Random(seed)
    pieces = [text for text, _ in FOUND.values()] + list(NOT_FOUND.values()) + [
        "(030) 1234 5678 ext. 12", "call 555-0199 x 4567", "+44 (0)20 7946 0958", "fe80::1ff:fe23:4567:890a",
        "2001:0db8:0000:0000:0000:ff00:0042:8329", "::1", "id 12-34-56-78-90-12-34", "tel:+33 1 42 68 53 00",
        "IBAN gb82 west 1234 5698 7654 32", "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6", "www.example.org", "4111-1111-1111-1111",
        "ticket ORD-12345678",
    ]  # fmt: skip
    words = "the order arrived late and the screen was cracked so I want a refund".split()
    texts = []
    for _ in range(n):
        parts = [" ".join(rng.choices(words, k=rng.randint(0, 30)))]
        for _ in range(rng.randint(0, 3)):
            parts += [rng.choice(pieces), " ".join(rng.choices(words, k=rng.randint(0, 12)))]
        if rng.random() < 0.3:  # digits scattered through the text
            parts.append(" ".join(str(rng.randint(0, 9999)) for _ in range(rng.randint(2, 8))))
        texts.append(rng.choice([" ", ", ", ".", "; "]).join(parts))
    return texts


def test_the_gates_change_the_speed_never_the_findings(scanner):
    """Every recognizer on every whole text against the scanner's gates and phone windows."""
    ungated = pii.Scanner({"order_id": r"ORD-\d{8}"})
    ungated.gates = [None] * len(ungated.gates)
    texts = tricky_texts(300)
    found = [scanner.find(t) for t in texts]
    assert found == [ungated.find(t) for t in texts]
    kinds = {f.kind for row in found for f in row}
    assert kinds == set(pii.KINDS) | {"order_id"}  # the corpus exercises every kind
    assert sum(not row for row in found) > 30  # and texts holding none


def test_a_column_scanned_or_redacted_on_every_core_reads_as_one_pass(scanner, monkeypatch):
    """Chunks of a column go to forked processes (here from 40 texts, 16 a chunk, so two cores get
    several each): the same kinds, in row order, as one process scanning the texts one by one."""
    texts = pd.Series(tricky_texts(120) + [None, ""] + ["ORD-12345678 shipped"], dtype="str")
    handed_out = []
    spread = pii._in_processes
    monkeypatch.setattr(pii, "_in_processes", lambda *a: handed_out.append(a[3]) or spread(*a))
    monkeypatch.setattr(pii, "PARALLEL_TEXTS", 40)
    monkeypatch.setattr(pii, "SCAN_CHUNK", 16)
    monkeypatch.setattr(pii, "_cores", lambda: 2)
    kinds = scanner.kinds_per_row(texts)
    assert len(handed_out) == 1 and len(handed_out[0]) == 8  # 123 texts in 8 chunks, scanned elsewhere
    assert kinds == scanner.kinds_per_text([t if isinstance(t, str) else "" for t in texts.tolist()])
    assert kinds[-3:] == ["", "", "order_id"] and sum(bool(k) for k in kinds) > 60
    cleaned, counts = scanner.redact_per_row(texts)  # redaction (`validation.pii: redact`) the same way
    assert len(handed_out) == 2
    one_by_one = [scanner.redact(t) if isinstance(t, str) else (None, Counter()) for t in texts.tolist()]
    assert cleaned == [clean for clean, _ in one_by_one] and cleaned[-3:] == [None, "", "<ORDER_ID> shipped"]
    assert counts == sum((c for _, c in one_by_one), Counter()) and counts["order_id"] >= 1


def test_no_network_call_from_building_to_scanning(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network call: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    pii._builtin.cache_clear(), pii._suffixes.cache_clear()  # built again, under the guard
    scanner = pii.Scanner()
    assert [f.kind for text, _ in FOUND.values() for f in scanner.find(text)] == list(FOUND)


def _splits(train_texts: list[str]) -> Splits:
    def split(name, texts):
        labels = ["a", "b"] * (len(texts) // 2)
        return Split(name, pd.DataFrame({"text": texts, "label": labels}), name)

    plain = [f"an ordinary message number {i} about the delivery" for i in range(20)]
    return Splits(split("train", train_texts + plain[: 20 - len(train_texts)]), split("validation", plain[:10]),
                  split("test", [t.replace("message", "note") for t in plain[:10]]))  # fmt: skip


def test_validation_fails_on_personal_data_and_stores_it_only_redacted(tmp_path):
    splits = _splits([FOUND["email"][0], FOUND["card"][0]])
    report = validate_splits(splits, ValidationParams(), tmp_path)
    assert not report.success
    (finding,) = report.findings
    assert (finding.split, finding.check, finding.failing, finding.observed) == (
        "train",
        "personal data",
        "2 of 20 rows",
        "1 email, 1 card",
    )
    assert finding.relax.startswith("validation.pii=redact")
    written = (tmp_path / "report.md").read_text() + (tmp_path / "gx_results.json").read_text()
    assert "write to &lt;EMAIL> about it" in written  # the row is quoted, redacted (markdown-escaped)
    assert "jane.roe@example.co.uk" not in written and "4111 1111 1111 1111" not in written
    results = json.loads((tmp_path / "gx_results.json").read_text())["train"]["results"]
    assert {"email": 1, "card": 1} in [r["result"].get("observed_value") for r in results]


def test_warn_records_a_notice_off_does_not_look_and_redact_replaces_before_validation(tmp_path):
    splits = _splits([FOUND["phone"][0], FOUND["url"][0]])
    warned = validate_splits(splits, ValidationParams(pii="warn"), tmp_path / "warn")
    assert warned.success and [n.check for n in warned.notices] == ["personal data"]
    assert warned.statistics["train_pii_phone_rows"] == 1
    off = validate_splits(splits, ValidationParams(pii="off"), tmp_path / "off")
    assert off.success and not off.notices and "train_pii_phone_rows" not in off.statistics

    redacted, counts = pii.redact_splits(splits, pii.Scanner())
    assert counts == {"phone": 1, "url": 1}
    assert redacted.train.frame["text"].head(2).tolist() == [
        "call me on <PHONE> after six",
        "see <URL> for details",
    ]
    assert redacted.validation.frame.equals(splits.validation.frame)  # nothing to replace: the same rows
    assert validate_splits(redacted, ValidationParams(), tmp_path / "redacted").success


def test_rows_quoted_by_other_checks_are_quoted_redacted(tmp_path):
    splits = _splits([FOUND["card"][0]])
    report = validate_splits(splits, ValidationParams(max_text_chars=44), tmp_path)  # the card row is too long
    assert {f.check for f in report.findings} == {"personal data", "text length"}
    written = (tmp_path / "report.md").read_text() + (tmp_path / "gx_results.json").read_text()
    assert "4111 1111 1111 1111" not in written and "my card &lt;CARD> was charged twice" in written
