"""How many CPU threads torch uses in ``certify``, ``compare`` and ``train``.

torch's default, one thread per core, oversubscribes a machine where other
processes run (benchmarks/results/threads.md). Unless ``--threads`` says
otherwise, the commands use the cores this process may run on minus those the
1-minute load average shows busy, shared among the processes torchrun starts
on this node, and at least one; their OpenMP threads sleep while waiting (cli/__init__.py).
"""

from __future__ import annotations

import os


def torch_threads(requested: int | None) -> int:
    """``requested`` if given, else the free cores of this process's share of the node (at least 1)."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    return max(1, (cores - busy) // max(processes, 1))
