"""Test-wide settings."""

import torch

# One torch thread per test process: the suite runs in parallel workers (pytest -n 2) and the tensors are
# small; oversubscribed OpenMP threads slow torch down by an order of magnitude on a 2-core machine.
torch.set_num_threads(1)
