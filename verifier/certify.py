"""The per-property certification pipeline, cheapest first.

For each instance (one sample, or one VNN-LIB file with its input disjuncts):
clean check -> PGD attack -> each requested domain. The clean check and the
attack are shared by all domains; every domain then runs its own procedure
(stronger domains run their own cheaper stages internally). Instances are
processed in chunks so that Box and DeepPoly run batched.

Bounds are computed in the network's precision; with a float32 network,
``exact`` (the network in float64) keeps float32 rounding from certifying
(:func:`verifier.registry.run`), and counterexamples are confirmed against the
properties as given (float64), not their rounded copies.

Statuses: ``certified``, ``falsified`` (a counterexample confirmed by the
concrete oracle), ``unknown``, ``timeout``, ``misclassified`` (the clean input
already violates the property), ``error`` (a domain raised on the instance:
its one-line reason goes to stderr and to the row; the other instances and
domains go on).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nncert.domains import decide
from nncert.domains.network import Network
from nncert.verifier import registry
from nncert.verifier.attack import Oracle, confirmed, pgd_attack
from nncert.verifier.registry import Options, Verdict
from nncert.verifier.spec import Property, PropertyBatch

STATUSES = ("certified", "falsified", "unknown", "timeout", "misclassified", "error")


def one_line(error: BaseException) -> str:
    """The first line of an exception's message, with its type where the message alone would not say it."""
    lines = str(error).strip().splitlines()
    user_error = isinstance(error, (OSError, ValueError))  # SpecError and OnnxImportError are ValueErrors
    return lines[0] if lines and user_error else f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass
class Instance:
    """What gets one result row per domain: the union of its input disjuncts must be safe."""

    index: int
    props: list[Property]
    label: int | None = None
    clean: Tensor | None = None  # (*input_shape): the clean input, for the misclassification check


@dataclass
class Row:
    index: int
    label: int | None
    predicted: int | None
    domain: str
    status: str
    time_s: float
    counterexample: Tensor | None = field(default=None, repr=False)
    reason: str | None = None  # with status 'error'

    def to_json(self) -> dict:
        row = {"index": self.index, "label": self.label, "predicted": self.predicted, "domain": self.domain,
               "status": self.status, "time_s": round(self.time_s, 6)}
        return row | ({"reason": self.reason} if self.reason else {})


