"""Personal data in texts: found, counted per kind, and replaced by typed placeholders.

The kinds a customer message, review or ticket tends to carry: e-mail addresses, phone numbers,
payment-card numbers, IBANs, IP addresses and URLs, plus whatever the user names with a regular
expression (order numbers, account ids). Each is found by a pattern recognizer of Microsoft
Presidio (`presidio-analyzer`, MIT), which validates what its pattern matched: cards by the Luhn
checksum, IBANs by their mod-97 checksum and country length, phone numbers by Google's
`phonenumbers` metadata, e-mail domains against the public-suffix list.

Presidio is used without its analyzer engine, whose default NLP engine loads (and downloads) a spaCy
model: the recognizers run on the text alone. Two things are pinned down so that nothing reaches
the network: the e-mail recognizer's domain check uses tldextract with the suffix list bundled in
the package (its default fetches the list from publicsuffix.org on first use), and no recognizer
that needs a language model is built.

Two recognizers are tightened, because on real reviews (the Amazon and IMDB sets) Presidio's
defaults flagged about one text in ten: its URL pattern takes any `word.xx` with a country-code
suffix ("world.Do", "college.It": a missing space after a full stop), so a URL here needs a scheme
(`https://`), a `www.` prefix or a path after the domain (a bare "Amazon.com" is a shop's name, not
a person's data); and phone numbers need `phonenumbers`' strict grouping, where its default
leniency took amounts and dates ("164.7", "03.02.2011") for numbers.

Choices, documented because a scanner has to make them:
- a dotted quad such as 1.2.3.4 is an IP address even where the prose means a version number: the
  text alone cannot tell them apart, and a missed address costs more than a redacted version;
- a 13-19 digit number is a card only if it passes the Luhn check and starts with an issuer's
  prefix (order and tracking numbers that happen to pass both are flagged: the text cannot tell);
- a phone number has 7 to 15 digits (shorter ones are short codes or ticket numbers);
- where two findings overlap (the domain of an e-mail address is also a URL), the longer one wins.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from functools import cache

import pandas as pd

from graftline.tasks.data.splits import Split, Splits
from graftline.tasks.errors import DataError
from graftline.tasks.settings import PII_KINDS, check_pii_patterns

ENTITIES = {  # kind -> Presidio's entity
    "email": "EMAIL_ADDRESS",
    "card": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "ip": "IP_ADDRESS",
    "phone": "PHONE_NUMBER",
    "url": "URL",
}
KINDS = {kind: ENTITIES[kind] for kind in PII_KINDS}  # in the order that breaks ties between equal spans
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 7, 15
# issuer prefixes: Visa 4; Mastercard 51-55, 2221-2720; Amex 34, 37; Discover 6011, 644-649, 65;
# Diners 300-305, 36, 38; JCB 3528-3589; UnionPay 62
CARD_ISSUERS = re.compile(
    r"^(?:4|5[1-5]|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720|3[47]|6011|64[4-9]|65|30[0-5]|3[68]"
    r"|352[89]|35[3-8]\d|62)"
)
STRICT_GROUPING = 2  # phonenumbers.Leniency: digits grouped as the number's region writes them
_URL_END = r"[^\s<>\"'()\[\]{}]*[^\s<>\"'()\[\]{}.,;:!?]"
URL_PATTERNS = {  # name -> regular expression
    "url_with_scheme": r"(?i)\b(?:https?|ftp)://" + _URL_END,
    "url_www": r"(?i)\bwww\.[a-z0-9-]+\." + _URL_END,
    "url_with_path": r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,12}/" + _URL_END,
}


# What any finding of a built-in kind must contain, checked cheaply before its recognizer runs: most
# texts hold no personal data, and a recognizer (the phone one above all: eight regions' matchers over
# the whole text) costs ~1,000x a search. Each gate admits everything its recognizer reports and
# `_plausible` keeps, by construction (from the recognizer's own pattern, or the rule below); the
# tests compare gated and ungated findings, so the gates change the speed, never the findings.
# Written for speed on long texts: substring tests first, patterns that start at a rare character.
PHONE_CHAIN = re.compile(rf"\d(?:\D{{0,4}}\d){{{MIN_PHONE_DIGITS - 1},}}")  # 7+ digits, at most 4 characters apart
_CARD_DIGITS = re.compile(r"\d(?:[- ]?\d){12}")  # the card pattern's 13+ digits, a space or dash between groups
_IBAN_START = re.compile(r"[0-9]{2}(?<=[A-Za-z]{2}[0-9]{2})")  # a country code, then the check digits
_DOTTED = re.compile(r"\d\.\d+\.\d")  # the start of a dotted quad
_WWW = re.compile(r"(?i)www\.")
_URL_PATH = re.compile(r"(?i)://|\.[a-z]{2,12}/")  # URL_PATTERNS: a scheme or a path
GATES = {  # kind -> does the text hold what a finding needs
    "email": lambda text: "@" in text,
    "card": lambda text: _CARD_DIGITS.search(text) is not None,
    "iban": lambda text: _IBAN_START.search(text) is not None,
    # IPv4 (also inside IPv6) is a dotted quad; every IPv6 form has "::" or eight groups
    "ip": lambda text: "::" in text or text.count(":") >= 7 or _DOTTED.search(text) is not None,
    "phone": lambda text: PHONE_CHAIN.search(text) is not None,
    "url": lambda text: _WWW.search(text) is not None or ("/" in text and _URL_PATH.search(text) is not None),
}
NEED_DIGITS = {"card", "iban", "phone"}  # a text without a digit skips these at once
_DIGIT = re.compile(r"\d")
PHONE_MARGIN = 40  # characters around a digit chain the phone recognizer reads (an extension, brackets)


@dataclass(frozen=True)
class Found:
    kind: str
    start: int
    end: int


def placeholder(kind: str) -> str:
    return f"<{kind.upper()}>"


class Scanner:
    """Finds personal data in one text at a time. `patterns` adds kinds of the user's own: name ->
    regular expression (e.g. {"order_id": r"ORD-\\d{8}"})."""

    def __init__(self, patterns: dict[str, str] | None = None) -> None:
        Pattern, PatternRecognizer = _presidio().Pattern, _presidio().PatternRecognizer

        self.recognizers = [(kind, entity, _builtin(kind)) for kind, entity in KINDS.items()]
        self.gates = [GATES[kind] for kind in KINDS]
        try:
            check_pii_patterns(patterns or {})
        except ValueError as error:
            raise DataError(f"validation.pii_patterns: {error}") from None
        for name, regex in (patterns or {}).items():
            entity = name.upper()
            recognizer = PatternRecognizer(supported_entity=entity, patterns=[Pattern(name, regex, 1.0)])
            self.recognizers.append((name, entity, recognizer))
            self.gates.append(None)  # a user's pattern: run on every text

    def find(self, text: str) -> list[Found]:
        """Non-overlapping findings in `text`, in order."""
        if not text:
            return []
        candidates = []
        has_digits = _DIGIT.search(text) is not None
        for rank, (kind, entity, recognizer) in enumerate(self.recognizers):
            for offset, piece in self._pieces(kind, self.gates[rank], text, has_digits):
                for result in recognizer.analyze(piece, [entity], None) or ():
                    start, end = result.start + offset, result.end + offset
                    if result.score > 0 and end > start and _plausible(kind, text[start:end]):
                        candidates.append((start, end, rank, kind))
        candidates = list(dict.fromkeys(candidates))  # overlapping phone windows find a number twice
        # the longest first (then the kind listed first); keep what does not overlap a kept one
        candidates.sort(key=lambda c: (c[0] - c[1], c[2], c[0]))
        kept: list[Found] = []
        for start, end, _, kind in candidates:
            if all(end <= k.start or start >= k.end for k in kept):
                kept.append(Found(kind, start, end))
        return sorted(kept, key=lambda f: f.start)

    @staticmethod
    def _pieces(kind: str, gate, text: str, has_digits: bool) -> list[tuple[int, str]]:
        """What a recognizer reads, as (offset, text): nothing when its gate finds nothing; for phone
        numbers, each digit chain with PHONE_MARGIN characters around it (the matchers' cost grows
        with the text, and a number never reaches past its chain by more than an extension)."""
        if gate is None:
            return [(0, text)]
        if (kind in NEED_DIGITS and not has_digits) or not gate(text):
            return []
        if kind != "phone":
            return [(0, text)]
        windows: list[list[int]] = []
        for chain in PHONE_CHAIN.finditer(text):
            start, end = max(chain.start() - PHONE_MARGIN, 0), chain.end() + PHONE_MARGIN
            if windows and start <= windows[-1][1]:
                windows[-1][1] = end
            else:
                windows.append([start, end])
        return [(start, text[start:end]) for start, end in windows]

    def redact(self, text: str) -> tuple[str, Counter]:
        """`text` with every finding replaced by its placeholder, and how many of each kind."""
        found = self.find(text)
        pieces, at = [], 0
        for f in found:
            pieces += [text[at : f.start], placeholder(f.kind)]
            at = f.end
        return "".join(pieces) + text[at:], Counter(f.kind for f in found)

    def kinds_per_text(self, texts: list[str]) -> list[str]:
        """For each text, the kinds found in it, comma-separated ("" when none)."""
        return [",".join(sorted({f.kind for f in self.find(t)})) for t in texts]

    def redact_texts(self, texts: list[str]) -> list[tuple[str, Counter]]:
        return [self.redact(t) for t in texts]

    def kinds_per_row(self, texts: pd.Series) -> list[str]:
        """`kinds_per_text` of a column ("" for a missing text), a chunk of texts at a time: the
        column is never a list of Python strings all at once. From PARALLEL_TEXTS texts on (on
        Linux), the chunks are scanned by one forked process per core: the matchers hold the
        interpreter's lock, so threads would take turns."""
        return self._per_row(texts, "kinds_per_text")

    def redact_per_row(self, texts: pd.Series) -> tuple[list[str | None], Counter]:
        """Each text of a column redacted (a missing one stays None) and the replacements counted per
        kind; chunked and spread over the cores as `kinds_per_row`."""
        total: Counter = Counter()
        cleaned = []
        for present, (clean, counts) in zip(texts.notna().tolist(), self._per_row(texts, "redact_texts"), strict=True):
            cleaned.append(clean if present else None)
            total.update(counts)
        return cleaned, total

    def _per_row(self, texts: pd.Series, method: str) -> list:
        spans = [(i, min(i + SCAN_CHUNK, len(texts))) for i in range(0, len(texts), SCAN_CHUNK)]
        workers = min(_cores(), len(spans))
        if len(texts) < PARALLEL_TEXTS or workers < 2 or sys.platform != "linux":
            return [out for a, b in spans for out in getattr(self, method)(_filled(texts.iloc[a:b]))]
        return _in_processes(self, method, texts, spans, workers)


