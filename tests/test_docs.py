"""The documentation's links resolve (issue 33 item 6): every relative link in the README,
docs/ and SECURITY.md names a file or folder of the repository, and every `#anchor` a
heading of its page; the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link {target!r} names nothing"
        assert ROOT in dest.parents or dest == ROOT, f"{page.name}: {target!r} leaves the repo"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_the_readme_is_a_front_door():
    """The pitch, the two quick-start commands, a call and a gate, the map, the links: the
    reference lives in docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 8500
    assert "make demo" in text and "make test" in text and "Authorization: Bearer" in text
    assert "ppr gate" in text and all(f"docs/{p}" in text for p in (
        "audit.md", "ci.md", "service.md", "cli.md", "architecture.md", "RESULTS.md"))
