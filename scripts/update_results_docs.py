"""Write `bench tables --reference` into the README (the table against the paper) and docs/results.md
(the full tables), between their markers, so that the figures in the docs are the records' own.

    python scripts/update_results_docs.py          # rewrite both files in place
    python scripts/update_results_docs.py --check  # exit 1 naming each file whose tables are stale

The commentary around the markers is written by hand; the tables between them never are.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import tables  # noqa: E402
from datasets.fileio import atomic_write_bytes  # noqa: E402

BEGIN, END = "<!-- begin: {} (scripts/update_results_docs.py) -->", "<!-- end: {} -->"
FULL_TABLES = "### Table 1: test error"


def generated(link_root: str) -> tuple[str, str]:
    """(the table against the paper, the full tables) as `bench tables --reference` prints them."""
    here = os.getcwd()
    os.chdir(REPO)  # record links are relative to the repository root, then to ``link_root``
    try:
        text = tables.markdown("results/runs", link_root=link_root)
    finally:
        os.chdir(here)
    cut = text.index(FULL_TABLES)
    return text[:cut].strip(), text[cut:].strip()


def splice(doc: str, name: str, body: str, path: Path) -> str:
    begin, end = BEGIN.format(name), END.format(name)
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise SystemExit(f"{path}: needs one '{begin}' line and, after it, one '{end}' line")
    head, rest = doc.split(begin)
    return f"{head}{begin}\n\n{body}\n\n{end}{rest.split(end, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file's tables are stale")
    args = ap.parse_args(argv)
    headline, _ = generated(".")
    _, full = generated("..")  # docs/results.md links records from docs/
    stale = []
    for path, name, body in ((REPO / "README.md", "against the paper", headline),
                             (REPO / "docs" / "results.md", "full tables", full)):
        doc = path.read_text()
        new = splice(doc, name, body, path)
        if new != doc:
            stale.append(path.relative_to(REPO))
            if not args.check:
                atomic_write_bytes(path, new.encode())
                path.chmod(0o644)
    if stale:
        print(("stale: " if args.check else "updated: ") + ", ".join(map(str, stale)))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
