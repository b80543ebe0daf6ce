"""The documentation holds together: every relative link and #anchor resolves, and the
references name every setting and every RPC.

Links are checked in README.md, CHANGELOG.md and docs/*.md: a path must exist in the repository,
an anchor must be a heading (GitHub's slug of it) or an explicit ``<a id>`` of the target file.
Links inside code (fenced blocks, inline code) are text, not links, and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from natsgw._generated import nats_service_pb2
from natsgw.config import Settings, variable_name
from tests.conftest import ROOT

DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
#: [text](target) and ![alt](target), with an optional "title"; text may hold `code` or brackets.
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s()<>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _without_code(text: str) -> str:
    """The text with fenced blocks and code spans blanked (line numbers kept)."""
    text = _FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    return _CODE_SPAN.sub(lambda m: " " * len(m[0]), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link markup dropped, lower case, punctuation out, spaces
    to hyphens (underscores and hyphens stay)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link into ``path`` may name: heading slugs (duplicates numbered as GitHub
    numbers them) and explicit ``<a id=...>`` / ``<a name=...>``."""
    text = path.read_text()
    found: set[str] = set(_HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for _, heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link in a Markdown file, code excluded."""
    text = _without_code(path.read_text())
    found = [(m.start(), m[1]) for m in _INLINE_LINK.finditer(text)]
    found += [(m.start(), m[1]) for m in _REFERENCE_DEF.finditer(text)]
    return sorted((text.count("\n", 0, start) + 1, target) for start, target in found)


def broken_links(path: Path, root: Path) -> list[str]:
    """Each relative link or anchor of ``path`` that does not resolve, as ``file:line: why``."""
    problems: list[str] = []
    for line, target in links(path):
        if _SCHEME.match(target):
            continue  # http(s), mailto: outside the repository
        where = f"{path.relative_to(root)}:{line}: {target}"
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{where}: points outside the repository")
        elif not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor:
            if resolved.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif unquote(anchor) not in anchors(resolved):
                problems.append(f"{where}: no heading or <a id> '{anchor}' in {resolved.name}")
    return problems


def test_the_documents_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "CHANGELOG.md", "docs/configuration.md", "docs/api.md"} <= names


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path, ROOT) == []


def broken_tables(path: Path) -> list[str]:
    """Tables whose first row is not followed by a ``|---|`` separator, as ``file:line``: such
    rows render as a paragraph of pipes (a blank line inside a table does that to its rest)."""
    lines = _without_code(path.read_text()).splitlines()
    problems = []
    for i, line in enumerate(lines):
        starts = line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
        if starts:
            below = lines[i + 1] if i + 1 < len(lines) else ""
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", below.strip()):
                problems.append(f"{path.name}:{i + 1}: a table row without a header above it")
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_table_is_whole(path: Path) -> None:
    assert broken_tables(path) == []


def test_a_blank_line_inside_a_table_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "t.md"
    doc.write_text("| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n")
    assert broken_tables(doc) == ["t.md:5: a table row without a header above it"]


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_ignores_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text('# B title\n\n## Same\n\n## Same\n\n<a id="x"></a>\n')
    doc = tmp_path / "a.md"
    doc.write_text(
        "# Top `code` (see [b](docs/b.md))\n"
        "[ok](docs/b.md#b-title) [ok2](docs/b.md#same-1) [ok3](#top-code-see-b) [x](docs/b.md#x)\n"
        "[gone](docs/missing.md) [bad anchor](docs/b.md#nope) [self](#nowhere)\n"
        "[web](https://example.invalid/x#y) `[not a link](nowhere.md)`\n"
        "```\n[also not](nowhere.md)\n```\n"
        "[ref]: docs/b.md#same-2\n"
    )
    assert broken_links(doc, tmp_path) == [
        "a.md:3: #nowhere: no heading or <a id> 'nowhere' in a.md",
        "a.md:3: docs/b.md#nope: no heading or <a id> 'nope' in b.md",
        "a.md:3: docs/missing.md: no such file",
        "a.md:8: docs/b.md#same-2: no heading or <a id> 'same-2' in b.md",
    ]


def test_github_slugs() -> None:
    assert slug("Workers (all cores)") == "workers-all-cores"
    assert slug("`NATSGW_WORKERS`: one port") == "natsgw_workers-one-port"
    assert slug("Key-Value store") == "key-value-store"
    assert slug("Wire format and codec") == "wire-format-and-codec"


_VARIABLE = re.compile(r"`((?:NATSGW|NATS|GRPC|CONSUL|LOKI|SERVICE)_[A-Z0-9_]+|_[A-Z0-9_]+)`")


def _variables_in(path: Path) -> set[str]:
    """Variables a document names in backticks, with the tables' ``_SUFFIX`` shorthand expanded:
    in one cell, ``NATSGW_KV_HISTORY``, ``_TTL`` names ``NATSGW_KV_TTL`` too (a suffix may
    replace any number of the last full name's final words)."""
    found: set[str] = set()
    for cell in re.split(r"\||\n", path.read_text()):
        words: list[str] = []
        for name in _VARIABLE.findall(cell):
            if not name.startswith("_"):
                found.add(name)
                words = name.split("_")
            else:
                found.update("_".join(words[:n]) + name for n in range(1, len(words)))
    return found


#: Every variable the gateway reads, from the one Settings.
SETTINGS_VARIABLES = sorted(variable_name(f) for f in Settings.__slots__)


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_the_configuration_tables_name_every_setting(doc: str) -> None:
    missing = [v for v in SETTINGS_VARIABLES if v not in _variables_in(ROOT / doc)]
    assert missing == [], f"{doc} does not document {missing}"


def test_the_api_overview_names_every_rpc() -> None:
    service = nats_service_pb2.DESCRIPTOR.services_by_name["NATSService"]
    readme = (ROOT / "README.md").read_text()
    overview = readme.split("\n## API", 1)[1].split("\n## ", 1)[0]
    missing = [m.name for m in service.methods if f"`{m.name}`" not in overview]
    assert missing == [], f"README's API overview does not name {missing}"
    reference = (ROOT / "docs" / "api.md").read_text()
    missing = [m.name for m in service.methods if f"`{m.name}`" not in reference]
    assert missing == [], f"docs/api.md does not name {missing}"
