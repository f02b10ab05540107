"""Provenance recorded in results files: versions and the source commit."""

import re
import subprocess

from nncert.verifier import results


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


def test_only_code_changes_make_the_commit_dirty(tmp_path):
    """A benchmark re-run rewrites its results file in the tree, and the tree may change while a long run goes
    on: neither is a change of the code the run executes."""
    import sys

    import pytest

    root = results.Path(results.__file__).parents[1]
    tracked = subprocess.run(["git", "ls-files", "benchmarks/results"], capture_output=True, text=True, cwd=root)
    if tracked.returncode != 0 or not tracked.stdout.split():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    # the clone runs this checkout's results.py, committed or not
    (clone / "verifier" / "results.py").write_text((root / "verifier" / "results.py").read_text())
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "this results.py",
                    "--allow-empty"],
                   cwd=clone, check=True)

    def commit_of_clone() -> str:
        return subprocess.run([sys.executable, "-c", "from verifier.results import source_commit; "
                               "print(source_commit())"], capture_output=True, text=True, cwd=clone,
                              check=True).stdout.strip()

    with open(clone / tracked.stdout.split()[0], "a") as f:
        f.write("\n")
    assert not commit_of_clone().endswith("-dirty")
    # a change after the process started is not the code it runs
    later = subprocess.run([sys.executable, "-c", "from verifier.results import versions; "
                            "open('verifier/results.py', 'a').write('\\n'); print(versions()['nncert_commit'])"],
                           capture_output=True, text=True, cwd=clone, check=True).stdout.strip()
    assert not later.endswith("-dirty")
    assert commit_of_clone().endswith("-dirty")
