"""Exact verification of small ReLU networks by mixed-integer linear programming.

The reference the test-suite checks every other domain against, and
``--domain milp``. The network becomes linear constraints over the variables

    v = (x, [z, y, a] per ReLU, t)

with x the input (bounded by the input box), z the pre-activations of each
ReLU (bounded by DeepPoly's intermediate bounds), y the outputs of its
unstable neurons, a their binary phase indicators and t the objective. Affine
ops are composed into sparse matrices from ``op.backward`` on identity
coefficients, so every node is an expression ``E v + e`` and only
pre-activations become variables. A ReLU neuron with bounds ``l < 0 < u`` is
encoded exactly by the big-M constraints

    y >= z,  y >= 0,  y <= z - l (1 - a),  y <= u a,  a in {0, 1};

stable neurons are ``y = z`` or ``y = 0``. A LeakyReLU is ``alpha z + (1 - alpha)
relu(z)``, exact. A MaxPool output ``y = max_j z_j`` over the window inputs that
can be the largest (``u_j >= max_i l_i``) is exact with one binary per input:

    y >= z_j,  y <= z_j + (U - l_j) (1 - a_j),  sum_j a_j = 1,  U = max_i u_i;

a window with a single such input is ``y = z_j``. Sigmoid and Tanh have no
exact encoding: :func:`unsupported_op` names them and the encoding refuses them
(:class:`NotEncodable`). A Floor ``k = floor(z)`` (input
abstractions) is an integer k with ``z - 1 - tol <= k <= z + tol``: exact up to
its rounding tolerance (a relaxation, so still sound); a Clip is
``low + relu(z - low)`` then ``high - relu(high - .)``, exact. A clause (rows J of ``C y <= d``) is
decided by ``min t s.t. C_j y - d_j <= t (j in J)``: its margin. The
constraint matrix is built once per property; clauses only add their rows.
:func:`milp_verify` stops a clause's search as soon as the sign of its minimum
is settled (unless ``exact``); :func:`milp_minimize` always solves to
optimality.

Tolerance policy (a ``certified`` must never be wrong):

- Everything is computed in float64 on a float64 copy of the network, and the
  DeepPoly bounds are widened by ``BOUND_SLACK * (1 + |bound|)`` before they
  become big-M constants and variable bounds, so rounding cannot cut off a
  reachable point.
- A clause counts as safe only if the solver's proven lower bound on its
  minimum exceeds ``CERTIFY_TOL`` (1e-6, absolute, in output units). The
  solvers run with tight feasibility tolerances (``FEASIBILITY_TOL``), and
  slack in them only enlarges the feasible set, i.e. lowers the bound.
- A clause is falsified only by a point: the solver's input x, clipped to the
  box and cast to the dtype of ``lower``, must give a clause margin ``<= 0``
  under ``net.forward`` both in float64 and in the network's own dtype. This
  is checked on every solution found, also on a timeout.
- A clause whose search ends, not by the time limit, without either (its
  minimum is within the tolerances of 0, or the solver's point fails the
  check) makes the result ``unknown``: a fourth status, only for that
  numerical corner case.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass, replace

import highspy
import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from nncert.domains.activations import LeakyReLU
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.maxpool import MaxPool2d
from nncert.domains.network import Activation, Clip, Floor, Network, ReLU

BOUND_SLACK = 1e-6   # relative + absolute widening of the intermediate bounds
CERTIFY_TOL = 1e-6   # a clause is safe only if its proven minimum margin exceeds this
ABS_GAP = 1e-7       # MIP optimality gaps: "optimal" means within these of the true minimum
REL_GAP = 1e-9
FEASIBILITY_TOL = 1e-9  # row and integrality tolerances of the solvers
_CHUNK_ENTRIES = 1 << 22  # largest dense block materialised when extracting an affine op's matrix
_GUROBI_LICENCE_ERRORS = (10009, 10010)  # no licence / size-limited licence: fall back to HiGHS


class BackendUnavailable(ImportError):
    """The requested MILP backend cannot be imported."""


class NotEncodable(ValueError):
    """The network has an op without an exact MILP encoding (Sigmoid, Tanh)."""


def unsupported_op(net: Network) -> str | None:
    """The first op the encoding cannot represent exactly, as 'Op at node i', or None."""
    for i, node in enumerate(net.nodes):
        if isinstance(node.op, Activation) and not isinstance(node.op, LeakyReLU | MaxPool2d):
            return f"{node.op!r} at node {i}"
    return None


@dataclass
class MilpResult:
    """Outcome of :func:`milp_verify`.

    status: 'certified' | 'falsified' | 'timeout' | 'unknown' (see the module docstring).
    margin: the decisive clause's margin over the box, None on timeout. Certified:
        the smallest of the clauses' proven lower bounds (> CERTIFY_TOL); with
        ``exact`` the smallest clause minimum (within ABS_GAP). Falsified: the
        solver's value at the counterexample (<= CERTIFY_TOL; with ``exact`` the
        clause's minimum). Unknown: the undecided clause's minimum.
    counterexample: an input (*input_shape) in the box reaching the unsafe region, only when falsified.
    """

    status: str
    margin: float | None
    counterexample: Tensor | None
    time_s: float
    backend: str = "highs"


@dataclass
class _Problem:
    """min cost . v  s.t.  A v (= or <=) rhs,  col_lower <= v <= col_upper,  v[integer] integral.

    A: (rows, n_vars) csr; rhs, equality: (rows,); col_*, cost, integer: (n_vars,).
    The first n_inputs variables are the network input (flattened).
    """

    A: sparse.csr_matrix
    rhs: np.ndarray
    equality: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray
    cost: np.ndarray
    n_inputs: int


@dataclass
class _Solution:
    """What a backend reports: whether time ran out, a proven lower bound and the best point found (if any).

    Unless ``timed_out``, the solver either proved optimality (lower == value
    within the MIP gaps) or, in decision mode, stopped at a decided sign.
    """

    timed_out: bool
    lower: float
    value: float | None
    x: np.ndarray | None  # (n_inputs,)


# -- encoding --------------------------------------------------------------------------------------


class _Builder:
    """Accumulates variables and constraint rows; expressions are csr matrices over the variables so far."""

    def __init__(self):
        self.n_vars = 0
        self.col_lower: list[np.ndarray] = []
        self.col_upper: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.rows: list[tuple[sparse.csr_matrix, np.ndarray, bool]] = []

    def add_vars(self, lower: np.ndarray, upper: np.ndarray, integer: bool = False) -> np.ndarray:
        """New variables with the given bounds (n,); returns their indices (n,)."""
        idx = np.arange(self.n_vars, self.n_vars + len(lower))
        self.n_vars += len(lower)
        self.col_lower.append(np.asarray(lower, dtype=np.float64))
        self.col_upper.append(np.asarray(upper, dtype=np.float64))
        self.integer.append(np.full(len(lower), integer))
        return idx

    def add_rows(self, M: sparse.spmatrix, rhs: np.ndarray, equality: bool) -> None:
        """Rows ``M v = rhs`` or ``M v <= rhs``; M (r, <= n_vars)."""
        self.rows.append((sparse.csr_matrix(M), np.asarray(rhs, dtype=np.float64), equality))

    def select(self, idx: np.ndarray) -> sparse.csr_matrix:
        """The expression picking variables idx (k,), -1 for the constant 0: (k, n_vars)."""
        keep = idx >= 0
        rows = np.flatnonzero(keep)
        return sparse.csr_matrix((np.ones(len(rows)), (rows, idx[keep])), shape=(len(idx), self.n_vars))

    def widen(self, M: sparse.csr_matrix) -> sparse.csr_matrix:
        """An expression re-shaped to the current number of variables (new columns are zero)."""
        return sparse.csr_matrix((M.data, M.indices, M.indptr), shape=(M.shape[0], self.n_vars))

    def problem(self, n_inputs: int) -> _Problem:
        """All rows over all variables, minimising the last variable."""
        A = sparse.vstack([self.widen(M) for M, _, _ in self.rows], format="csr")
        equality = np.concatenate([np.full(len(rhs), eq) for _, rhs, eq in self.rows])
        cost = np.zeros(self.n_vars)
        cost[-1] = 1.0
        return _Problem(A, np.concatenate([rhs for _, rhs, _ in self.rows]), equality,
                        np.concatenate(self.col_lower), np.concatenate(self.col_upper),
                        np.concatenate(self.integer), cost, n_inputs)


def _float64_copy(net: Network) -> Network:
    """The same network on the CPU in float64, detached; ``net`` itself is left untouched."""
    ops = []
    for node in net.nodes[1:]:
        op = copy.copy(node.op)
        op.detach()
        op.to(device="cpu", dtype=torch.float64)
        ops.append((op, node.inputs))
    return Network(net.input_shape, ops)


def _affine_matrices(op) -> tuple[list[sparse.csr_matrix], np.ndarray]:
    """W_j (n_out, n_in_j) per input and b (n_out,) of an affine op, from ``backward`` on identity rows."""
    n_out = math.prod(op.out_shape)
    chunk = max(1, _CHUNK_ENTRIES // max(n_out, *(math.prod(s) for s in op.in_shapes)))
    blocks: list[list[sparse.csr_matrix]] = [[] for _ in op.in_shapes]
    biases = []
    for start in range(0, n_out, chunk):
        k = min(chunk, n_out - start)
        eye = torch.zeros(1, k, n_out, dtype=torch.float64)
        eye[0, torch.arange(k), torch.arange(start, start + k)] = 1.0
        coefficients, bias = op.backward(eye.reshape(1, k, *op.out_shape))
        for block, W in zip(blocks, coefficients):
            block.append(sparse.csr_matrix(W.reshape(k, -1).numpy()))
        biases.append(bias[0].numpy())
    return [sparse.vstack(b, format="csr") for b in blocks], np.concatenate(biases)


def _widened(bounds: tuple[Tensor, Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """DeepPoly bounds (1, *s) as flat float64 arrays, widened by BOUND_SLACK."""
    lo, hi = (b.reshape(-1).double().numpy() for b in bounds)
    return lo - BOUND_SLACK * (1 + np.abs(lo)), hi + BOUND_SLACK * (1 + np.abs(hi))


def _encode_relu(builder: _Builder, pre: tuple[sparse.csr_matrix, np.ndarray], lo: np.ndarray, hi: np.ndarray
                 ) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Constraints of y = relu(pre) with pre-activation bounds lo, hi (n,).

    Returns y's expression (n, n_vars), the pre-activation variables z (n,) and
    each neuron's phase indicator a (n,), -1 for the stable ones.
    """
    E, e = pre
    z = builder.add_vars(lo, hi)
    builder.add_rows(builder.select(z) - builder.widen(E), e, True)  # z = E v + e
    unstable = np.flatnonzero((lo < 0) & (hi > 0))
    m = len(unstable)
    l, u = lo[unstable], hi[unstable]
    y = builder.add_vars(np.zeros(m), u)
    a = builder.add_vars(np.zeros(m), np.ones(m), integer=True)
    zu = z[unstable]
    r = np.arange(m)
    rows = np.concatenate([r, r, m + r, m + r, m + r, 2 * m + r, 2 * m + r])
    cols = np.concatenate([zu, y, y, zu, a, y, a])
    vals = np.concatenate([np.ones(m), -np.ones(m), np.ones(m), -np.ones(m), -l, np.ones(m), -u])
    # z - y <= 0;  y - z - l a <= -l;  y - u a <= 0
    M = sparse.csr_matrix((vals, (rows, cols)), shape=(3 * m, builder.n_vars))
    builder.add_rows(M, np.concatenate([np.zeros(m), -l, np.zeros(m)]), False)
    out = np.where(lo >= 0, z, -1)
    out[unstable] = y
    phase = np.full(len(lo), -1)
    phase[unstable] = a
    return builder.select(out), z, phase


