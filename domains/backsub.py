"""Back-substitution of linear functions through the network IR.

A linear function of node ``start`` is given by coefficients ``A`` of shape
(N, K, *shape[start]): K functions per batch element. It is pushed backwards
through the DAG in reverse topological order; affine ops transpose it with
their ``backward``, ReLU nodes either apply a linear relaxation (DeepPoly and
stronger domains) or, when no relaxation is given, stop there and are
concretized with the node's interval bounds (Box with the output spec folded
into the trailing affine layers). Monotone ops (e.g. Floor) always stop the
back-substitution and are concretized with their interval bounds. Whatever reaches the input is concretized
over the input box.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from nncert.domains.network import Activation, Input, Monotone, Network, ReLU

# relu_backward(start, node, A) -> (A at the ReLU input, constant (N, K)); activation_backward likewise for
# the other activations (domains.network.Activation)
ReluBackward = Callable[[int, int, Tensor], tuple[Tensor, Tensor]]


def concretize(A: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """min of A . x over the box [lower, upper]: A (N, K, *s), bounds (N, *s) -> (N, K)."""
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    A = A.flatten(2)
    return (A @ center.flatten(1).unsqueeze(-1) - A.abs() @ radius.flatten(1).unsqueeze(-1)).squeeze(-1)


def argmin_on_box(A: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """The box corner minimising A . x, one per row: (N, K, *s) -> (N, K, *s)."""
    return (A >= 0) * lower.unsqueeze(1) + (A < 0) * upper.unsqueeze(1)


def backsubstitute(net: Network, start: int, A: Tensor, bounds: dict[int, tuple[Tensor, Tensor]],
                   relu_backward: ReluBackward | None = None,
                   activation_backward: ReluBackward | None = None,
                   stop: Callable[[int, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Lower bound of ``A . x_start`` in terms of the input.

    Returns ``(A_in, const)``: the coefficients on the input (N, K, *input_shape)
    (zeros if nothing reached the input) and the constant (N, K), such that
    ``A . x_start >= A_in . x + const`` for every input x in the region. Nodes
    stopped at (ReLUs and activations without relaxation, monotone ops) are concretized into ``const`` using
    ``bounds[node]``, so ``bounds`` needs the output bounds of those nodes; ``stop(node, A_node)`` -> (N, K),
    when given, replaces that concretization (e.g. to defer it).
    """
    if stop is None:
        def stop(i: int, A_i: Tensor) -> Tensor:
            return concretize(A_i, *bounds[i])
    pending = {start: A}
    const = A.new_zeros(A.shape[:2])
    for i in range(start, 0, -1):
        if i not in pending:
            continue
        A_i = pending.pop(i)
        node = net.nodes[i]
        if isinstance(node.op, Monotone):
            const = const + stop(i, A_i)
            continue
        if isinstance(node.op, ReLU | Activation):
            relax = relu_backward if isinstance(node.op, ReLU) else activation_backward
            if relax is None:
                const = const + stop(i, A_i)
                continue
            A_prev, c = relax(start, i, A_i)
            coefficients = [A_prev]
        else:
            coefficients, c = node.op.backward(A_i)
        # the shape contract of every op's backward: a constant per row, coefficients shaped like each input
        assert c.shape == const.shape, f"node {i} ({node.op}): constant of shape {tuple(c.shape)}"
        const = const + c
        for j, A_j in zip(node.inputs, coefficients, strict=True):
            assert A_j.shape[2:] == net.shapes[j], f"node {i} ({node.op}): coefficients of shape {tuple(A_j.shape)}"
            pending[j] = pending[j] + A_j if j in pending else A_j
    A_in = pending.pop(0, None)
    if A_in is None:
        A_in = A.new_zeros(*A.shape[:2], *net.input_shape)
    assert isinstance(net.nodes[0].op, Input)
    return A_in, const
