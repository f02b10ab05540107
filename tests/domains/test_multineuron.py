"""Multi-neuron hull constraints: valid on every (x, relu(x)) of the octahedron, exact on its hull."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from nncert.domains.multineuron import octahedral_directions, relu_hull_constraints, select_groups


def _instance(k, seed, shift=0.3):
    """Octahedral bounds of x = W z + b over the unit box z in [-1, 1]^(k+1), exact per direction."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(k, k + 1, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64) * shift
    D = octahedral_directions(k).double()
    dir_upper = (D @ W).abs().sum(1) + D @ b
    lower, upper = b - W.abs().sum(1), b + W.abs().sum(1)
    return W, b, D, dir_upper, lower, upper


def _check(cons, x):
    y = x.clamp(min=0)
    return x @ cons.a.T + y @ cons.b.T + cons.c  # (P, H), must be <= 0


def test_octahedral_directions():
    for k, count in ((2, 8), (3, 26), (4, 80)):
        D = octahedral_directions(k)
        assert D.shape == (count, k) and set(D.unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert {tuple(d) for d in (-D).tolist()} == {tuple(d) for d in D.tolist()}


def test_select_groups():
    lower = torch.tensor([-1.0, -2.0, 0.5, -3.0, -0.1, -1.0, 1.0, -5.0])
    upper = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.1, -0.5, 2.0, 5.0])
    groups = select_groups(lower, upper, k=3, max_neurons=4, window=4, max_groups=3)
    unstable = {0, 1, 3, 4, 7}
    assert groups.shape == (3, 3)
    assert all(len(set(g)) == 3 and set(g) <= unstable for g in groups.tolist())
    assert 4 not in groups.flatten().tolist()  # the least unstable neuron is not among the top 4
    assert select_groups(lower[:2], upper[:2], k=3).shape == (0, 3)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_constraints_hold_on_sampled_points_and_corners(k, seed):
    W, b, D, dir_upper, lower, upper = _instance(k, seed)
    cons = relu_hull_constraints(dir_upper[None], lower[None], upper[None], D)
    assert len(cons.c) > 0
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(5000, k + 1, generator=g, dtype=torch.float64) * 2 - 1
    corners = torch.tensor(np.array(np.meshgrid(*[[-1.0, 1.0]] * (k + 1))).reshape(k + 1, -1).T)
    for pts in (z, corners):
        assert (_check(cons, pts @ W.T + b) <= 1e-9).all()


def _exact_minimum(w, D, dir_upper):
    """min of w . (x, relu(x)) over x in P: an LP on each orthant piece, where relu is linear."""
    k = D.shape[1]
    best = np.inf
    for signs in itertools.product([-1.0, 1.0], repeat=k):
        s = np.array(signs)
        piece = linprog(w[:k] + w[k:] * (s > 0), A_ub=np.vstack([D, -np.diag(s)]),
                        b_ub=np.concatenate([dir_upper, np.zeros(k)]), bounds=[(None, None)] * k)
        if piece.status == 0:
            best = min(best, piece.fun)
    return best


def _lp_minimum(w, rows, rhs):
    return linprog(w, A_ub=rows, b_ub=rhs, bounds=[(None, None)] * len(w)).fun


def _triangle(D, dir_upper, lower, upper):
    """Single-neuron relaxation plus P: y >= 0, y >= x, y <= u (x - l) / (u - l), d . x <= u_d."""
    k = D.shape[1]
    slope = upper / (upper - lower)
    rows = np.vstack([np.hstack([np.zeros((k, k)), -np.eye(k)]), np.hstack([np.eye(k), -np.eye(k)]),
                      np.hstack([-np.diag(slope), np.eye(k)]), np.hstack([D, np.zeros((len(D), k))])])
    return rows, np.concatenate([np.zeros(k), np.zeros(k), -slope * lower, dir_upper])


@pytest.mark.parametrize("k", [2, 3])
def test_between_triangle_and_exact_hull_and_exact_for_pairs(k):
    """triangle <= triangle + multi-neuron <= exact minimum over S, for random objectives; equal for k = 2."""
    W, b, D, dir_upper, lower, upper = _instance(k, 11)
    cons = relu_hull_constraints(dir_upper[None], lower[None], upper[None], D)
    tri_rows, tri_rhs = _triangle(D.numpy(), dir_upper.numpy(), lower.numpy(), upper.numpy())
    rows = np.vstack([tri_rows, np.hstack([cons.a.numpy(), cons.b.numpy()])])
    rhs = np.concatenate([tri_rhs, -cons.c.numpy()])
    gaps = []
    for seed in range(30):
        w = np.random.default_rng(seed).normal(size=2 * k)
        single, multi = _lp_minimum(w, tri_rows, tri_rhs), _lp_minimum(w, rows, rhs)
        exact = _exact_minimum(w, D.numpy(), dir_upper.numpy())
        assert single - 1e-7 <= multi <= exact + 1e-7
        if k == 2:
            assert multi == pytest.approx(exact, abs=1e-5)
        gaps.append(multi - single)
    assert max(gaps) > 1e-3  # strictly tighter than the single-neuron relaxation somewhere


def test_degenerate_groups_stay_sound():
    k = 3
    D = octahedral_directions(k).double()
    # x1 == x2 (identical neurons), x3 touching zero from above
    W = torch.tensor([[1.0, 0.5], [1.0, 0.5], [0.2, 0.3]], dtype=torch.float64)
    b = torch.tensor([0.1, 0.1, 0.5], dtype=torch.float64)
    dir_upper = (D @ W).abs().sum(1) + D @ b
    lower, upper = b - W.abs().sum(1), b + W.abs().sum(1)
    cons = relu_hull_constraints(dir_upper[None], lower[None], upper[None], D)
    z = torch.rand(4000, 2, dtype=torch.float64) * 2 - 1
    assert (_check(cons, z @ W.T + b) <= 1e-9).all()