def _encode_floor(builder: _Builder, pre: tuple[sparse.csr_matrix, np.ndarray], lo: np.ndarray, hi: np.ndarray,
                  pre_lo: np.ndarray, pre_hi: np.ndarray, rel_tol: float) -> sparse.csr_matrix:
    """Constraints of k = floor(z) with bounds lo, hi of k (n,): an integer k in z - 1 - tol <= k <= z + tol."""
    E, e = pre
    k = builder.add_vars(np.floor(lo), np.ceil(hi), integer=True)
    tol = rel_tol * np.maximum(np.abs(pre_lo), np.abs(pre_hi))
    K, Z = builder.select(k), builder.widen(E)
    builder.add_rows(sparse.vstack([K - Z, Z - K]), np.concatenate([e + tol, 1 + tol - e]), False)
    return builder.select(k)


def _encode_clip(builder: _Builder, pre: tuple[sparse.csr_matrix, np.ndarray], lo: np.ndarray, hi: np.ndarray,
                 low: float | None, high: float | None) -> tuple[sparse.csr_matrix, np.ndarray]:
    """y = min(max(z, low), high) as low + relu(z - low), then high - relu(high - y); returns y = E v + e."""
    E, e = pre
    if low is not None:
        E, e = _encode_relu(builder, (E, e - low), lo - low, hi - low)[0], np.full(len(e), low)
        lo, hi = np.maximum(lo, low), np.maximum(hi, low)
    if high is not None:
        E, e = -_encode_relu(builder, (-builder.widen(E), high - e), high - hi, high - lo)[0], np.full(len(e), high)
    return E, e


