"""The documentation site (mkdocs.yml, docs/) builds with --strict: a broken link, a missing anchor
or a missing include fails the build, and the benchmarks page really shows BENCHMARKS.md."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner, not a build problem
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert (site / "index.html").is_file(), output
    benchmarks_page = site / "benchmarks" / "index.html"
    assert benchmarks_page.is_file(), output

    # Every second-level heading of BENCHMARKS.md must appear on the benchmarks page, so the include
    # can neither be empty nor fall behind the file.
    headings = re.findall(r"^## (.+)$", (ROOT / "BENCHMARKS.md").read_text(), flags=re.MULTILINE)
    assert headings, "BENCHMARKS.md has no second-level headings"
    page_text = html.unescape(re.sub(r"<[^>]+>", "", benchmarks_page.read_text()))
    for heading in headings:
        text = re.sub(r"`|\*\*", "", heading).strip()
        assert text in page_text, f"benchmarks page lacks the BENCHMARKS.md heading {heading!r}"
