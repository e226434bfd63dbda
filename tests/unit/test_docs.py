"""The docs keep their promises: every test a page names exists, and every relative link and
anchor resolves (GitHub's heading slugs)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [
    REPO / "README.md",
    REPO / "CHANGELOG.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted(REPO.glob("*/README.md")),
]


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    kept, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        kept.append("" if fenced else line)
    return "\n".join(kept)


def _slug(heading: str) -> str:
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(page.read_text()).split("\n"):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = _slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _tests() -> dict[str, set[str]]:
    return {
        str(path.relative_to(REPO)): set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
        for path in (REPO / "tests").rglob("*.py")
    }


def test_every_test_the_docs_name_exists() -> None:
    tests = _tests()
    every_name = set().union(*tests.values())
    missing = []
    for page in PAGES:
        text = page.read_text()
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", text):
            if name not in tests.get(path, set()):
                missing.append(f"{page.name}: {path}::{name}")
        for path in re.findall(r"`(tests/[\w/]+\.py)`", text):
            if path not in tests:
                missing.append(f"{page.name}: {path}")
        for name in re.findall(r"`(test_\w+)`", text):
            if name not in every_name and not any(Path(p).stem == name for p in tests):
                missing.append(f"{page.name}: {name}")
    assert not missing, missing
    assert len(PAGES) >= 10


def test_every_relative_link_and_anchor_resolves() -> None:
    broken, checked = [], 0
    for page in PAGES:
        text = re.sub(r"`[^`\n]*`", "", _prose(page.read_text()))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):  # http(s), mailto
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and (resolved.suffix != ".md" or anchor not in _anchors(resolved)):
                broken.append(f"{page.name}: {target} (no such anchor)")
    assert not broken, broken
    assert checked > 50, checked


def test_the_key_tables_are_made_from_the_parsers_fields() -> None:
    """docs/configuration.md's "Every key" section is what the parsers' field tables make:
    a key, default or bound changed in code and not in the docs fails here."""
    from sleepfed_tools.config_reference import current, render

    text = (REPO / "docs" / "configuration.md").read_text()
    assert current(text) == render(), "run: python -m sleepfed_tools.config_reference --write"
    # every key the parsers know appears in the section, and it names them all
    from sleepfed.board.service.config import REFERENCE as AGENT
    from sleepfed.server.ops.config import REFERENCE as SERVER

    keys = {f"`{f.key}`" for _, fields in (*AGENT, *SERVER) for f in fields}
    assert len(keys) >= 60 and all(key in current(text) for key in keys)


def test_the_benchmark_tables_are_made_from_the_results_files() -> None:
    """The docs' generated benchmark sections are what benchmarks/results/*.json (written
    by `make bench`) make: a figure copied by hand, left stale, or without its results file
    fails here."""
    from sleepfed_tools.bench_tables import placed, problems

    found = problems()
    assert not found, f"{found}: run python -m sleepfed_tools.bench_tables --write"
    # What `make bench` measures on any machine (its QEMU round needs root and the images).
    for bench in ("ingest", "memory", "ble", "fuzz", "federated"):
        assert placed(bench), f"{bench}: its page has no generated section"