@dataclass
class Pipeline:
    net: Network
    domains: list[str]
    oracle: Oracle | None = None
    timeout: float = 60.0
    attack: bool = True
    seed: int = 0
    options: Options = field(default_factory=Options)
    chunk_size: int = 32
    exact: Network | None = None  # the network in float64; by default a float64 copy of a float32 ``net``
    recheck: bool = True  # guard float32 verdicts against rounding (see registry.run)

    def __post_init__(self):
        for domain in self.domains:
            registry.check(domain, self.net)
        if not self.recheck or self.net.dtype == torch.float64:
            self.exact = None
        elif self.exact is None:
            self.exact = copy.deepcopy(self.net).to(dtype=torch.float64)

    def run(self, instances: Iterable[Instance]) -> Iterator[list[Row]]:
        """Yields result rows as soon as they are done: per chunk for the batched domains,
        per instance for the per-property ones."""
        chunk: list[Instance] = []
        for instance in instances:
            chunk.append(instance)
            if len(chunk) == self.chunk_size:
                yield from self.certify_chunk(chunk)
                chunk = []
        if chunk:
            yield from self.certify_chunk(chunk)

    def certify_chunk(self, instances: list[Instance]) -> Iterator[list[Row]]:
        device, dtype = self.net.device, self.net.dtype
        owner = torch.tensor([k for k, inst in enumerate(instances) for _ in inst.props])
        given = PropertyBatch.stack([p for inst in instances for p in inst.props]).to(device, torch.float64)
        batch = given.to(device, dtype)  # rounded outward
        status: list[str | None] = [None] * len(instances)
        example: list[Tensor | None] = [None] * len(instances)
        shared = [0.0] * len(instances)

        start = time.perf_counter()
        predicted = self._clean_check(instances, status)
        self._share(shared, range(len(instances)), time.perf_counter() - start)

        open_props = [i for i in range(len(batch)) if status[owner[i]] is None]
        if self.attack and open_props:
            start = time.perf_counter()
            found, x = pgd_attack(self.net, batch[open_props], self.oracle, seed=self.seed,
                                  deadline=time.monotonic() + self.timeout)  # within every instance's budget
            for i, hit, point in zip(open_props, found.tolist(), x, strict=True):
                if hit and status[owner[i]] is None and self._confirm(point, given[[i]]):
                    status[owner[i]], example[owner[i]] = "falsified", self._inside(point, given[[i]]).cpu()
            self._share(shared, {owner[i].item() for i in open_props}, time.perf_counter() - start)

        def rows_of(domain: str, members: list[int]) -> list[Row]:
            domain_status, domain_time, domain_example = list(status), list(shared), list(example)
            reasons: dict[int, str] = {}
            self._run_domain(domain, batch, given, owner, set(members), domain_status, domain_time, domain_example,
                             reasons)
            return [Row(instances[k].index, instances[k].label, predicted[k], domain, domain_status[k] or "unknown",
                        domain_time[k], domain_example[k], reasons.get(k)) for k in members]

        everyone = list(range(len(instances)))
        batched = [rows_of(domain, everyone) for domain in self.domains if domain not in registry.PER_PROPERTY]
        if batched:
            yield [row for rows in batched for row in rows]
        per_property = [domain for domain in self.domains if domain in registry.PER_PROPERTY]
        for k in everyone if per_property else []:
            yield [row for domain in per_property for row in rows_of(domain, [k])]

    def _clean_check(self, instances: list[Instance], status: list[str | None]) -> list[int | None]:
        """Marks instances whose clean input violates the property; returns the predicted labels."""
        predicted: list[int | None] = [None] * len(instances)
        with_clean = [k for k, inst in enumerate(instances) if inst.clean is not None]
        if not with_clean:
            return predicted
        x = torch.stack([instances[k].clean for k in with_clean]).to(self.net.device, self.net.dtype)
        with torch.no_grad():
            y = self.oracle(x) if self.oracle is not None else self.net(x)
        specs = PropertyBatch.stack([instances[k].props[0] for k in with_clean]).to(y.device, torch.float64)
        wrong = specs.property_margin(y.double()) <= 0
        for k, label, bad in zip(with_clean, y.argmax(1).tolist(), wrong.tolist(), strict=True):
            predicted[k] = label if instances[k].label is not None else None
            if bad:
                status[k] = "misclassified"
        return predicted

    def _run_domain(self, domain: str, batch: PropertyBatch, given: PropertyBatch, owner: Tensor, members: set[int],
                    status: list[str | None], spent: list[float], example: list[Tensor | None],
                    reasons: dict[int, str]) -> None:
        """Decides the instances among ``members`` still open (status None) with ``domain``, in place.
        ``batch``: the properties in the network's precision, ``given`` as given (float64).

        An instance is falsified if any of its disjuncts is (counterexample
        confirmed by the oracle), certified if all are certified, else error
        if the domain raised on one (its reason in ``reasons``), else timeout
        if any timed out, else unknown.
        """
        open_props = [i for i in range(len(batch)) if owner[i].item() in members and status[owner[i]] is None]
        if not open_props:
            return
        per_property = domain in registry.PER_PROPERTY
        verdicts: dict[int, Verdict] = {}
        for group in ([[i] for i in open_props] if per_property else [open_props]):
            k = owner[group[0]].item()
            if per_property and status[k] == "falsified":
                continue  # another disjunct already produced a counterexample
            deadline = time.monotonic() + self.timeout - (spent[k] if per_property else 0.0)
            if per_property and deadline <= time.monotonic():  # the instance's other disjuncts took its time
                verdicts[group[0]] = registry.Verdict("timeout")
                continue
            start = time.perf_counter()
            for i, verdict in zip(group, self._verdicts(domain, given, group, deadline), strict=True):
                verdicts[i] = verdict
                if verdict.status == "error":
                    reasons[owner[i].item()] = verdict.stats["reason"]
                if verdict.status == "falsified" and self._confirm(verdict.counterexample, given[[i]]):
                    status[owner[i]] = "falsified"
                    example[owner[i]] = self._inside(verdict.counterexample, given[[i]]).cpu()
            self._share(spent, {owner[i].item() for i in group}, time.perf_counter() - start)
        for k in {owner[i].item() for i in open_props}:
            if status[k] is not None:
                continue
            states = [verdicts[i].status for i in open_props if owner[i] == k and i in verdicts]
            props = sum(1 for i in open_props if owner[i] == k)
            status[k] = ("certified" if decide.all_proved([s == "certified" for s in states], props)
                         else "error" if "error" in states else "timeout" if "timeout" in states else "unknown")

    def _verdicts(self, domain: str, given: PropertyBatch, group: list[int], deadline: float) -> list[Verdict]:
        """The domain's verdicts on the properties ``group`` of ``given`` (float64, as given); a property on which
        it raises is an ``error`` with the reason (a batch that raises is run again one property at a time, so the
        others keep theirs)."""
        try:
            return registry.run(domain, self.net, given[group], deadline, self.options, self.exact)
        except Exception as e:  # noqa: BLE001 -- one failing property must not end the run
            if len(group) > 1:
                return [verdict for i in group for verdict in self._verdicts(domain, given, [i], deadline)]
            reason = one_line(e)
            print(f"certify: {domain}: error: {reason}", file=sys.stderr)
            return [Verdict("error", stats={"reason": reason}) for _ in group]

    def _confirm(self, x: Tensor, prop: PropertyBatch) -> bool:
        """A counterexample x (*in) counts only if the concrete oracle agrees on the property as given (float64),
        at x moved into the given box (from the rounded box it was found in)."""
        net = self.exact if self.exact is not None else self.net
        return bool(confirmed(prop, self._inside(x, prop).unsqueeze(0), self.oracle, net)[0])

    @staticmethod
    def _inside(x: Tensor, prop: PropertyBatch) -> Tensor:
        """x (*in) clamped into the box of the one property ``prop``, in its precision."""
        return torch.minimum(torch.maximum(x.to(prop.lower), prop.lower[0]), prop.upper[0])

    @staticmethod
    def _share(spent: list[float], ks, seconds: float) -> None:
        ks = list(ks)
        for k in ks:
            spent[k] += seconds / max(len(ks), 1)
