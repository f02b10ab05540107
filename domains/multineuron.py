"""Multi-neuron ReLU constraints (PRIMA, Mueller et al. 2022) for groups of k unstable neurons.

For a group with pre-activations x in R^k known to lie in the octahedron

    P = { x : d . x <= u_d  for every direction d in {-1, 0, 1}^k \\ {0} },

the set S = {(x, relu(x)) : x in P} has the convex hull of the images of the
vertices of the pieces of P cut by the coordinate hyperplanes (ReLU is linear
on each closed orthant). Those vertices are exactly the points of P where k
independent hyperplanes among {d . x = u_d} and {x_i = 0} meet, so they are
found by solving every k x k system (vectorised; fine for k <= 3, slow for
k = 4). The facets of the lifted points' hull (scipy's qhull in 2k dims) are
the constraints ``a . x + b . y + c <= 0``; facets without a y-part only
restate P and are dropped.

Soundness: every constraint is re-validated against all lifted vertices and
its constant shifted so that the worst vertex satisfies it with a margin of
``SAFETY * scale``; a constraint valid on the vertices is valid on their hull,
which contains S.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError
from torch import Tensor

MAX_HULL_POINTS = 48  # larger vertex sets are subsampled for qhull (k = 4); validation keeps them sound
MAX_PER_GROUP = 16  # facets kept per group: those cutting deepest into the triangle relaxation
SAFETY = 1e-7  # outward shift of every constraint, relative to the magnitude of the group's bounds
FEASIBILITY = 1e-9  # relative tolerance when testing candidate vertices against P


def octahedral_directions(k: int) -> Tensor:
    """All nonzero directions in {-1, 0, 1}^k: (3^k - 1, k), closed under negation."""
    return torch.tensor([d for d in itertools.product((-1.0, 0.0, 1.0), repeat=k) if any(d)])


def select_groups(lower: Tensor, upper: Tensor, k: int = 3, max_neurons: int = 30, window: int = 6,
                  max_groups: int = 60) -> Tensor:
    """Overlapping groups of k unstable neurons of one layer, most unstable first: (G, k) flat indices.

    lower, upper: (n,) pre-activation bounds. Neurons are ranked by the area
    of their triangle relaxation, -l u / 2; the top ``max_neurons`` are cut
    into consecutive windows of ``window`` and every k-subset of a window is a
    group, up to ``max_groups`` in total.
    """
    lower, upper = lower.flatten(), upper.flatten()
    unstable = torch.nonzero((lower < 0) & (upper > 0)).flatten()
    if len(unstable) < k:
        return torch.zeros(0, k, dtype=torch.long, device=lower.device)
    area = -lower[unstable] * upper[unstable]
    ranked = unstable[torch.argsort(area, descending=True)][:max_neurons].tolist()
    groups = []
    for start in range(0, len(ranked), window):
        chunk = ranked[start:start + window]
        if len(chunk) < k:  # a short tail joins the previous window's neurons
            chunk = ranked[max(0, len(ranked) - max(window, k)):]
        groups += [list(c) for c in itertools.combinations(chunk, k)]
    unique = list(dict.fromkeys(tuple(sorted(g)) for g in groups))[:max_groups]
    return torch.tensor(unique, dtype=torch.long, device=lower.device).reshape(-1, k)


@dataclass
class GroupConstraints:
    groups: Tensor  # (H,) long: the group (row of the groups tensor) of each constraint
    a: Tensor  # (H, k) coefficients on the group's inputs x
    b: Tensor  # (H, k) coefficients on the group's outputs y
    c: Tensor  # (H,)   constants: a . x_G + b . y_G + c <= 0 holds on the group's set


def relu_hull_constraints(dir_upper: Tensor, lower: Tensor, upper: Tensor, directions: Tensor,
                          deadline: float = math.inf) -> GroupConstraints:
    """Constraints of the ReLU hull of every group.

    dir_upper: (G, D) upper bounds of d . x_G for the D rows of ``directions`` (D, k);
    lower, upper: (G, k) box bounds of the group's inputs. Returns float64 tensors.
    Groups not reached by the ``deadline`` (time.monotonic()) get no constraints.
    """
    D = directions.double().numpy()
    k = D.shape[1]
    if k >= 4:  # vertex enumeration over all 3^k directions is too slow: relax to pairwise directions
        pairwise = (D != 0).sum(1) <= 2
        D, dir_upper = D[pairwise], dir_upper[:, torch.from_numpy(pairwise)]
    systems = _hyperplane_systems(D)
    parts = []
    for g in range(dir_upper.shape[0]):
        if time.monotonic() > deadline:
            break
        u = _tightened(dir_upper[g].double().numpy(), D, lower[g].double().numpy(), upper[g].double().numpy())
        a, b, c = _group_hull(D, u, systems)
        if len(c):
            parts.append((np.full(len(c), g), a, b, c))
    if not parts:
        empty = torch.zeros(0, k, dtype=torch.float64)
        return GroupConstraints(torch.zeros(0, dtype=torch.long), empty, empty.clone(), empty[:, 0])
    groups, a, b, c = (np.concatenate(x) for x in zip(*parts))
    return GroupConstraints(torch.from_numpy(groups).long(), torch.from_numpy(a), torch.from_numpy(b),
                            torch.from_numpy(c))


def _tightened(u: np.ndarray, D: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Octahedral bounds intersected with what the box gives for each direction: (D,)."""
    box = np.maximum(D, 0) @ upper + np.minimum(D, 0) @ lower
    return np.minimum(u, box)


