"""Provenance recorded in results files: versions and the source commit."""

import re
import subprocess

from verifier import results


def test_versions_record_the_source_commit():
    commit = results.versions()["nncert_commit"]
    # a git checkout (as in development and CI) gives its HEAD, else 'unknown'
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", commit)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=results.Path(results.__file__).parents[1])
    if head.returncode == 0:
        assert commit.startswith(head.stdout.strip())


def test_source_commit_is_unknown_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(results.subprocess, "run", no_git)
    assert results.source_commit() == "unknown"
