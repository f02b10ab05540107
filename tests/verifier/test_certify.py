"""The certify pipeline in float32 and float64 on random networks."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.random_nets import random_network
from verifier.certify import Pipeline
from verifier.problems import linf_instances


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
def test_float32_certificates_hold_in_float64(kind):
    """Whatever float32 certifies, float64 (closer to exact arithmetic) certifies too; complete MN-BaB agrees."""
    statuses = {}
    for dtype in (torch.float32, torch.float64):
        for seed in range(4):
            _, net = random_network(seed, kind, detach=True)
            net = copy.deepcopy(net).to(dtype=dtype)
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(12, *net.input_shape, generator=g)
            with torch.no_grad():
                y = net(x.to(dtype)).argmax(1)
            instances = linf_instances(x, y, 0.03, net.output_shape[0])
            pipeline = Pipeline(net, ["box", "deeppoly", "mnbab"], timeout=1e9, seed=seed)
            for rows in pipeline.run(instances):
                for row in rows:
                    statuses[(dtype, seed, row.index, row.domain)] = row.status
    n_certified = 0
    for (dtype, seed, index, domain), status in statuses.items():
        if dtype == torch.float32 and status == "certified":
            n_certified += 1
            assert statuses[(torch.float64, seed, index, domain)] == "certified", (seed, index, domain)
        if domain == "mnbab":  # complete without a timeout: the same answer in both precisions
            assert status in ("certified", "falsified")
            assert status == statuses[(torch.float64 if dtype == torch.float32 else torch.float32, seed, index,
                                       domain)]
    assert n_certified > 0