def _encode_leaky_relu(builder: _Builder, pre: tuple[sparse.csr_matrix, np.ndarray], lo: np.ndarray,
                       hi: np.ndarray, alpha: float) -> tuple[sparse.csr_matrix, np.ndarray]:
    """y = alpha z + (1 - alpha) relu(z); returns y = E v + e."""
    relu, z, _ = _encode_relu(builder, pre, lo, hi)
    return sparse.csr_matrix(alpha * builder.select(z) + (1 - alpha) * builder.widen(relu)), np.zeros(len(z))


def _encode_maxpool(builder: _Builder, pre: tuple[sparse.csr_matrix, np.ndarray], lo: np.ndarray, hi: np.ndarray,
                    op: MaxPool2d) -> tuple[sparse.csr_matrix, np.ndarray]:
    """y = max of each window of z = pre (see the module docstring); returns y = E v + e."""
    E, e = pre
    channels, h, w = op.in_shapes[0]
    positions = op.positions(torch.zeros(0)).numpy()  # (kk, L)
    offsets = (np.arange(channels) * h * w)[:, None, None]
    window = np.where(positions >= 0, positions + offsets, -1).transpose(0, 2, 1).reshape(-1, positions.shape[0])
    lw, uw = (np.where(window >= 0, b[window], -np.inf) for b in (lo, hi))  # (n_out, kk)
    floor, ceiling = lw.max(1), uw.max(1)
    candidate = (window >= 0) & (uw >= floor[:, None])
    multi = np.flatnonzero(candidate.sum(1) > 1)
    single = np.flatnonzero(candidate.sum(1) == 1)
    y = builder.add_vars(floor[multi], ceiling[multi])
    o, j = np.nonzero(candidate[multi])  # o: row of multi, j: window entry
    z_in, big = window[multi][o, j], ceiling[multi][o] - lw[multi][o, j]
    a = builder.add_vars(np.zeros(len(o)), np.ones(len(o)), integer=True)
    Z, Y = builder.widen(E)[z_in], builder.select(y[o])
    A = sparse.csr_matrix((big, (np.arange(len(o)), a)), shape=(len(o), builder.n_vars))
    builder.add_rows(Z - Y, -e[z_in], False)                          # z_j <= y
    builder.add_rows(Y - Z + A, big + e[z_in], False)                 # y <= z_j + (U - l_j)(1 - a_j)
    builder.add_rows(sparse.csr_matrix((np.ones(len(o)), (o, a)), shape=(len(multi), builder.n_vars)),
                     np.ones(len(multi)), True)                       # one a_j per window
    rows = np.full(len(window), -1)
    rows[multi] = y
    chosen = window[single][candidate[single]]
    pick = sparse.csr_matrix((np.ones(len(single)), (single, chosen)), shape=(len(window), len(e)))
    return sparse.csr_matrix(pick @ builder.widen(E) + builder.select(rows)), pick @ e


@dataclass
class _Encoding:
    """The network's constraints (``base``, objective t = the last variable) and its output ``y = E v + e``."""

    base: _Problem
    out_matrix: sparse.csr_matrix  # (n_out, n_vars)
    out_offset: np.ndarray         # (n_out,)
    relus: dict[int, tuple[np.ndarray, np.ndarray]]  # ReLU node -> its z and a (n,) each, see _encode_relu

    def clause(self, C: np.ndarray, d: np.ndarray) -> _Problem:
        """Add the rows ``C_j y - d_j <= t``: C (r, n_out), d (r,)."""
        p = self.base
        t = np.full(len(d), p.A.shape[1] - 1)
        rows = sparse.csr_matrix(C) @ self.out_matrix - sparse.csr_matrix(
            (np.ones(len(d)), (np.arange(len(d)), t)), shape=(len(d), p.A.shape[1]))
        return _Problem(sparse.vstack([p.A, rows], format="csr"), np.concatenate([p.rhs, d - C @ self.out_offset]),
                        np.concatenate([p.equality, np.zeros(len(d), bool)]), p.col_lower, p.col_upper,
                        p.integer, p.cost, p.n_inputs)


def _encode(net: Network, lower: Tensor, upper: Tensor, known: dict | None = None) -> _Encoding:
    """MILP encoding of a float64 network on the box [lower, upper] (*input_shape).

    ``known`` optionally adds valid pre-activation bounds (node -> (lo, hi), each (1, *s)),
    e.g. those of a branch-and-bound subproblem; they are intersected with DeepPoly's.
    """
    if unsupported_op(net) is not None:
        raise NotEncodable(f"no exact MILP encoding of {unsupported_op(net)} (Sigmoid and Tanh are not piecewise "
                           "linear); use box, deeppoly or mnbab")
    lo_in, hi_in = (b.reshape(1, *net.input_shape).double().cpu() for b in (lower, upper))
    dp = DeepPoly(net, lo_in, hi_in)
    known = {i: (lo.double().cpu(), hi.double().cpu()) for i, (lo, hi) in (known or {}).items()}
    dp.compute_intermediate_bounds(known=known)
    builder = _Builder()
    x = builder.add_vars(lo_in.reshape(-1).numpy(), hi_in.reshape(-1).numpy())
    exprs = {0: (builder.select(x), np.zeros(len(x)))}
    relus = {}
    for i, node in enumerate(net.nodes[1:], start=1):
        if isinstance(node.op, ReLU):
            pre = node.inputs[0]
            y, z, phase = _encode_relu(builder, exprs[pre], *_widened(dp.bounds[pre]))
            exprs[i], relus[i] = (y, np.zeros(len(exprs[pre][1]))), (z, phase)
            continue
        if isinstance(node.op, Floor):
            pre = node.inputs[0]
            exprs[i] = (_encode_floor(builder, exprs[pre], *_widened(dp.bounds[i]), *_widened(dp.bounds[pre]),
                                      node.op.rel_tol), np.zeros(len(exprs[pre][1])))
            continue
        if isinstance(node.op, Clip):
            pre = node.inputs[0]
            exprs[i] = _encode_clip(builder, exprs[pre], *_widened(dp.bounds[pre]), node.op.low, node.op.high)
            continue
        if isinstance(node.op, LeakyReLU):
            pre = node.inputs[0]
            exprs[i] = _encode_leaky_relu(builder, exprs[pre], *_widened(dp.bounds[pre]), node.op.alpha)
            continue
        if isinstance(node.op, MaxPool2d):
            pre = node.inputs[0]
            exprs[i] = _encode_maxpool(builder, exprs[pre], *_widened(dp.bounds[pre]), node.op)
            continue
        Ws, b = _affine_matrices(node.op)
        E = sum(W @ builder.widen(exprs[j][0]) for W, j in zip(Ws, node.inputs))
        exprs[i] = (sparse.csr_matrix(E), b + sum(W @ exprs[j][1] for W, j in zip(Ws, node.inputs)))
    builder.add_vars(np.array([-np.inf]), np.array([np.inf]))  # t
    E_out, e_out = exprs[len(net.nodes) - 1]
    return _Encoding(builder.problem(len(x)), builder.widen(E_out), e_out, relus)


