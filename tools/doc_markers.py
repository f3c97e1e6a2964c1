"""Generated tables in docs: the text between two HTML-comment markers of a markdown file, replaced."""

from __future__ import annotations

from pathlib import Path


def replace_between(doc: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between ``begin`` and ``end`` in ``doc`` (appended with both markers if they are absent)."""
    current = doc.read_text() if doc.exists() else ""
    if begin not in current:
        doc.write_text(f"{current.rstrip()}\n\n{begin}\n{text}\n{end}\n")
        return
    head, _, rest = current.partition(begin)
    _, _, tail = rest.partition(end)
    doc.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
