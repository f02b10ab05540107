"""The commands' thread default: the free cores of this process's share of the node, at least one."""

import os
import subprocess
import sys

import pytest

from nncert.cli.threads import torch_threads
from tests.paths import REPO


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.mark.parametrize(("load", "processes", "expected"),
                         [(0.1, 1, 4), (1.4, 1, 3), (2.6, 1, 1), (9.0, 1, 1), (0.0, 2, 2), (1.0, 4, 1)])
def test_default_uses_the_cores_not_busy(four_cores, monkeypatch, load, processes, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert torch_threads(None) == expected


def test_an_explicit_count_wins(four_cores, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 0.0, 0.0))
    assert torch_threads(3) == 3


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_commands_let_openmp_threads_sleep_unless_told_otherwise(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"OMP_WAIT_POLICY": given} if given else {})
    out = subprocess.run([sys.executable, "-c", "import cli, os; print(os.environ['OMP_WAIT_POLICY'])"], env=env,
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected
