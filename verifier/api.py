"""The Python interface of the verifier: bounds of a network on input boxes, and certification runs.

A *model* is an ONNX file (path or :class:`OnnxModel`), a torch module
(converted by ``domains.from_torch``, sharing its parameters) or a network of
the IR. :func:`certify` and :func:`certify_vnnlib` run the same pipeline as the
``certify`` command and return the same result records.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nncert.domains import box
from nncert.domains.alpha import AlphaDeepPoly
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.from_torch import network_from_torch
from nncert.domains.network import Network
from nncert.verifier import spec
from nncert.verifier.certify import Pipeline
from nncert.verifier.onnx_import import OnnxModel, load_onnx
from nncert.verifier.problems import Model, adapt_to_images, linf_instances, vnnlib_instance
from nncert.verifier.registry import Options
from nncert.verifier.results import ResultsFile
from nncert.verifier.run import certify_instances
from nncert.verifier.spec import SpecError, robustness_spec, round_outward
from nncert.verifier.vnnlib import parse_vnnlib

ModelLike = str | os.PathLike | OnnxModel | nn.Module | Network
DEFAULT_DOMAINS = ("box", "deeppoly", "mnbab")


def as_model(model: ModelLike, input_shape: Sequence[int] | None = None, mean=None, std=None) -> Model:
    """The IR network and concrete oracle of ``model``, taking inputs of ``input_shape`` (default: the model's own).

    An ONNX model's oracle is onnxruntime; a torch module's is the module itself (in its current mode: put
    BatchNorm models in eval mode). ``mean``/``std`` put a normalisation in front, as ``--mean/--std`` do.
    """
    if isinstance(model, str | os.PathLike):
        model = load_onnx(model)
    if isinstance(model, OnnxModel):
        shape = model.input_shape if input_shape is None else input_shape
        return adapt_to_images(model.network, model.run, tuple(shape), mean, std)
    if isinstance(model, nn.Module):
        if input_shape is None:
            raise SpecError("a torch module needs the input_shape of one sample")
        net, module = network_from_torch(model, tuple(input_shape)), model
    elif isinstance(model, Network):
        net = module = model
    else:
        raise SpecError(f"expected an ONNX path, OnnxModel, torch module or Network, got {type(model).__name__}")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(x, dtype=torch.float32)).numpy()

    return adapt_to_images(net, run, net.input_shape if input_shape is None else tuple(input_shape), mean, std)


def _lower_box(net: Network, lower: Tensor, upper: Tensor, C: Tensor, iterations: int) -> Tensor:
    return box.bound_linear(net, lower, upper, C)


def _lower_deeppoly(net: Network, lower: Tensor, upper: Tensor, C: Tensor, iterations: int) -> Tensor:
    return DeepPoly(net, lower, upper).bound(C)


def _lower_alpha(net: Network, lower: Tensor, upper: Tensor, C: Tensor, iterations: int) -> Tensor:
    return AlphaDeepPoly(net, lower.detach(), upper.detach()).optimize(C.detach(), iterations=iterations)


# method -> lower bounds of C y, (N, K); box and deeppoly are differentiable, alpha returns detached bounds
BOUND_METHODS = {"box": _lower_box, "deeppoly": _lower_deeppoly, "alpha": _lower_alpha}


def bounds(model: ModelLike, lower: Tensor, upper: Tensor, C: Tensor | None = None, method: str = "deeppoly",
           alpha_iterations: int = 20) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of ``C y`` for y = model(x), x in [lower, upper], each (N, K).

    lower, upper: (N, *input_shape); C: (N, K, n_out), or (K, n_out) for every sample, or None for the
    outputs themselves (K = n_out). ``method``: "box", "deeppoly" (both differentiable with respect to the
    bounds and a torch module's parameters) or "alpha" (DeepPoly with optimised slopes, not differentiable).
    The bounds are in the network's dtype: float64 for an ONNX model, the parameters' dtype for a module.
    """
    if method not in BOUND_METHODS:
        raise SpecError(f"unknown method {method!r}; choose from {', '.join(BOUND_METHODS)}")
    net = as_model(model, lower.shape[1:]).network
    if method == "alpha" and net is not model:
        net.detach()  # the slopes' optimisation runs its own backward passes; this IR is ours, not the caller's
    # the box in the network's dtype, rounded outward when that is narrower
    lower, upper = round_outward(lower, net.dtype, -torch.inf), round_outward(upper, net.dtype, torch.inf)
    n_out = net.output_shape[0]
    C = torch.eye(n_out, dtype=lower.dtype, device=lower.device) if C is None else C.to(lower)
    C = C.expand(len(lower), -1, -1) if C.dim() == 2 else C
    k = C.shape[1]
    low = BOUND_METHODS[method](net, lower, upper, torch.cat([C, -C], 1), alpha_iterations)
    return low[:, :k], -low[:, k:]


def linf_ball(x: Tensor, eps: float, clip_min: float = 0.0, clip_max: float = 1.0) -> tuple[Tensor, Tensor]:
    """The L-inf ball of radius eps around x (N, *shape), clipped to [clip_min, clip_max], as a box in x's
    dtype that contains the exact ball (rounded outward)."""
    lower, upper = spec.linf_ball(x, eps, clip_min, clip_max)
    return round_outward(lower, x.dtype, -torch.inf), round_outward(upper, x.dtype, torch.inf)


def robustness_matrix(labels: Tensor, n_classes: int) -> Tensor:
    """C (N, n_classes - 1, n_classes) with rows e_label - e_i, i != label: ``C y > 0`` means label wins."""
    return torch.stack([robustness_spec(int(label), n_classes).C for label in labels])


def _detached_copy(net: Network) -> Network:
    """A deep copy of ``net`` whose tensors are detached (a torch module's IR shares its parameters, which may
    not be graph leaves)."""
    memo = {id(t): t.detach().clone() for node in net.nodes for t in node.op.tensors().values()}
    return copy.deepcopy(net, memo)


def pipeline(model: Model, domains: Sequence[str], timeout: float = 60.0, attack: bool = True, seed: int = 0,
             options: Options | None = None, batch_size: int = 32, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, recheck: bool = True) -> Pipeline:
    """The certification pipeline of a copy of ``model`` on device in ``dtype``, as the ``certify`` command builds
    it; a float64 copy guards float32 verdicts against rounding unless ``recheck`` is False."""
    torch.manual_seed(seed)
    exact = _detached_copy(model.network).to(device, torch.float64)
    net = exact if dtype == torch.float64 else copy.deepcopy(exact).to(dtype=dtype)
    return Pipeline(net, list(domains), model.oracle, timeout=timeout, attack=attack, seed=seed,
                    options=options or Options(), chunk_size=batch_size, exact=exact, recheck=recheck)


def certify(model: ModelLike, x, y, eps: float, domains: Sequence[str] = DEFAULT_DOMAINS, *,
            timeout: float = 60.0, clip: tuple[float, float] = (0.0, 1.0), mean=None, std=None,
            first_index: int = 0, json_path: str | os.PathLike | None = None, progress: bool = False,
            **pipeline_options) -> ResultsFile:
    """L-inf robustness of samples x (N, *input_shape) in ``clip`` with labels y (N,) at radius ``eps``.

    Returns the results as the ``certify`` command records them: ``.rows`` (one dict per sample and domain:
    index, label, predicted, domain, status, time_s) and ``.summary`` (per domain); also written to
    ``json_path`` if given. ``pipeline_options`` go to :func:`pipeline` (attack, seed, options, batch_size,
    device, dtype).
    """
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    verifiable = as_model(model, x.shape[1:], mean, std)
    n_classes = verifiable.network.output_shape[0]
    instances = linf_instances(x, y, eps, n_classes, *clip, first_index)
    meta = {"model": _name(model), "eps": eps, "domains": list(domains), "timeout_s": timeout, "num": len(x)}
    return certify_instances(pipeline(verifiable, domains, timeout, **pipeline_options), instances,
                             ResultsFile(json_path, meta, list(domains)), progress)


def certify_vnnlib(model: ModelLike, vnnlib: str | os.PathLike, domains: Sequence[str] = ("mnbab",), *,
                   timeout: float = 60.0, input_shape: Sequence[int] | None = None,
                   json_path: str | os.PathLike | None = None, **pipeline_options) -> ResultsFile:
    """A VNN-LIB property of ``model``: one result row per domain (index 0), as ``certify --vnnlib`` records it.

    ``input_shape``: of one sample, needed for a torch module (the VNN-LIB inputs are its flattened entries).
    """
    verifiable = as_model(model, input_shape)
    net = verifiable.network
    props = parse_vnnlib(vnnlib, n_inputs=None, n_outputs=None)
    instance = vnnlib_instance(props, net.input_shape, net.output_shape[0])
    meta = {"model": _name(model), "vnnlib": str(vnnlib), "domains": list(domains), "timeout_s": timeout}
    return certify_instances(pipeline(verifiable, domains, timeout, **pipeline_options), [instance],
                             ResultsFile(json_path, meta, list(domains)), progress=False)


def _name(model: ModelLike) -> str:
    if isinstance(model, OnnxModel):
        return str(model.path)
    return str(model) if isinstance(model, str | os.PathLike) else type(model).__name__
