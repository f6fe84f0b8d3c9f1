"""The docs: links that lead somewhere, every setting documented, the test command stated.

Read from the files, nothing is rendered: a relative link in ``README.md``,
``CONTRIBUTING.md``, ``docs/*.md`` or ``k8s/README.md`` must name a file or
folder of the repository, and its ``#anchor`` a heading of the Markdown file
it points at (GitHub's anchors: lower case, punctuation dropped, spaces as
hyphens, ``-1``, ``-2`` ... for repeats).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from driver_stats.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "CONTRIBUTING.md", ROOT / "k8s" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text())):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text
        slug = re.sub(r"[^\w\- ]", "", title.lower().replace("`", "").replace("*", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text()))


def test_the_slugs_are_githubs(tmp_path):
    path = tmp_path / "x.md"
    path.write_text("# Delivery: what \"nothing lost\" means\n## A kill -9 while `it` is written\n"
                    "```\n# not a heading\n```\n## Tests\n## Tests\n")
    assert anchors(path) == {"delivery-what-nothing-lost-means", "a-kill--9-while-it-is-written", "tests", "tests-1"}


def test_a_broken_link_is_seen(tmp_path):
    path = tmp_path / "x.md"
    path.write_text("[a](y.md#there) `[b](not/a/link)`\n```\n[c](nor/this)\n```\n[d](https://x.org)\n")
    assert links(path) == ["y.md#there", "https://x.org"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(doc):
    assert doc.exists(), doc
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_docs_are_all_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    unlinked = [p.relative_to(ROOT) for p in DOCS if p != README and p.resolve() not in linked]
    assert not unlinked, f"not linked from README.md: {unlinked}"


def test_every_setting_is_in_the_readmes_configuration_table():
    text = README.read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    missing = [f"{PREFIX}{name.upper()}" for name in Settings.__struct_fields__
               if f"`{PREFIX}{name.upper()}`" not in section]
    assert not missing, f"not in README.md's Configuration table: {missing}"


def test_the_readme_states_the_test_command_ci_runs():
    blocks = "\n".join(m.group(0) for m in FENCE.finditer(README.read_text()))
    assert re.search(r"^\./dev\.py test\b", blocks, re.M), "README.md: no `./dev.py test` command"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert "./dev.py test" in ci
