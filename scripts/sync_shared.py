#!/usr/bin/env python3
"""Keep the repository's copies of ../shared in step with it (stdlib only).

The conformance suite, the protocol notes and the design notes are written in a
folder shared by several projects (../shared, beside the checkout); the
repository carries copies so that a plain clone stands on its own:

  ../shared/conformance/**  ->  tests/conformance/   (byte for byte, sub-folders too)
  ../shared/UFDL-API.md     ->  docs/UFDL-API.md     (relative links made to work in docs/)
  ../shared/DESIGN.md       ->  docs/DESIGN.md
  ../shared/STYLE.md        ->  docs/STYLE.md
  ../shared/seeds/jobs.md   ->  docs/seeds/jobs.md

  sync_shared.py --check    name every copy that differs (exit 1); exit 0 when all
                            match, or when there is no ../shared to compare with
  sync_shared.py            write the copies from ../shared (`make sync-shared`)

Files that only the repository has (tests/conformance/test_x.py) are left alone:
the repository's suite may grow ahead of the shared one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (path under ../shared, path in the repository); a folder copies each of its files.
COPIES = [
    ("conformance", "tests/conformance"),
    ("UFDL-API.md", "docs/UFDL-API.md"),
    ("DESIGN.md", "docs/DESIGN.md"),
    ("STYLE.md", "docs/STYLE.md"),
    ("seeds/jobs.md", "docs/seeds/jobs.md"),
]

# Paths in the shared text that point outside the repository, and what they become
# in the copy. The only edits a copy gets; each must still match its source.
REWRITES: dict[str, list[tuple[str, str]]] = {
    "docs/UFDL-API.md": [
        ("`../shared/seeds/jobs.md`", "[`seeds/jobs.md`](seeds/jobs.md)"),
        ("`conformance/template.json`",
         "[`tests/conformance/template.json`](../tests/conformance/template.json)"),
    ],
}


class StaleRewrite(Exception):
    """A rewrite no longer matches the shared text: REWRITES needs updating."""


def pairs(shared: Path, repo: Path) -> list[tuple[Path, Path]]:
    """Every (shared file, repository copy) pair, files of copied folders included."""
    found: list[tuple[Path, Path]] = []
    for source, copy in COPIES:
        src = shared / source
        if src.is_dir():
            # Sub-folders too (conformance/parity/), minus caches a run leaves.
            found.extend((f, repo / copy / f.relative_to(src)) for f in sorted(src.rglob("*"))
                         if f.is_file() and "__pycache__" not in f.parts)
        else:
            found.append((src, repo / copy))
    return found


def expected(src: Path, copy: Path, repo: Path) -> bytes:
    """What the copy of `src` must hold: its bytes, with the copy's rewrites applied."""
    data = src.read_bytes()
    for old, new in REWRITES.get(copy.relative_to(repo).as_posix(), []):
        if old.encode() not in data:
            raise StaleRewrite(f"{copy.relative_to(repo)}: the rewrite of {old!r} no longer matches "
                               f"{src}; update REWRITES in scripts/sync_shared.py")
        data = data.replace(old.encode(), new.encode())
    return data


def differences(shared: Path, repo: Path) -> list[str]:
    """One line per copy that is missing or differs from ../shared."""
    lines = []
    for src, copy in pairs(shared, repo):
        try:
            want = expected(src, copy, repo)
        except StaleRewrite as e:
            lines.append(str(e))
            continue
        name = copy.relative_to(repo)
        if not copy.is_file():
            lines.append(f"{name}: missing (the shared {src} has no copy)")
        elif copy.read_bytes() != want:
            lines.append(f"{name}: differs from {src}")
    return lines


def sync(shared: Path, repo: Path) -> list[str]:
    """Write every copy that differs; returns the repository paths written."""
    written = []
    for src, copy in pairs(shared, repo):
        want = expected(src, copy, repo)
        if copy.is_file() and copy.read_bytes() == want:
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        if copy.exists():
            copy.chmod(copy.stat().st_mode | 0o200)  # the shared files are read-only
        copy.write_bytes(want)
        # Keep the executable bit (run.sh), and let the copy be edited by its owner.
        copy.chmod((src.stat().st_mode & 0o755) | 0o644)
        written.append(str(copy.relative_to(repo)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on any difference")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the shared folder (default: ../shared beside the repository)")
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shared, repo = args.shared.resolve(), args.repo.resolve()
    if not shared.is_dir():
        print(f"sync-shared: no shared folder at {shared}; nothing to compare")
        return 0 if args.check else 2
    if args.check:
        lines = differences(shared, repo)
        for line in lines:
            print(line)
        if lines:
            print(f"{len(lines)} cop{'y' if len(lines) == 1 else 'ies'} out of step with {shared}: "
                  "run `make sync-shared` and commit the result")
            return 1
        print(f"every copy matches {shared}")
        return 0
    try:
        written = sync(shared, repo)
    except StaleRewrite as e:
        print(f"sync-shared: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"updated {path}")
    print(f"{len(written)} file(s) updated from {shared}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
