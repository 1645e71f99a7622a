"""The marked sections of benchmarks/RESULTS.md.

Each script that adds to RESULTS.md owns one section, between `<!-- NAME: begin -->` and
`<!-- NAME: end -->`, and rewrites only it; zoo.py, which writes the whole file, carries
every marked section of the old file over. (A helper module, not a script.)
"""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- ([\w-]+): begin -->\n(.*?)<!-- \1: end -->\n?", re.S)


def replace_section(text: str, name: str, section: str) -> str:
    """`text` with section `name` replaced by `section` (appended when absent)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block


def update_section(path: Path, name: str, section: str) -> None:
    """Rewrite section `name` of the file at `path`."""
    path.write_text(replace_section(path.read_text(), name, section))


def keep_sections(path: Path, new_text: str) -> str:
    """`new_text` with every marked section of the file at `path` carried over."""
    old = path.read_text() if path.exists() else ""
    for match in _SECTION.finditer(old):
        new_text = replace_section(new_text, match.group(1), match.group(2))
    return new_text