def _hyperplane_systems(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All k-subsets of the hyperplanes {d . x = u_d} and {x_i = 0} with a unique intersection point.

    Returns (index sets (S, k) into the stacked rows [D; I], their inverse matrices (S, k, k)).
    """
    k = D.shape[1]
    rows = np.vstack([D, np.eye(k)])
    subsets = np.array(list(itertools.combinations(range(len(rows)), k)))
    matrices = rows[subsets]  # (S, k, k)
    regular = np.abs(np.linalg.det(matrices)) > 1e-9
    return subsets[regular], np.linalg.inv(matrices[regular])


def _group_hull(D: np.ndarray, u: np.ndarray, systems) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hull constraints (a (H, k), b (H, k), c (H,)) of one group with octahedral bounds u (D,)."""
    subsets, inverses = systems
    k = D.shape[1]
    rhs = np.concatenate([u, np.zeros(k)])[subsets]  # (S, k)
    points = np.einsum("sij,sj->si", inverses, rhs)  # candidate vertices (S, k)
    scale = max(1.0, float(np.abs(u).max()))
    inside = (points @ D.T <= u + FEASIBILITY * scale).all(1)
    vertices = np.unique(np.round(points[inside], 12), axis=0)
    if len(vertices) == 0:
        return np.zeros((0, k)), np.zeros((0, k)), np.zeros(0)
    lifted = np.hstack([vertices, np.maximum(vertices, 0.0)])  # (V, 2k)
    sample = lifted
    if len(lifted) > MAX_HULL_POINTS and k >= 4:
        # the hull of a subset is not an outer approximation, but every facet is shifted below to hold
        # for all vertices, so the constraints stay valid (only less tight)
        sample = lifted[np.random.default_rng(0).choice(len(lifted), MAX_HULL_POINTS, replace=False)]
    normals = _hull_normals(sample)
    if normals is None:
        return np.zeros((0, k)), np.zeros((0, k)), np.zeros(0)
    normals = normals[np.abs(normals[:, k:]).max(1) > 1e-9]
    # qhull triangulates: a facet of the hull comes back once per simplex of it (~15x on k = 3 groups)
    normals = _unique_rows(np.round(normals / np.abs(normals).max(1, keepdims=True), 12))
    # validation: the worst lifted vertex decides the constant, plus a safety margin
    offsets = -(lifted @ normals.T).max(0) - SAFETY * scale
    best = _deepest_cuts(normals, offsets, vertices)
    return normals[best, :k], normals[best, k:], offsets[best]


def _unique_rows(x: np.ndarray) -> np.ndarray:
    """The distinct rows of x (F, n), in lexicographic order (np.unique(axis=0) is 10x slower)."""
    x = x[np.lexsort(x.T[::-1])]
    return x[np.concatenate([[True], (x[1:] != x[:-1]).any(1)])]


def _deepest_cuts(normals: np.ndarray, offsets: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Indices of the (at most MAX_PER_GROUP) facets that cut off most of the triangle relaxation.

    The triangle relaxation allows y up to the chord u (x - l) / (u - l) of each
    neuron; a facet's depth is its largest violation at the vertices' x with y
    on the chords, or anywhere between relu(x) and the chord per neuron.
    """
    k = vertices.shape[1]
    lo, hi = vertices.min(0), vertices.max(0)
    unstable = (lo < 0) & (hi > 0)
    chord = np.where(unstable, hi * (vertices - lo) / np.where(unstable, hi - lo, 1.0), np.maximum(vertices, 0))
    a, b = normals[:, :k], normals[:, k:]
    # per neuron, the y in [relu(x), chord] maximising b_i y_i
    y_hi = np.maximum(vertices, 0)[None] + (b[:, None, :] > 0) * (chord - np.maximum(vertices, 0))[None]
    depth = (np.einsum("hk,vk->hv", a, vertices) + np.einsum("hk,hvk->hv", b, y_hi) + offsets[:, None]).max(1)
    order = np.argsort(-depth)[:MAX_PER_GROUP]
    return order[depth[order] > 1e-6 * max(1.0, np.abs(vertices).max())]


def _hull_normals(points: np.ndarray) -> np.ndarray | None:
    """Outward facet normals (F, dim) of the hull of points, within their affine hull (None for a single point).

    Points spanning a lower-dimensional affine subspace are hulled there; the
    facets are lifted back and the subspace's normals added (both signs). The
    offsets are left to the caller's validation against all points.
    """
    center = points.mean(0)
    _, sing, vt = np.linalg.svd(points - center, full_matrices=True)
    rank = int((sing > 1e-9 * max(1.0, sing[0] if len(sing) else 1.0)).sum())
    if rank == 0:
        return None
    basis, normal_space = vt[:rank], vt[rank:]
    if rank == 1:
        facets = np.vstack([basis[0], -basis[0]])
    else:
        local = (points - center) @ basis.T
        try:
            hull = ConvexHull(local)
        except QhullError:
            hull = ConvexHull(local, qhull_options="QJ")
        facets = hull.equations[:, :-1] @ basis
    return np.vstack([facets, normal_space, -normal_space])
