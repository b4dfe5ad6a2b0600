"""Data at size: rows/s and peak memory of each stage of graftline's data path, against its peers.

A corpus of N rows is written from real reviews (IMDB, SST-2, the Amazon domains, Yelp), each text
made distinct by a row number, labels positive/negative. Each stage runs in a fresh process, so its
peak RSS is its own:

| stage | graftline | peer |
|--|--|--|
| read | `load_splits` (reading, labels, carving validation and test) | `pandas.read_csv` |
| personal-data scan | `pii.Scanner` (gated recognizers) | Presidio's recognizers on every text |
| validation | the modality's GX suite (scan off) | plain pandas + a GX suite of the same column checks |
| tokenization | the engine's `encode` of the training split | the tokenizer called on every text |
| `graftline check` | the whole command, default settings (scan on) | |

    .venv/bin/python bench/data.py --rows 100000 1000000          # every stage, both sizes
    .venv/bin/python bench/data.py --rows 20000 --stages read scan  # a rehearsal
    .venv/bin/python bench/data.py --rows 1000000 --stages tokenize --sides graftline
Results go to bench/results/data.json as each measurement ends.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults  # noqa: E402

apply_defaults()  # as every graftline command does, before pandas and Arrow are imported

SOURCES = ["imdb/train.csv", "sst2/train.csv", "yelp_polarity_1k/test.csv"] + [
    f"amazon_multidomain/{d}/all.csv" for d in ("books", "dvd", "electronics", "kitchen")
]
STAGES = ("read", "scan", "validate", "tokenize", "check")
PEER_SCAN_ROWS = 20_000  # Presidio's recognizers on every text are slow: timed on a sample


def write_corpus(data: Path, rows: int, folder: Path) -> Path:
    import pandas as pd

    path = folder / f"reviews-{rows}.csv"
    if path.is_file():
        return path
    require_folders(*(data / s for s in {Path(s).parent.as_posix() for s in SOURCES}))
    pool = pd.concat([pd.read_csv(data / s, usecols=["text", "label"]) for s in SOURCES], ignore_index=True)
    picked = pool.sample(n=rows, replace=True, random_state=0).reset_index(drop=True)
    picked["text"] = picked["text"].str.replace("\n", " ") + " #" + [_marker(i) for i in picked.index]
    folder.mkdir(parents=True, exist_ok=True)
    picked.to_csv(path.with_suffix(".partial"), index=False)
    path.with_suffix(".partial").replace(path)
    return path


def _marker(row: int) -> str:
    """What makes a row's text distinct: its number, with the millions as letters (1000000 -> "b0"), so
    that no marker is a chain of seven digits, which reads as a phone number to the personal-data
    scan (a corpus where every text carries one would time the phone recognizer, not the data)."""
    millions, rest = divmod(row, 1_000_000)
    letters = ""
    while millions:
        millions, digit = divmod(millions, 26)
        letters = "abcdefghijklmnopqrstuvwxyz"[digit] + letters
    return f"{letters}{rest}"


def stage(name: str, side: str, path: Path) -> dict:
    """One stage, in this process: what it did, how long it took and this process's peak RSS (polling
    from outside misses the peak of a stage shorter than a few polls)."""
    import resource

    result = _stage(name, side, path)
    return {**result, "self_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def _stage(name: str, side: str, path: Path) -> dict:
    import pandas as pd

    from graftline.tasks.data.splits import load_splits
    from graftline.tasks.settings import DataParams, ValidationParams

    data = DataParams(train_path=str(path), eval_sets={})
    if name in ("read", "validate"):  # imports are not the stage: load them first, for both sides
        import great_expectations  # noqa: F401
        import sklearn.model_selection  # noqa: F401
    started = time.perf_counter()
    if name == "read" and side == "graftline":
        splits = load_splits(data)
        rows = sum(len(s.frame) for s in (splits.train, splits.validation, splits.test))
    elif name == "read":
        rows = len(pd.read_csv(path))
    elif name == "scan":
        from graftline.tasks.data import pii

        texts = pd.read_csv(path, usecols=["text"], dtype="str")["text"]
        scanner = pii.Scanner()
        started = time.perf_counter()
        if side == "peer":  # every recognizer on every whole text, one after the other: Presidio as it comes
            scanner.gates = [None] * len(scanner.gates)
            texts = texts[:PEER_SCAN_ROWS]
            found = sum(1 for kinds in scanner.kinds_per_text(texts.tolist()) if kinds)
        else:  # a column, as validation scans it (on every core from 100,000 texts)
            found = sum(1 for kinds in scanner.kinds_per_row(texts) if kinds)
        rows = len(texts)
        return {"rows": rows, "seconds": time.perf_counter() - started, "texts_with_personal_data": found}
    elif name == "validate" and side == "graftline":
        import tempfile

        from graftline.tasks import modality as modalities

        splits = load_splits(data)
        started = time.perf_counter()
        report = modalities.of_data(data).validate(splits, ValidationParams(pii="off"), Path(tempfile.mkdtemp()))
        rows = sum(len(s.frame) for s in (splits.train, splits.validation, splits.test))
        return {"rows": rows, "seconds": time.perf_counter() - started, "success": report.success}
    elif name == "validate":
        rows = _gx_peer(pd.read_csv(path))
    elif name == "tokenize":
        from graftline.tasks.engine import backbones
        from graftline.tasks.engine.training import encode

        texts = pd.read_csv(path, usecols=["text"])["text"].tolist()
        tokenizer = backbones.load_tokenizer("minilm-l6")
        started = time.perf_counter()
        if side == "graftline":
            encode(tokenizer, texts, [0] * len(texts), 128)
        else:
            tokenizer(texts, truncation=True, max_length=128)
        rows = len(texts)
    return {"rows": rows, "seconds": time.perf_counter() - started}


def _gx_peer(frame) -> int:
    """Plain pandas and a GX suite of the column checks graftline's suite starts with."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = (
        context.data_sources.add_pandas("peer")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite("peer")
    for column in ("text", "label"):
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
    labels = gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=["negative", "positive"])
    suite.add_expectation(labels)
    suite.add_expectation(gx.expectations.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
    batch.validate(suite)
    return len(frame)


def measured(command: list[str], env: dict | None = None, ok=(0,)) -> tuple[dict, float, float, float]:
    """Run `command`, polling its process tree's memory: (its JSON output or {}, seconds, peak RSS GB,
    peak PSS GB); an exit code outside `ok` stops the benchmark. RSS sums each process's resident
    pages, so pages that forked processes share are counted once per process; PSS divides each
    shared page among its sharers, so the tree's PSS is the memory it occupies (the same as RSS for
    one process)."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = peak_pss = 0
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
            if len(tree) > 1:  # reading PSS walks every mapping: only where pages can be shared
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree))
            else:
                peak_pss = max(peak_pss, tree[0].memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode not in ok:
        raise SystemExit(f"{' '.join(command[:4])}... failed: {err.strip().splitlines()[-1] if err.strip() else ''}")
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    return result, seconds, peak / 1e9, peak_pss / 1e9


def save(results_path: Path, key: str, value: dict) -> None:
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results[key] = value
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))


def report(results_path: Path) -> None:
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    print("| rows | stage | graftline rows/s | peak GB (RSS / PSS) | peer rows/s | peak GB | graftline / peer |")
    print("|--:|:--|--:|--:|--:|--:|--:|")
    keys = sorted({tuple(k.split(" | ")[:2]) for k in results}, key=lambda k: (int(k[0]), STAGES.index(k[1])))
    for rows, name in keys:
        ours, peer = results.get(f"{rows} | {name} | graftline"), results.get(f"{rows} | {name} | peer")
        cells = [f"{int(rows):,}", name]
        for side in (ours, peer):
            pss = f" / {side['peak_pss_gb']:.2f}" if side and side is ours and "peak_pss_gb" in side else ""
            cells += [f"{side['rows_per_second']:,.0f}", f"{side['peak_gb']:.2f}{pss}"] if side else ["", ""]
        ratio = ours and peer and ours["rows_per_second"] / peer["rows_per_second"]
        cells.append(f"{ratio:.1f}x" if ratio else "")
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "holding imdb/, sst2/, yelp_polarity_1k/ and amazon_multidomain/")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument(
        "--sides", nargs="+", choices=("graftline", "peer"), default=["graftline", "peer"],
        help="whose stages to run (the tokenizer peer holds every row's Python lists: ~19 GB at 1,000,000 rows)",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("/tmp/graftline-data-bench"), help="where the corpora go")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "data.json")
    parser.add_argument("--report", action="store_true", help="print the saved results; measure nothing")
    parser.add_argument("--stage", nargs=3, metavar=("NAME", "SIDE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # one measurement, in a process of its own
        name, side, path = args.stage
        print(json.dumps(stage(name, side, Path(path))))
        return
    if args.report:
        report(args.results)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    graftline = ROOT / ".venv" / "bin" / "graftline"
    for rows in args.rows:
        path = write_corpus(args.data, rows, args.work)
        for name in args.stages:
            sides = ["graftline"] if name == "check" else args.sides
            for side in sides:
                if name == "check":
                    command = [str(graftline), "check", "--train", str(path), "--set", "data.eval_sets={}",
                               "--out", str(args.work / f"check-{rows}")]  # fmt: skip
                else:
                    command = [sys.executable, __file__, "--stage", name, side, str(path)]
                # real reviews hold URLs and e-mail addresses: `check` finds them and exits 2, every check run
                result, seconds, peak, pss = measured(command, env, ok=(0, 2) if name == "check" else (0,))
                peak, pss = max(peak, result.get("self_peak_gb", 0)), max(pss, result.get("self_peak_gb", 0))
                inner = result.get("seconds", seconds)
                done = result.get("rows", rows)
                value = {**result, "seconds": inner, "wall_seconds": seconds, "peak_gb": peak,
                         "peak_pss_gb": pss, "rows_per_second": done / inner}  # fmt: skip
                save(args.results, f"{rows} | {name} | {side}", value)
                print(f"{rows:>9,} {name:>9} {side:>9}: {done / inner:>10,.0f} rows/s, {inner:7.1f} s, "
                      f"{peak:.2f} GB RSS, {pss:.2f} GB PSS", flush=True)  # fmt: skip
    report(args.results)


if __name__ == "__main__":
    main()
