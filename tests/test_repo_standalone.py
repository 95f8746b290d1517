"""The repository stands alone: no tracked file reads or points to the project's reference folder
beside the checkout (the ``shared`` folder next to the clone). CI always has that folder beside its clone, so only this test
notices when something starts to depend on it again."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import ROOT

# Built from pieces so that this file does not match itself.
SHARED = "shared"
POINTERS = re.compile("|".join([
    r"\.\./" + SHARED,                                                  # dot-dot, slash, the folder
    r"/work/" + SHARED,                                                 # the absolute path
    r"parent\s*/\s*['\"]" + SHARED,                                     # ROOT.parent / "<the folder>"
    SHARED + r"/(conformance|clinical|seed|design|fhir-samples|hooks)",  # shared/<folder>
]))


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"not a git checkout ({exc}); the check needs the list of tracked files")
    return [p for p in out.decode().split("\0") if p]


def _pointing() -> dict[str, list[str]]:
    """Tracked files that point to the reference folder -> their offending lines."""
    found: dict[str, list[str]] = {}
    for path in _tracked():
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary files (png) and files deleted in the work tree
        lines = [f"{n}: {line.strip()[:120]}" for n, line in enumerate(text.splitlines(), 1) if POINTERS.search(line)]
        if lines:
            found[path] = lines
    return found


def test_no_tracked_file_points_outside_the_repository():
    offending = _pointing()
    assert not offending, "files that read or point to the reference folder beside the checkout:\n" + "\n".join(
        f"{p}:{line}" for p, lines in offending.items() for line in lines)


def test_the_pattern_catches_what_it_must():
    for line in ('SHARED = ROOT.parent / "' + SHARED + '"', "open('../" + SHARED + "/x.json')",
                 "see " + SHARED + "/conformance/cds-hooks-examples/x.json", "/work/" + SHARED + "/seed/a.txt"):
        assert POINTERS.search(line), line
    for line in ("a shared database file", "cache=shared", "tests/conformance/spec-2.0.1/jwks-public.json"):
        assert not POINTERS.search(line), line
