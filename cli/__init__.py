"""The commands. OpenMP threads that wait sleep instead of spinning (unless OMP_WAIT_POLICY is set): spinning
threads take the cores other processes need, which made the demo several times slower on a shared machine
(benchmarks/README.md, "Threads under load"). The OpenMP runtime reads this when torch loads, so it is set here,
before any command module imports torch."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