SCAN_CHUNK = 16_384  # texts per chunk of a column scan
PARALLEL_TEXTS = 100_000  # from here on a column scan uses every core (one core: ~30,000 texts/s)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _filled(chunk: pd.Series) -> list[str]:
    return [t if isinstance(t, str) else "" for t in chunk.tolist()]


_FORKED: tuple[Scanner, str, pd.Series] | None = None  # what forked scanning processes inherit


def _run_span(span: tuple[int, int]) -> list:
    scanner, method, texts = _FORKED
    return getattr(scanner, method)(_filled(texts.iloc[span[0] : span[1]]))


def _in_processes(scanner: Scanner, method: str, texts: pd.Series, spans: list[tuple[int, int]], workers: int) -> list:
    """`scanner.<method>` over the spans of `texts` in `workers` forked processes, in order. The
    processes inherit the scanner and the column (Arrow buffers, shared, never copied or sent); only
    row ranges go to them and their results come back. What they run is this module's matchers
    alone: pure Python and Presidio's recognizers, nothing that a thread of the parent (a flow's,
    torch's) could hold a lock in."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _FORKED
    _FORKED = (scanner, method, texts)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            found = list(pool.map(_run_span, spans))
    finally:
        _FORKED = None
    return [out for chunk in found for out in chunk]


def redact_splits(splits: Splits, scanner: Scanner) -> tuple[Splits, Counter]:
    """Every text of `splits` redacted (labeled splits, evaluation and target sets, transfer texts),
    and the replacements counted per kind."""
    total: Counter = Counter()

    def texts(values: pd.Series) -> list[str | None]:
        cleaned, counts = scanner.redact_per_row(values)
        total.update(counts)
        return cleaned

    def split(s: Split) -> Split:
        frame = s.frame.copy()
        cleaned = texts(frame["text"])  # None where a text is missing: those rows stay as they are
        frame.loc[frame["text"].notna(), "text"] = [clean for clean in cleaned if clean is not None]
        return replace(s, frame=frame)

    redacted = Splits(
        train=split(splits.train),
        validation=split(splits.validation),
        test=split(splits.test),
        extra={name: split(s) for name, s in splits.extra.items()},
        unlabeled=tuple(texts(pd.Series(list(splits.unlabeled), dtype=object))),
        targets={name: split(s) for name, s in splits.targets.items()},
    )
    return redacted, total


def _plausible(kind: str, span: str) -> bool:
    """Checks the recognizers do not make. A phone number has 7 to 15 digits, seven of them in a
    chain (at most 4 characters between neighbours, as `phonenumbers` groups them; an extension does
    not make a short number long): shorter ones that a region's plan allows (short codes) look
    exactly like ticket numbers ("Order #16476"), and E.164 allows no more than 15, while 16-digit
    order numbers with a leading 0 pass `phonenumbers`. A card
    number starts with an issuer's prefix (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay):
    the Luhn check alone lets one in ten random numbers through."""
    digits = "".join(c for c in span if c.isdigit())
    if kind == "phone":  # and its digits form a chain (what the phone gate looks for)
        return MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS and PHONE_CHAIN.search(span) is not None
    if kind == "card":
        return CARD_ISSUERS.match(digits) is not None
    return True


def counts_of(kinds_column: pd.Series) -> Counter:
    """Rows per kind, from a column of `kinds_per_text` values."""
    return Counter(kind for value in kinds_column if value for kind in value.split(","))


@cache
def _presidio():
    """The `presidio_analyzer` package, imported without torch and transformers.

    Its `__init__` imports every NLP engine and recognizer it ships, and through them torch and
    transformers wherever they are installed (4.9 s and 0.43 GB of memory on a 2-core machine),
    though the pattern recognizers used here need neither. Presidio treats both as optional (it
    imports them inside try blocks), so they are hidden while it imports: 0.8 s and 0.1 GB. A process
    that had already imported them keeps them; one that imports them afterwards gets them as usual."""
    import sys

    hidden = [name for name in ("torch", "transformers") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # meanwhile, importing it raises ImportError
    try:
        import presidio_analyzer
        import presidio_analyzer.predefined_recognizers  # noqa: F401
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return presidio_analyzer


@cache
def _builtin(kind: str):
    presidio = _presidio()
    Pattern, PatternRecognizer, known = presidio.Pattern, presidio.PatternRecognizer, presidio.predefined_recognizers

    if kind == "email":
        recognizer = known.EmailRecognizer()
        recognizer.validate_result = _offline_email_check
        return recognizer
    if kind == "phone":
        return known.PhoneRecognizer(leniency=STRICT_GROUPING)
    if kind == "url":
        patterns = [Pattern(name, regex, 0.6) for name, regex in URL_PATTERNS.items()]
        return PatternRecognizer(supported_entity="URL", patterns=patterns, name="UrlRecognizer")
    return {"card": known.CreditCardRecognizer, "iban": known.IbanRecognizer, "ip": known.IpRecognizer}[kind]()


@cache
def _suffixes():
    import tldextract

    # the suffix list bundled with tldextract: no fetch, no cache folder
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _offline_email_check(pattern_text: str) -> bool:
    """Presidio's e-mail validation (the domain ends in a public suffix), without the download."""
    return _suffixes()(pattern_text).fqdn != ""
