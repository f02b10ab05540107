"""The one place where domain names map to verification procedures.

A procedure takes the network, a batch of properties and a deadline and
returns one :class:`Verdict` per property. Adding a domain means adding one
function and one entry in ``DOMAINS``.

Float32 rounding never certifies: given the network in float64 (``exact``),
:func:`run` re-checks every float32 ``certified`` of Box and DeepPoly in
float64 (one more batched pass over the certified properties only), and runs
MN-BaB and the MILP on the float64 network. Branch-and-bound closes
subproblems on bounds that depend on float32 intermediate bounds (whose
rounding no single leaf's re-check could undo), and re-running a float32
certificate in float64 would cost the float64 run on top of the float32 one,
so MN-BaB computes in float64 from the start (its cost:
benchmarks/README.md, "Float32 verdicts guarded by float64").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nncert.domains import box
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.mnbab import MNBaBConfig, mnbab_verify
from nncert.domains.network import Network
from nncert.verifier.attack import pgd_attack
from nncert.verifier.spec import PropertyBatch, SpecError


@dataclass
class Verdict:
    status: str                           # 'certified' | 'falsified' | 'unknown' | 'timeout'
    counterexample: Tensor | None = None  # (*input_shape), only with 'falsified'
    stats: dict = field(default_factory=dict)


@dataclass
class Options:
    """Knobs of the stronger domains; the CLI fills them."""

    milp_backend: str = "auto"
    mnbab: MNBaBConfig = field(default_factory=MNBaBConfig)


Procedure = Callable[[Network, PropertyBatch, float, Options], list[Verdict]]


def _from_row_bounds(batch: PropertyBatch, row_lower: Tensor) -> list[Verdict]:
    return [Verdict("certified" if ok else "unknown") for ok in batch.certified(row_lower).tolist()]


def verify_box(net: Network, batch: PropertyBatch, deadline: float, options: Options) -> list[Verdict]:
    return _from_row_bounds(batch, box.bound_linear(net, batch.lower, batch.upper, batch.C))


def verify_deeppoly(net: Network, batch: PropertyBatch, deadline: float, options: Options) -> list[Verdict]:
    return _from_row_bounds(batch, DeepPoly(net, batch.lower, batch.upper).bound(batch.C))


def verify_mnbab(net: Network, batch: PropertyBatch, deadline: float, options: Options) -> list[Verdict]:
    verdicts = []
    for i in range(len(batch)):
        prop = batch[[i]]

        def is_counterexample(x: Tensor, prop=prop) -> Tensor:
            return prop.property_margin(net(x)) <= 0

        def attack(deadline: float, prop=prop) -> Tensor | None:
            # seed 1: the pipeline's cheap search (seed 0) already tried seed 0's first restarts
            found, x = pgd_attack(net, prop, restarts=options.mnbab.attack_restarts, seed=1, deadline=deadline)
            return x[0] if bool(found[0]) else None

        result = mnbab_verify(net, batch.lower[i], batch.upper[i], batch.C[i], batch.d[i], batch.clause, deadline,
                              is_counterexample, options.mnbab, attack if options.mnbab.attack_restarts else None)
        verdicts.append(Verdict(result.status, result.counterexample, result.stats))
    return verdicts


def check(domain: str, net: Network) -> None:
    """Raise SpecError if ``domain`` cannot verify ``net`` at all (an option to change, not a failed instance)."""
    if domain == "milp":
        from nncert.domains.milp import unsupported_op

        if unsupported_op(net) is not None:
            raise SpecError(f"--domain milp cannot encode {unsupported_op(net)} exactly (Sigmoid and Tanh are not "
                            "piecewise linear); use box, deeppoly or mnbab")


def verify_milp(net: Network, batch: PropertyBatch, deadline: float, options: Options) -> list[Verdict]:
    from nncert.domains.milp import milp_verify

    check("milp", net)

    verdicts = []
    for i in range(len(batch)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            verdicts.append(Verdict("timeout"))
            continue
        result = milp_verify(net, batch.lower[i], batch.upper[i], batch.C[i], batch.d[i], batch.clause,
                             timeout=remaining, backend=options.milp_backend)
        verdicts.append(Verdict(result.status, result.counterexample))
    return verdicts


DOMAINS: dict[str, Procedure] = {
    "box": verify_box,
    "deeppoly": verify_deeppoly,
    "mnbab": verify_mnbab,
    "milp": verify_milp,
}

# domains that decide one property at a time (and honour the per-property timeout inside)
PER_PROPERTY = {"mnbab", "milp"}


def run(domain: str, net: Network, batch: PropertyBatch, deadline: float, options: Options,
        exact: Network | None = None) -> list[Verdict]:
    """``domain``'s verdicts on ``batch`` (N properties, best as given: the float64 guard decides on it, ``net``
    on its copy rounded to ``net``'s dtype); with ``exact``, the network in float64, and a ``net`` of lower
    precision, rounding cannot certify (see the module doc)."""
    with torch.no_grad():
        if exact is None or net.dtype == torch.float64:
            return DOMAINS[domain](net, batch.to(dtype=net.dtype), deadline, options)
        if domain in PER_PROPERTY:  # mnbab, milp
            return DOMAINS[domain](exact, batch.to(dtype=torch.float64), deadline, options)
        return _recheck_certified(DOMAINS[domain], net, exact, batch, deadline, options)


def _recheck_certified(procedure: Procedure, net: Network, exact: Network, batch: PropertyBatch, deadline: float,
                       options: Options) -> list[Verdict]:
    """``procedure`` on ``net``, its ``certified`` verdicts kept only where it certifies on ``exact`` too."""
    verdicts = procedure(net, batch.to(dtype=net.dtype), deadline, options)
    again = [i for i, v in enumerate(verdicts) if v.status == "certified"]
    if again:
        for i, v in zip(again, procedure(exact, batch[again].to(dtype=torch.float64), deadline, options), strict=True):
            if v.status != "certified":
                verdicts[i] = Verdict("unknown", stats={"float64_recheck": v.status})
    return verdicts
