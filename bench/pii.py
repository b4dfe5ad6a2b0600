"""Personal-data detection on a seeded synthetic corpus of customer-service messages.

The corpus is written here (no dataset has labelled personal data): messages from templates, with
e-mail addresses, phone numbers (US, GB, DE, FR, international), payment cards (Luhn-valid),
IBANs (DE, GB, FR, NL; valid check digits), IPv4/IPv6 addresses and URLs injected at known places,
and look-alikes that are not personal data (order numbers failing the Luhn check, short ticket
numbers, amounts, dates, shop names). Prints recall and precision per kind (a found span counts
when it overlaps an injected span of the same kind), the scan time for the corpus, and the number
of network connections attempted (every attempt is refused and counted).

With `--store-scan`, the corpus (labelled by topic) then goes through a whole `graftline run` with
`validation.pii=redact` in a new graftline home, and every stored file of it (the MLflow database,
the artifacts, Parquet decoded) is searched for each injected string; model weight files hold
tensors, not text, and are listed as skipped.

    .venv/bin/python bench/pii.py                    # 1 000 messages, seed 7
    .venv/bin/python bench/pii.py --messages 5000 --seed 1
    .venv/bin/python bench/pii.py --store-scan       # plus the run and the scan; ~3 min on 2 cores
Results also go to bench/results/pii.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import string
import sys
import time
from pathlib import Path

OPENINGS = [
    "Hi, {x} is where you can reach me about the refund.",
    "My order never arrived. Please contact me at {x}.",
    "The invoice was sent to {x} but I never got it.",
    "Hello support, {x} is the detail you asked for.",
    "I was charged twice, see {x} for the account.",
    "Can someone look into this? {x}",
    "As requested: {x}. Thanks for the quick help!",
    "Please update my profile, the new one is {x}.",
]
FILLERS = [
    "The package was damaged and the screen cracked.",
    "I have been waiting for two weeks now.",
    "Order #{short} still shows as processing.",
    "My order number is {order} if that helps.",
    "It cost {amount} EUR on {date}, which is too much.",
    "I bought it on Amazon.com last month.",
    "The app version {version_like} keeps crashing.",
    "Thank you for your patience.",
    "Tracking says it left the warehouse on {date}.",
]
NAMES = ["anna", "bo", "chen", "dmitri", "eve", "farah", "gus", "hana", "ivan", "jo", "kofi", "lena"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.de", "shop.example.net"]


def luhn_complete(digits: str) -> str:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return digits + str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("37", 15), ("6011", 16)])
    number = luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1)))
    if rng.random() < 0.5:
        return " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return number


def iban(rng: random.Random) -> str:
    country, body_length = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14)])
    if country == "GB":
        body = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        body += "".join(rng.choice(string.digits) for _ in range(14))
    elif country == "NL":
        body = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        body += "".join(rng.choice(string.digits) for _ in range(10))
    else:
        body = "".join(rng.choice(string.digits) for _ in range(body_length))
    numeric = "".join(str(int(c, 36)) for c in body + country + "00")
    code = f"{country}{98 - int(numeric) % 97:02d}{body}"
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4)) if rng.random() < 0.5 else code


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            lambda: f"(212) {rng.randint(200, 999)}-{d(4)}",
            lambda: f"+1 312-{rng.randint(200, 999)}-{d(4)}",
            lambda: f"020 7946 {d(4)}",
            lambda: f"+44 20 7946 {d(4)}",
            lambda: f"+49 30 {d(8)}",
            lambda: f"030 {d(8)}",
            lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            lambda: f"07700 900{d(3)}",
        ]
    )()


def email(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)}.{rng.choice(NAMES)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"


def ip(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))


def url(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: f"https://{rng.choice(DOMAINS)}/orders/{rng.randint(1000, 9999)}",
            lambda: f"http://{rng.choice(DOMAINS)}/u/{rng.choice(NAMES)}",
            lambda: f"www.{rng.choice(DOMAINS)}",
        ]
    )()


MAKERS = {"email": email, "phone": phone, "card": card, "iban": iban, "ip": ip, "url": url}


def filler(rng: random.Random) -> str:
    values = {
        "short": rng.randint(1000, 99999),
        "order": "".join(rng.choice(string.digits) for _ in range(16)),  # rarely Luhn-valid (1 in 10)
        "amount": f"{rng.randint(5, 999)}.{rng.randint(0, 99):02d}",
        "date": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.20{rng.randint(10, 26)}",
        "version_like": f"{rng.randint(1, 9)}.{rng.randint(0, 20)}",
    }
    return rng.choice(FILLERS).format(**values)


def corpus(messages: int, seed: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """(message, [(kind, start, end), ...]) with 0-2 injected findings per message."""
    rng = random.Random(seed)
    out = []
    for _ in range(messages):
        parts, truth, text = [], [], ""
        for _ in range(rng.choice([0, 1, 1, 2])):
            kind = rng.choice(list(MAKERS))
            value = MAKERS[kind](rng)
            opening = rng.choice(OPENINGS)
            prefix = (text + " " if text else "") + opening[: opening.index("{x}")]
            truth.append((kind, len(prefix), len(prefix) + len(value)))
            text = prefix + value + opening[opening.index("{x}") + 3 :]
        for _ in range(rng.randint(1, 2)):
            text = (text + " " if text else "") + filler(rng)
        parts.append(text)
        out.append((text, truth))
    return out


TOPICS = {"billing": "About my bill:", "delivery": "About my delivery:"}
WEIGHTS = {".safetensors", ".onnx", ".pt", ".bin"}


def store_scan(messages: list, seed: int) -> dict:
    """`graftline run --set validation.pii=redact` on the corpus, then every stored byte searched."""
    import subprocess
    import tempfile

    import pandas as pd

    rng = random.Random(seed)
    labels = [rng.choice(list(TOPICS)) for _ in messages]
    rows = [f"{TOPICS[label]} {text}" for label, (text, _) in zip(labels, messages, strict=True)]
    secrets = sorted({text[start:end] for text, truth in messages for _, start, end in truth})
    with tempfile.TemporaryDirectory(prefix="graftline-pii-") as tmp:
        folder = Path(tmp)
        pd.DataFrame({"text": rows, "label": labels}).to_csv(folder / "messages.csv", index=False)
        started = time.perf_counter()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "graftline"), "run", "--train", "messages.csv",
             "--model-name", "pii-bench", "--set", "validation.pii=redact", "--set", "finetune.epochs=1",
             "--set", "distill.enabled=false", "--set", "export.enabled=false", "--set", "registry.promote_to=none",
             # templated messages repeat, and more so once redacted: the data-quality bounds are not the point
             "--set", "validation.max_overlap_fraction=0.2", "--set", "validation.max_duplicate_fraction=0.5"],
            cwd=folder, env={**os.environ, "GRAFTLINE_HOME": str(folder / "home"), "GRAFTLINE_PROGRESS": "off"},
            capture_output=True, text=True,
        )  # fmt: skip
        run_seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"graftline run failed:\n{done.stderr[-3000:]}")
        scanned, skipped, leaked, placeholders = 0, [], set(), 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "messages.csv"):
            if path.suffix in WEIGHTS:
                skipped.append(str(path.relative_to(folder)))
                continue
            data = pd.read_parquet(path).to_csv().encode() if path.suffix == ".parquet" else path.read_bytes()
            scanned += len(data)
            placeholders += data.count(b"<EMAIL>")
            leaked |= {secret for secret in secrets if secret.encode() in data}
    return {
        "run_seconds": run_seconds,
        "secrets": len(secrets),
        "bytes_scanned": scanned,
        "weight_files_skipped": skipped,
        "leaked": sorted(leaked),
        "email_placeholders_found": placeholders,
    }


def score(found: list, truth: list) -> tuple[dict, dict, dict]:
    tp, fp, fn = {}, {}, {}
    for kind, start, end in found:
        hit = any(k == kind and start < e and s < end for k, s, e in truth)
        (tp if hit else fp)[kind] = (tp if hit else fp).get(kind, 0) + 1
    for kind, start, end in truth:
        if not any(k == kind and start < e and s < end for k, s, e in found):
            fn[kind] = fn.get(kind, 0) + 1
    return tp, fp, fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "pii.json")
    parser.add_argument("--store-scan", action="store_true", help="then graftline run (pii=redact) and scan its store")
    args = parser.parse_args()

    attempts = []

    def refuse(*call, **kwargs):
        attempts.append(repr(call[1:])[:80])
        raise OSError("network refused by bench/pii.py")

    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    socket.socket.connect, socket.getaddrinfo = refuse, refuse
    started = time.perf_counter()
    from graftline.tasks.data.pii import Scanner

    scanner = Scanner()
    scanner.find("warm-up: jo@example.com +1 312-555-0100")
    ready = time.perf_counter() - started
    messages = corpus(args.messages, args.seed)
    started = time.perf_counter()
    found = [[(f.kind, f.start, f.end) for f in scanner.find(text)] for text, _ in messages]
    seconds = time.perf_counter() - started

    totals = {name: {} for name in ("tp", "fp", "fn")}
    for predicted, (_, truth) in zip(found, messages, strict=True):
        for name, counts in zip(("tp", "fp", "fn"), score(predicted, truth), strict=True):
            for kind, n in counts.items():
                totals[name][kind] = totals[name].get(kind, 0) + n
    rows = []
    print(f"{args.messages} messages (seed {args.seed}): scanned in {seconds:.2f} s, scanner ready in {ready:.1f} s "
          f"(imports included), {len(attempts)} network attempts")  # fmt: skip
    print("| kind | injected | found | recall | precision |\n|:--|--:|--:|--:|--:|")
    for kind in MAKERS:
        tp, fp, fn = (totals[n].get(kind, 0) for n in ("tp", "fp", "fn"))
        recall, precision = tp / max(tp + fn, 1), tp / max(tp + fp, 1)
        rows.append({"kind": kind, "injected": tp + fn, "found": tp + fp, "recall": recall, "precision": precision})
        print(f"| {kind} | {tp + fn} | {tp + fp} | {recall:.3f} | {precision:.3f} |")
    report = {"messages": args.messages, "seed": args.seed, "scan_seconds": seconds, "ready_seconds": ready,
              "network_attempts": attempts, "kinds": rows}  # fmt: skip
    if args.store_scan:
        socket.socket.connect, socket.getaddrinfo = real_connect, real_getaddrinfo  # the run's servers are local
        report["store_scan"] = scan = store_scan(messages, args.seed)
        print(f"graftline run with validation.pii=redact: {scan['run_seconds']:.0f} s; {scan['bytes_scanned']:,} "
              f"bytes of its store scanned for {scan['secrets']} injected strings: {len(scan['leaked'])} found "
              f"({scan['email_placeholders_found']} <EMAIL> placeholders); weight files skipped: "
              f"{len(scan['weight_files_skipped'])}")  # fmt: skip
    args.results.parent.mkdir(exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1))
    if attempts:
        sys.exit(f"network attempts: {attempts[:3]}")


if __name__ == "__main__":
    main()