# -- backends --------------------------------------------------------------------------------------

# RINS / RENS sub-MIPs and presolve re-process the dense input layer and dominate the time on MNIST-sized nets
_HIGHS_OPTIONS = {"output_flag": False, "presolve": "off", "mip_abs_gap": ABS_GAP, "mip_rel_gap": REL_GAP,
                  "mip_feasibility_tolerance": FEASIBILITY_TOL, "primal_feasibility_tolerance": FEASIBILITY_TOL,
                  "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False}
_HIGHS_DONE = {highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kInterrupt}


def _stop_when_decided(event) -> None:
    """HiGHS callback of decision mode: stop once the minimum's sign is settled either way."""
    if event.data_out.mip_dual_bound > CERTIFY_TOL or event.data_out.mip_primal_bound <= -CERTIFY_TOL:
        event.interrupt()


@contextlib.contextmanager
def _stdout_silenced():
    """HiGHS prints a banner from C++ when constructed, before output can be turned off: hide fd 1 meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _solve_highs(p: _Problem, time_limit: float | None, decide: bool, options: dict | None = None) -> _Solution:
    """Solve with HiGHS (highspy); raises RuntimeError unless HiGHS solves, is stopped by us, or runs out of time.

    ``options`` override ``_HIGHS_OPTIONS``.
    """
    with _stdout_silenced():
        h = highspy.Highs()
    for name, value in {**_HIGHS_OPTIONS, **(options or {})}.items():
        h.setOptionValue(name, value)
    if time_limit is not None:
        h.setOptionValue("time_limit", max(time_limit, 0.0))
    A = p.A
    h.passModel(A.shape[1], A.shape[0], A.nnz, int(highspy.MatrixFormat.kRowwise), int(highspy.ObjSense.kMinimize),
                0.0, p.cost, p.col_lower, p.col_upper, np.where(p.equality, p.rhs, -np.inf), p.rhs,
                A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data, p.integer.astype(np.int32))
    if decide:
        h.cbMipInterrupt.subscribe(_stop_when_decided)
    h.run()
    status, info = h.getModelStatus(), h.getInfo()
    if status == highspy.HighsModelStatus.kInfeasible:
        # the (widened, hence valid) constraints admit no input at all: nothing reaches the unsafe set
        return _Solution(False, math.inf, None, None)
    timed_out = status == highspy.HighsModelStatus.kTimeLimit
    if not timed_out and status not in _HIGHS_DONE:
        raise RuntimeError(f"HiGHS failed on the MILP encoding: {h.modelStatusToString(status)}")
    found = info.primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
    value = info.objective_function_value if found else None
    if p.integer.any():
        lower = info.mip_dual_bound
    else:
        lower = value if status == highspy.HighsModelStatus.kOptimal else -math.inf
    x = np.asarray(h.getSolution().col_value[: p.n_inputs]) if found else None
    return _Solution(timed_out, lower, value, x)


def _solve_gurobi(p: _Problem, time_limit: float | None, decide: bool) -> _Solution | None:
    """Solve with Gurobi; None when its licence refuses the model (size-limited pip licence, no licence)."""
    import gurobipy as gp

    GRB = gp.GRB
    try:
        with gp.Env(params={"OutputFlag": 0}) as env, gp.Model(env=env) as m:
            v = m.addMVar(p.A.shape[1], lb=np.clip(p.col_lower, -GRB.INFINITY, GRB.INFINITY),
                          ub=np.clip(p.col_upper, -GRB.INFINITY, GRB.INFINITY), obj=p.cost,
                          vtype=np.where(p.integer, GRB.INTEGER, GRB.CONTINUOUS))
            m.addMConstr(p.A, v, np.where(p.equality, GRB.EQUAL, GRB.LESS_EQUAL), p.rhs)
            m.Params.MIPGap, m.Params.MIPGapAbs = REL_GAP, ABS_GAP
            m.Params.FeasibilityTol = m.Params.IntFeasTol = FEASIBILITY_TOL
            if decide:
                m.Params.BestBdStop, m.Params.BestObjStop = CERTIFY_TOL, -CERTIFY_TOL
            if time_limit is not None:
                m.Params.TimeLimit = max(time_limit, 0.0)
            m.optimize()
            if m.Status == GRB.INFEASIBLE:  # as for HiGHS: no input satisfies the valid constraints
                return _Solution(False, math.inf, None, None)
            if m.Status not in (GRB.OPTIMAL, GRB.TIME_LIMIT, GRB.USER_OBJ_LIMIT):
                raise RuntimeError(f"Gurobi failed on the MILP encoding: status {m.Status}")
            found = m.SolCount > 0
            value = m.ObjVal if found else None
            lower = m.ObjBound if m.IsMIP else (value if m.Status == GRB.OPTIMAL else -math.inf)
            return _Solution(m.Status == GRB.TIME_LIMIT, lower, value, v.X[: p.n_inputs].copy() if found else None)
    except gp.GurobiError as error:
        if error.errno in _GUROBI_LICENCE_ERRORS:
            return None
        raise


def _gurobi_installed() -> bool:
    return importlib.util.find_spec("gurobipy") is not None


def _backends(backend: str) -> list[str]:
    """The backends to try in order: 'auto' prefers Gurobi when installed; HiGHS is always the fallback."""
    has_gurobi = _gurobi_installed()
    if backend == "highs" or (backend == "auto" and not has_gurobi):
        return ["highs"]
    if backend == "gurobi" and not has_gurobi:
        raise BackendUnavailable("MILP backend 'gurobi' needs gurobipy (pip install 'nncert[gurobi]'); "
                                 "use backend 'highs' or 'auto'")
    if backend in ("auto", "gurobi"):
        return ["gurobi", "highs"]
    raise ValueError(f"unknown MILP backend {backend!r}: expected 'auto', 'highs' or 'gurobi'")


def _solve(p: _Problem, time_limit: float | None, backends: list[str], decide: bool = False) -> tuple[_Solution, str]:
    """Solve with the first backend that accepts the model; a refusing backend is dropped from ``backends``.

    ``decide``: stop as soon as the minimum is proven > CERTIFY_TOL or a point with value <= -CERTIFY_TOL is found.
    """
    while backends[0] != "highs":
        solution = _solve_gurobi(p, time_limit, decide)
        if solution is not None:
            return solution, backends[0]
        backends.pop(0)
    return _solve_highs(p, time_limit, decide), "highs"


class SplitLP:
    """The LP relaxation of one clause's MILP encoding, in which branch-and-bound subproblems only move column bounds.

    Encoded once on the root's bounds; a subproblem fixes the phase indicator
    a of each split neuron (y = z or y = 0 exactly, unlike the triangle) and
    narrows every pre-activation to its own bounds. Its optimum is a lower
    bound of the clause margin ``max_j C_j y - d_j`` on the subproblem's region,
    +inf if the LP is infeasible (the region is empty). It sees the
    triangle constraints of every layer at once, where a back-substituted bound
    uses one linear lower or upper line per neuron: it can prove regions empty
    whose back-substituted bound is far from it (mnist_fc 256x4 prop_10_0.05).
    Each subproblem is solved afresh with presolve, which alone often finds an
    empty region; dual simplex warm-started from the previous subproblem's
    basis, without presolve, took seconds instead of a tenth of one.
    """

    OPTIONS = {"presolve": "on"}

    def __init__(self, net: Network, lower: Tensor, upper: Tensor, bounds: dict[int, tuple[Tensor, Tensor]],
                 C: Tensor, d: Tensor):
        """lower, upper: the input box (*input_shape); bounds: valid pre-activation bounds (node -> (1, *s) each);
        C (r, n_out), d (r,): the clause's rows."""
        encoding = _encode(_float64_copy(net), lower, upper, bounds)
        p = encoding.clause(C.detach().double().cpu().numpy(), d.detach().double().cpu().numpy())
        self.base = replace(p, integer=np.zeros_like(p.integer))
        self.vars = {net.nodes[r].inputs[0]: v for r, v in encoding.relus.items()}  # pre-activation node -> (z, a)

    def margin(self, split: dict[int, np.ndarray], bounds: dict[int, tuple[Tensor, Tensor]],
               time_limit: float) -> float:
        """LP lower bound of the clause margin on one subproblem; -inf when the LP is not solved in time.

        split: pre-activation node -> (n,) in {-1, 0, +1}; bounds: pre-activation node -> (lo, hi) (*s) each, on
        the CPU.
        """
        col_lower, col_upper = self.base.col_lower.copy(), self.base.col_upper.copy()
        for node, (z, a) in self.vars.items():
            lo, hi = _widened(bounds[node])
            col_lower[z], col_upper[z] = np.maximum(col_lower[z], lo), np.minimum(col_upper[z], hi)
            fixed = (split[node] != 0) & (a >= 0)
            col_lower[a[fixed]] = col_upper[a[fixed]] = (split[node][fixed] > 0).astype(np.float64)
        if (col_lower > col_upper).any():
            return math.inf
        try:
            solution = _solve_highs(replace(self.base, col_lower=col_lower, col_upper=col_upper), time_limit, False,
                                    self.OPTIONS)
        except RuntimeError:  # e.g. "unbounded or infeasible" from presolve: no verdict
            return -math.inf
        return -math.inf if solution.timed_out else solution.lower


# -- verification ----------------------------------------------------------------------------------


def _to_input(x: np.ndarray, lower: Tensor, upper: Tensor) -> Tensor:
    """A solver's flat input (n_in,) as a point of the box, in the dtype and device of ``lower``."""
    point = torch.from_numpy(x).reshape(lower.shape).to(lower)
    return torch.minimum(torch.maximum(point, lower), upper)


def _clause_margin(net: Network, x: Tensor, C: Tensor, d: Tensor) -> float:
    """max_j C_j net(x) - d_j for one input x (*input_shape), computed in the dtype of ``net``."""
    with torch.no_grad():
        y = net(x.to(net.device, net.dtype).unsqueeze(0)).reshape(-1)
    return float((C.to(y) @ y - d.to(y)).max())


def _confirmed(nets: tuple[Network, Network], solution: _Solution, lower: Tensor, upper: Tensor,
               C: Tensor, d: Tensor) -> Tensor | None:
    """The solver's point if it really violates the clause (C (r, n_out), d (r,)) in both networks' dtypes."""
    if solution.x is None or solution.value > CERTIFY_TOL:
        return None
    x = _to_input(solution.x, lower, upper)
    return x if all(_clause_margin(net, x, C, d) <= 0 for net in nets) else None


def _clause_order(net: Network, lower: Tensor, upper: Tensor, C: Tensor, d: Tensor, clause: Tensor) -> list[int]:
    """Clause ids, most violated at the box centre first: a counterexample tends to come early."""
    with torch.no_grad():
        y = net(((lower + upper) / 2).to(net.dtype).cpu().unsqueeze(0)).reshape(-1)
    rows = C @ y - d
    n_clauses = int(clause.max()) + 1 if clause.numel() else 0
    return sorted(range(n_clauses), key=lambda k: float(rows[clause == k].max()))


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def milp_verify(net: Network, lower: Tensor, upper: Tensor, C: Tensor, d: Tensor, clause: Tensor,
                timeout: float | None = None, backend: str = "auto", exact: bool = False,
                known: dict | None = None) -> MilpResult:
    """Decide the property: unsafe iff some clause k has ``C_j y <= d_j`` for all rows j with clause[j] == k.

    lower, upper: the input box (*input_shape). C (m, n_out), d (m,), clause (m,) long.
    Clauses are solved most violated at the box centre first; the first one
    with a confirmed counterexample returns ``falsified``. By default each
    clause's MILP stops as soon as its sign is settled; ``exact`` solves each
    to optimality so that the margin is the exact minimum (slower).
    ``timeout`` (seconds) bounds the whole call, encoding included; a clause
    proven safe before its time runs out still counts. ``backend``: 'auto'
    (Gurobi if installed and licensed for the model, else HiGHS), 'highs' or
    'gurobi' (raises BackendUnavailable without gurobipy; falls back to HiGHS
    when the licence refuses the model). ``known``: extra valid pre-activation
    bounds, see :func:`_encode`. Tolerances: see the module docstring.
    """
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    backends = _backends(backend)
    net64 = _float64_copy(net)
    encoding = _encode(net64, lower, upper, known)
    C64, d64, clause = C.detach().double().cpu(), d.detach().double().cpu(), clause.cpu()
    bounds, undecided, used = [], None, backends[0]
    for k in _clause_order(net64, lower, upper, C64, d64, clause):
        rows, left = clause == k, _remaining(deadline)
        if left is not None and left <= 0:
            return MilpResult("timeout", None, None, time.monotonic() - start, used)
        solution, used = _solve(encoding.clause(C64[rows].numpy(), d64[rows].numpy()), left, backends, not exact)
        x = _confirmed((net64, net), solution, lower, upper, C64[rows], d64[rows])
        if x is not None:
            return MilpResult("falsified", solution.value, x, time.monotonic() - start, used)
        if solution.lower > CERTIFY_TOL:
            bounds.append(solution.lower)
        elif solution.timed_out:
            return MilpResult("timeout", None, None, time.monotonic() - start, used)
        elif undecided is None:
            undecided = solution.value
    status = "certified" if undecided is None else "unknown"
    margin = min(bounds, default=math.inf) if undecided is None else undecided
    return MilpResult(status, margin, None, time.monotonic() - start, used)


def milp_minimize(net: Network, lower: Tensor, upper: Tensor, c: Tensor, timeout: float | None = None,
                  backend: str = "auto") -> tuple[float, Tensor] | None:
    """Exact ``min c . net(x)`` over the box [lower, upper] (*input_shape), c (*output_shape).

    Returns the minimum (within the MIP gaps ABS_GAP / REL_GAP) and an input
    (*input_shape) attaining it, or None if ``timeout`` seconds run out first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    backends = _backends(backend)
    encoding = _encode(_float64_copy(net), lower, upper)
    left = _remaining(deadline)
    if left is not None and left <= 0:
        return None
    problem = encoding.clause(c.detach().double().cpu().reshape(1, -1).numpy(), np.zeros(1))
    solution, _ = _solve(problem, left, backends)
    return None if solution.timed_out else (solution.value, _to_input(solution.x, lower, upper))
