"""Side by side with peer verifiers: auto_LiRPA (CROWN, alpha-CROWN) and alpha-beta-CROWN, in one run.

Three comparisons, each measured in the same process run as ours so the
ratios hold on a shared machine:

- ``crown``: our DeepPoly bound against auto_LiRPA's CROWN on the same
  networks, input boxes and margin rows C (one sample at a time). On ReLU
  networks DeepPoly and CROWN use the same relaxation (triangle upper line,
  lower slope 1 iff u > -l); ours also intersects every back-substituted bound
  with interval propagation, which auto_LiRPA does with
  ``compare_crown_with_ibp``, so both the peer's default and that setting are
  reported. Signed bound differences (ours tighter or not), per-sample time
  ratios, and every bound checked against margins sampled in the box.
- ``alpha``: our alpha-optimised DeepPoly against auto_LiRPA's alpha-CROWN
  (``CROWN-Optimized``) at the same iteration count and learning rate, both
  optimising the intermediate layers' slopes too: which is tighter, and time.
  Networks (``--networks``): the demo CNN3 and benchmarks/models, the mnist_fc
  nets, and benchmarks/nonrelu.py's Sigmoid / Tanh / LeakyReLU / MaxPool nets.
- ``complete``: ``certify --instances --domain mnbab`` against alpha-beta-CROWN
  on the instances of any VNN-COMP benchmark folder (``--benchmark``), with
  the peer's own configuration file for that benchmark, at one shared timeout,
  one tool after the other: answers, times, decided counts and contradictions
  with the folder's ``reference_results.csv``.

The peers are never part of this project: install them under a temporary
directory (see benchmarks/README.md, "Installing and running the peers") and point the
harness at it with ``--peer-path`` / ``$NNCERT_PEERS`` (a site directory
holding ``auto_LiRPA`` and its dependencies) and ``--abcrown`` /
``$NNCERT_ABCROWN`` (alpha-beta-CROWN's ``complete_verifier`` folder). A
comparison whose peer is missing is skipped with a message (exit code 0).

    python benchmarks/peers.py crown alpha --num 10
    python benchmarks/peers.py complete --benchmark 2022_oval21 --num 8 --timeout 60

Writes ``benchmarks/results/peers.{json,md}``; each comparison replaces its
own section, so they can be run separately.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib
import importlib.util
import json
import math
import os
import pickle
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nncert.cli.certify import demo_files  # noqa: E402
from nncert.domains.activations import LeakyReLU, Sigmoid, Tanh  # noqa: E402
from nncert.domains.alpha import AlphaDeepPoly  # noqa: E402
from nncert.domains.deeppoly import DeepPoly  # noqa: E402
from nncert.domains.maxpool import MaxPool2d  # noqa: E402
from nncert.domains.network import Activation, Conv2d, ElementwiseAffine, Linear, Network, ReLU, Reshape  # noqa: E402
from nncert.training.datasets import load_dataset  # noqa: E402
from nncert.verifier.instances import read_instances  # noqa: E402
from nncert.verifier.onnx_import import load_onnx  # noqa: E402
from nncert.verifier.problems import adapt_to_images, load_inputs_npz, vnnlib_instance  # noqa: E402
from nncert.verifier.results import command_line, versions  # noqa: E402
from nncert.verifier.spec import linf_ball, robustness_spec  # noqa: E402
from nncert.verifier.vnnlib import parse_vnnlib  # noqa: E402

ALPHA_ITERATIONS, ALPHA_LR = 20, 0.1  # the pipeline's alpha settings (domains/mnbab.py), given to both tools
README = "see benchmarks/README.md, 'Installing and running the peers'"


# -- the same network as a torch module, for auto_LiRPA -------------------------------------------------


class Affine(nn.Module):
    """x * scale + shift (the IR's ElementwiseAffine) with the tensors as buffers, batch dim in front."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.unsqueeze(0).clone())
        self.register_buffer("shift", shift.unsqueeze(0).clone())

    def forward(self, x):
        return x * self.scale + self.shift


def activation_module(op) -> nn.Module:
    """The torch module of an IR activation (ReLU, Sigmoid, Tanh, LeakyReLU, MaxPool2d with symmetric pads)."""
    simple = {ReLU: nn.ReLU, Sigmoid: nn.Sigmoid, Tanh: nn.Tanh}
    if type(op) in simple:
        return simple[type(op)]()
    if isinstance(op, LeakyReLU):
        return nn.LeakyReLU(op.alpha)
    left, right, top, bottom = op.pads
    if left != right or top != bottom:
        raise ValueError(f"{op!r}: asymmetric pads have no nn.MaxPool2d counterpart")
    return nn.MaxPool2d(op.kernel, op.stride, (top, left), op.dilation)


def to_torch(net: Network) -> nn.Sequential:
    """A chain IR network as an nn.Sequential with the same weights (Linear, Conv2d, activations, Reshape,
    affine)."""
    layers: list[nn.Module] = []
    for i, node in enumerate(net.nodes[1:], start=1):
        op = node.op
        if node.inputs != (i - 1,):
            raise ValueError(f"node {i} is not a chain node; the harness converts sequential networks only")
        if isinstance(op, Linear):
            layer = nn.Linear(op.weight.shape[1], op.weight.shape[0])
        elif isinstance(op, Conv2d):
            c_out, c_in, kh, kw = op.weight.shape
            layer = nn.Conv2d(c_in, c_out, (kh, kw), op.stride, op.padding, op.dilation)
        elif isinstance(op, (ReLU, Sigmoid, Tanh, LeakyReLU, MaxPool2d)):
            layers.append(activation_module(op))
            continue
        elif isinstance(op, Reshape):
            layers.append(nn.Unflatten(1, op.out_shape) if len(op.out_shape) > 1 else nn.Flatten())
            continue
        elif isinstance(op, ElementwiseAffine):
            layers.append(Affine(op.scale, op.shift))
            continue
        else:
            raise ValueError(f"node {i}: {op!r} has no torch counterpart in the harness")
        with torch.no_grad():
            layer.weight.copy_(op.weight)
            layer.bias.copy_(op.bias)
        layers.append(layer)
    return nn.Sequential(*layers).eval()


# -- problems: the same boxes and margin rows for both tools ----------------------------------------------


def sample_problems(net: Network, x: torch.Tensor, y: torch.Tensor, eps: float, num: int):
    """Boxes (N, *in) and margin rows (N, 9, 10) of the first ``num`` correctly classified samples."""
    with torch.no_grad():
        keep = (net(x).argmax(1) == y).nonzero().flatten()[:num]
    lower, upper = linf_ball(x[keep], eps)
    C = torch.stack([robustness_spec(int(label), net.output_shape[0]).C for label in y[keep]])
    return lower, upper, C, [f"sample {int(k)}" for k in keep]


def vnnlib_problems(instances, num: int):
    """Per mnist_fc network: (name, network, boxes, C rows, property names) of its first ``num`` instances."""
    by_net: dict[Path, list] = {}
    for inst in instances:
        by_net.setdefault(inst.onnx, []).append(inst)
    for onnx_path, insts in by_net.items():
        model = load_onnx(onnx_path)
        rows = []
        for inst in insts[:num]:
            (prop,) = vnnlib_instance(parse_vnnlib(inst.vnnlib), model.input_shape, model.output_size).props
            rows.append(prop)
        net = adapt_to_images(model.network, model.run, model.input_shape).network
        yield (onnx_path.stem, net, torch.stack([p.lower for p in rows]), torch.stack([p.upper for p in rows]),
               torch.stack([p.output.C for p in rows]), [inst.vnnlib.stem for inst in insts[:num]])


def nonrelu_networks(data_dir: str | None, workdir: Path) -> list[tuple[str, Path]]:
    """The networks of benchmarks/nonrelu.py (Sigmoid, Tanh, LeakyReLU, MaxPool), trained and exported by its
    own code with its defaults (one epoch, seed 0): (name, ONNX path)."""
    spec = importlib.util.spec_from_file_location("nonrelu", REPO / "benchmarks" / "nonrelu.py")
    nonrelu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nonrelu)
    train_data = load_dataset("mnist", "train", data_dir)
    out = []
    for name in nonrelu.NETWORKS:
        model, _ = nonrelu.train(name, train_data, 1, 0)
        nonrelu.export(model, workdir / f"{name}.onnx")
        out.append((name, workdir / f"{name}.onnx"))
    return out


NETWORK_GROUPS = ("models", "mnist_fc", "nonrelu")


def networks(args, workdir: Path) -> list[tuple]:
    """(name, network, lower, upper, C, sample names) for every network of the bound comparisons: the groups
    ``models`` (the demo CNN3 and benchmarks/models at ``--eps-cnn``), ``mnist_fc`` (VNN-COMP properties) and
    ``nonrelu`` (benchmarks/nonrelu.py's networks at ``--eps-nonrelu``) named in ``args.networks``."""
    demo, samples = demo_files()
    x, y = load_inputs_npz(samples, 0.0, 1.0)
    num, groups = args.num or 10, args.networks.split(",")
    onnx = []
    if "models" in groups:
        onnx += [("demo " + demo.stem, demo, args.eps_cnn)]
        onnx += [(path.stem, path, args.eps_cnn) for path in sorted((REPO / "benchmarks" / "models").glob("*.onnx"))]
    if "nonrelu" in groups:
        onnx += [(name, path, args.eps_nonrelu) for name, path in nonrelu_networks(args.data_dir, workdir)]
    out = []
    for name, path, eps in onnx:
        model = load_onnx(path)
        net = adapt_to_images(model.network, model.run, tuple(x.shape[1:])).network
        out.append((f"{name} eps {eps:g}", net, *sample_problems(net, x, y, eps, num)))
    fc = Path(args.benchmarks) / "vnncomp" / "2022_mnist_fc" / "instances.csv"
    if "mnist_fc" in groups and fc.exists():
        out += list(vnnlib_problems(read_instances(fc), num))
    elif "mnist_fc" in groups:
        print(f"peers: {fc} not found, mnist_fc nets left out of the bound comparisons", file=sys.stderr)
    return out


# -- one bound computation, timed ---------------------------------------------------------------------------


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def lirpa_bound(lirpa, module, lower, upper, C, method: str) -> torch.Tensor:
    """auto_LiRPA's lower bounds of C y over the box: (1, K)."""
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
    x = lirpa.BoundedTensor((lower + upper) / 2, ptb)
    lb, _ = module.compute_bounds(x=(x,), C=C, method=method, bound_upper=False)
    return lb.detach()


def bounded_modules(lirpa, net: Network, dtype, keys=("crown", "crown+ibp", "alpha")) -> dict:
    """The peer's BoundedModules of one network: CROWN as configured by default, CROWN intersected with
    IBP (our DeepPoly's intersection), and alpha-CROWN at our iteration count and learning rate."""
    model = to_torch(net).to(dtype)
    dummy = torch.zeros(1, *net.input_shape, dtype=dtype)
    alpha_args = {"iteration": ALPHA_ITERATIONS, "lr_alpha": ALPHA_LR, "enable_opt_interm_bounds": True}
    opts = {"crown": {}, "crown+ibp": {"compare_crown_with_ibp": True}, "alpha": {"optimize_bound_args": alpha_args}}
    return {key: lirpa.BoundedModule(model, dummy, bound_opts=opts[key], verbose=0) for key in keys}


def sampled_margins(net: Network, lo, hi, c, n: int = 512) -> torch.Tensor:
    """The smallest margins C y found at ``n`` random points and ``n`` random corners of the box (1, K): no
    sound lower bound exceeds them."""
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(2 * n, *lo.shape[1:], generator=generator, dtype=lo.dtype)
    u[n:] = u[n:].round()
    with torch.no_grad():
        y = net(lo + u * (hi - lo))
    return torch.einsum("nj,kj->nk", y, c[0]).amin(0, keepdim=True)


def differences(ours: torch.Tensor, theirs: torch.Tensor, sampled: torch.Tensor) -> dict:
    """Our lower bounds (1, K) against the peer's (ours - peer > 0: ours tighter), and each one's largest excess
    over the sampled margins (a sound bound has none beyond rounding)."""
    diff = ours - theirs
    return {"mean_diff": float(diff.mean()), "max_diff": float(diff.max()), "min_diff": float(diff.min()),
            "ours_min_bound": float(ours.min()), "peer_min_bound": float(theirs.min()),
            "ours_above_sampled": float((ours - sampled).max()), "peer_above_sampled": float((theirs - sampled).max())}


def compare_sample(lirpa, peer: dict, net: Network, lo, hi, c, kinds, exact=None) -> dict:
    """One sample (batch 1): our bounds and times against the peer's, for the comparisons in ``kinds``.

    ``exact`` = (network, peer modules) in float64: the DeepPoly / CROWN agreement is checked there too,
    apart from float32 rounding.
    """
    row, sampled = {}, sampled_margins(net, lo, hi, c)
    if "crown" in kinds:
        with torch.no_grad():
            ours, t_ours = timed(lambda: DeepPoly(net, lo, hi).bound(c))
        for key in ("crown", "crown+ibp"):
            theirs, t_theirs = timed(lambda key=key: lirpa_bound(lirpa, peer[key], lo, hi, c, "CROWN"))
            row[key] = {**differences(ours, theirs, sampled), "max_abs_diff": float((ours - theirs).abs().max()),
                        "ours_s": t_ours, "peer_s": t_theirs}
            if exact is not None:
                net64, peer64 = exact
                lo64, hi64, c64 = lo.double(), hi.double(), c.double()
                with torch.no_grad():
                    ours64 = DeepPoly(net64, lo64, hi64).bound(c64)
                theirs64 = lirpa_bound(lirpa, peer64[key], lo64, hi64, c64, "CROWN")
                row[key]["max_abs_diff_float64"] = float((ours64 - theirs64).abs().max())
    if "alpha" in kinds:
        ours, t_ours = timed(lambda: AlphaDeepPoly(net, lo, hi).optimize(c, ALPHA_ITERATIONS, ALPHA_LR).detach())
        theirs, t_theirs = timed(lambda: lirpa_bound(lirpa, peer["alpha"], lo, hi, c, "CROWN-Optimized"))
        row["alpha"] = {**differences(ours, theirs, sampled), "ours_s": t_ours, "peer_s": t_theirs,
                        "ours_certified": bool((ours > 0).all()), "peer_certified": bool((theirs > 0).all())}
    return row


def compare_network(lirpa, name, net, lower, upper, C, names, kinds, dtype) -> dict:
    """Every sample of one network, one at a time (batch 1), in ``dtype`` (and the agreement in float64)."""
    net = net.to(dtype=dtype)
    lower, upper, C = lower.to(dtype), upper.to(dtype), C.to(dtype)
    peer = bounded_modules(lirpa, net, dtype, [k for k in ("crown", "crown+ibp", "alpha")
                                               if k.split("+")[0] in kinds])
    exact = None
    # DeepPoly and CROWN share the ReLU relaxation only: agreement is checked on ReLU networks
    if "crown" in kinds and not any(isinstance(node.op, Activation) for node in net.nodes):
        net64 = copy.deepcopy(net).to(dtype=torch.float64)
        exact = (net64, bounded_modules(lirpa, net64, torch.float64, ("crown", "crown+ibp")))
    rows = []
    for i, sample in enumerate(names):
        rows.append({"sample": sample, **compare_sample(lirpa, peer, net, lower[i:i + 1], upper[i:i + 1],
                                                        C[i:i + 1], kinds, exact)})
        print(json.dumps({"network": name, **rows[-1]}), flush=True)
    return {"network": name, "samples": len(names), "relus": sum(math.prod(net.shapes[r]) for r in net.relu_nodes),
            "rows": rows}


def summarize_bounds(result: dict, kinds) -> dict:
    rows, out = result["rows"], {}
    for key in [k for k in ("crown", "crown+ibp", "alpha") if k in rows[0]]:
        r = [row[key] for row in rows]
        ours, theirs = statistics.median(x["ours_s"] for x in r), statistics.median(x["peer_s"] for x in r)
        out[key] = {"median_ours_ms": 1e3 * ours, "median_peer_ms": 1e3 * theirs, "time_ratio": ours / theirs}
        out[key].update(mean_diff=statistics.mean(x["mean_diff"] for x in r),
                        max_diff=max(x["max_diff"] for x in r), min_diff=min(x["min_diff"] for x in r),
                        ours_tighter=sum(x["mean_diff"] > 1e-6 for x in r),
                        peer_tighter=sum(x["mean_diff"] < -1e-6 for x in r),
                        ours_above_sampled=max(x.get("ours_above_sampled", -math.inf) for x in r),
                        peer_above_sampled=max(x.get("peer_above_sampled", -math.inf) for x in r))
        if key == "alpha":
            out[key].update(ours_certified=sum(x["ours_certified"] for x in r),
                            peer_certified=sum(x["peer_certified"] for x in r))
        else:
            out[key]["max_abs_diff"] = max(x["max_abs_diff"] for x in r)
            exact = [x["max_abs_diff_float64"] for x in r if "max_abs_diff_float64" in x]
            out[key]["max_abs_diff_float64"] = max(exact) if exact else None  # None: not checked
            out[key]["max_abs_bound"] = max(abs(x["ours_min_bound"]) for x in r)
    return out


def run_bounds(args, kinds) -> dict | None:
    peer_path = args.peer_path or os.environ.get("NNCERT_PEERS")
    if peer_path:
        sys.path.insert(0, peer_path)
    try:
        lirpa = importlib.import_module("auto_LiRPA")
    except ImportError:
        print(f"peers: skipped {'/'.join(kinds)}: auto_LiRPA not installed ({README})")
        return None
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    results = []
    with tempfile.TemporaryDirectory(prefix="nncert-peers-") as tmp:
        problems = networks(args, Path(tmp))
    for name, net, lower, upper, C, names in problems:
        try:
            to_torch(net)
        except ValueError as e:  # e.g. the AbsCert net's input quantiser (Floor)
            print(f"peers: skipped {name}: {e}", file=sys.stderr)
            continue
        result = compare_network(lirpa, name, net, lower, upper, C, names, kinds, dtype)
        result["summary"] = summarize_bounds(result, kinds)
        results.append(result)
    return {"peer": {"auto_LiRPA": lirpa.__version__, "path": os.path.dirname(lirpa.__file__)},
            "dtype": args.dtype, "alpha_iterations": ALPHA_ITERATIONS, "alpha_lr": ALPHA_LR, "networks": results}


# -- complete verification against alpha-beta-CROWN -------------------------------------------------------

# alpha-beta-CROWN's own configuration file (under complete_verifier/exp_configs) for each VNN-COMP benchmark,
# keyed by the benchmark folder's name without its year (2022_oval21 -> oval21); --abcrown-config overrides it.
ABCROWN_CONFIGS = {
    "acasxu": "vnncomp21/acasxu.yaml",
    "cifar10_resnet": "vnncomp21/cifar10-resnet.yaml",
    "cifar2020": "vnncomp22/cifar2020_2_255.yaml",
    "cifar_biasfield": "vnncomp22/cifar_biasfield.yaml",
    "collins_rul_cnn": "vnncomp22/collins-rul-cnn.yaml",
    "marabou_cifar10": "vnncomp21/marabou_cifar10.yaml",
    "mnist_fc": "vnncomp22/mnistfc.yaml",
    "nn4sys": "vnncomp22/nn4sys_2022_all.yaml",
    "oval21": "vnncomp22/oval22.yaml",
    "reach_prob_density": "vnncomp22/reach_probability.yaml",
    "sri_resnet_a": "vnncomp22/resnet_A.yaml",
    "sri_resnet_b": "vnncomp22/resnet_B.yaml",
    "tllverifybench": "vnncomp22/tllVerifyBench.yaml",
    "verivital": "vnncomp21/verivital.yaml",
    "vggnet16": "vnncomp22/vggnet16.yaml",
}


def benchmark_key(folder: Path) -> str:
    """The benchmark's name without a year: ``2022_oval21``, ``oval21_2022`` -> ``oval21``."""
    return re.sub(r"^20\d\d_|_20\d\d$", "", folder.name.lower()).replace("-", "_")


def abcrown_config_file(folder: Path, override: str | None) -> str:
    """The peer's configuration file for ``folder``: ``override`` (a path or a name under exp_configs) if given,
    else the lookup table's entry."""
    if override:
        return override
    try:
        return ABCROWN_CONFIGS[benchmark_key(folder)]
    except KeyError:
        raise SystemExit(f"peers: no alpha-beta-CROWN configuration known for {folder.name}; name one of "
                         f"exp_configs with --abcrown-config") from None


def benchmark_folder(benchmark: str, root: Path) -> Path:
    """``benchmark`` as a folder holding instances.csv: a path, or a name under ``root/vnncomp`` or ``root``."""
    for folder in (Path(benchmark), root / "vnncomp" / benchmark, root / benchmark):
        if (folder / "instances.csv").is_file():
            return folder
    raise SystemExit(f"peers: no instances.csv for benchmark {benchmark!r} (a path, or a folder under "
                     f"{root / 'vnncomp'}; see --benchmarks / $NNCERT_BENCHMARKS)")


def abcrown_config(base: dict, bench: Path, n: int, timeout: float, results: Path, input_shape, batch_cap: int,
                   pgd_restarts: int | None) -> dict:
    """The peer's own configuration ``base`` for the benchmark, made to run here on the instances of ``bench``.

    Changed: device cpu; the instances, the first ``n`` rows of ``bench``'s csv, and the timeout are ours;
    ``bab-refine`` becomes ``bab`` (MIP-refined intermediate bounds need a Gurobi licence) and cutting planes
    are off (they need CPLEX); at most ``batch_cap`` subproblems per batch (a GPU's batch, e.g. ACAS Xu's 16384
    input boxes, takes one CPU thread longer than the timeout and all its memory); the input shape is the ONNX's
    unless the configuration names one; optionally other PGD restarts than the configuration's (a GPU's budget:
    ACAS Xu's 10000 restarts take one CPU thread 10-13 s per instance).
    """
    config = copy.deepcopy(base)
    config.setdefault("general", {}).update(device="cpu", root_path=str(bench), csv_name="instances.csv",
                                            results_file=str(results))
    if config["general"].get("complete_verifier") == "bab-refine":
        config["general"]["complete_verifier"] = "bab"
    config.setdefault("data", {}).update(start=0, end=n)
    bab = config.setdefault("bab", {})
    bab.update(timeout=timeout, override_timeout=timeout)
    if bab.get("cut", {}).get("enabled"):
        bab["cut"].update(enabled=False, cplex_cuts=False, bab_cut=False)
    if input_shape is not None:
        config.setdefault("model", {}).setdefault("input_shape", [-1, *input_shape])
    solver = config.setdefault("solver", {})
    solver["batch_size"] = min(solver.get("batch_size", batch_cap), batch_cap)
    if pgd_restarts is not None:
        config.setdefault("attack", {})["pgd_restarts"] = pgd_restarts
    return config


def shared_input_shape(instances) -> tuple[int, ...] | None:
    """The ONNX input shape (without the batch) of every network of ``instances``, or None if they differ."""
    shapes = {tuple(load_onnx(path, check=False).input_shape) for path in {inst.onnx for inst in instances}}
    return next(iter(shapes)) if len(shapes) == 1 else None


def undecided_or_slow(results_csv: Path, seconds: float) -> set[tuple[str, str]]:
    """(onnx name, vnnlib name) of the rows of one of our ``certify --instances`` results that were not
    decided, or decided in more than ``seconds``."""
    with open(results_csv) as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {(Path(r["onnx"]).name, Path(r["vnnlib"]).name) for r in rows
                if r["result"] not in ("sat", "unsat") or float(r["time_s"]) > seconds}


def select_instances(instances, start: int = 0, num: int | None = None, only: str | None = None,
                     hard: set | None = None, sample: int = 0, seed: int = 0) -> list:
    """The instances of ``instances[start:start + num]`` to run, in csv order: those named in ``only`` (comma-
    separated ``<onnx stem>__<vnnlib stem>``), else those in ``hard`` ((onnx, vnnlib) file names) plus a seeded
    random ``sample`` of the others; all of the range if neither is given."""
    chosen = instances[start:start + num if num is not None else None]
    if only:
        names = set(only.split(","))
        if missing := names - {inst.name for inst in chosen}:
            raise SystemExit(f"peers: --only: no instance {', '.join(sorted(missing))} in the selected range")
        return [inst for inst in chosen if inst.name in names]
    if hard is None and not sample:
        return chosen
    picked = {inst.name for inst in chosen if (inst.onnx.name, inst.vnnlib.name) in (hard or set())}
    rest = [inst.name for inst in chosen if inst.name not in picked]
    picked |= set(random.Random(seed).sample(rest, min(sample, len(rest))))
    return [inst for inst in chosen if inst.name in picked]


def linked_benchmark(instances, timeout: float, workdir: Path) -> Path:
    """The instances as a benchmark folder of symlinks with the shared timeout: alpha-beta-CROWN caches files
    next to its inputs, which must not land in the shared benchmark folder."""
    root = workdir / "benchmark"
    rows = []
    for inst in instances:
        for path in (inst.onnx, inst.vnnlib):
            link = root / path.parent.name / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path.resolve())
        rows.append(f"{inst.onnx.parent.name}/{inst.onnx.name},{inst.vnnlib.parent.name}/{inst.vnnlib.name},"
                    f"{timeout:g}")
    (root / "instances.csv").write_text("\n".join(rows) + "\n")
    return root


def run_abcrown(abcrown: Path, peer_path: str | None, config: dict, threads: int, workdir: Path
                ) -> tuple[list[dict], float]:
    """alpha-beta-CROWN with ``config`` (see :func:`abcrown_config`): per instance answer and seconds."""
    cfg, results = workdir / "abcrown.json", Path(config["general"]["results_file"])
    cfg.write_text(json.dumps(config))  # YAML 1.2 reads JSON
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": peer_path or ""}  # the peers' site dir only: not this project
    command = [sys.executable, "abcrown.py", "--config", str(cfg)]
    start_time = time.perf_counter()
    with open(workdir / "abcrown.log", "w") as log:
        subprocess.run(command, cwd=abcrown, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start_time
    if not results.exists():
        raise RuntimeError(f"alpha-beta-CROWN wrote no results; its log: {workdir / 'abcrown.log'}")
    with open(results, "rb") as f:  # our own run of the peer wrote it: status and seconds per instance
        per_instance = pickle.load(f)["results"]
    return [{"result": abcrown_answer(status), "time_s": seconds, "status": status}
            for status, seconds in per_instance], wall


def abcrown_answer(status: str) -> str:
    """alpha-beta-CROWN's verified_status as unsat / sat / timeout (its own mapping in single-file mode)."""
    if "unknown" in status or "timed out" in status or "timeout" in status:
        return "timeout"
    return "sat" if "unsafe" in status else "unsat" if "safe" in status else "timeout"


def run_ours(bench: Path, timeout: float, threads: int, workdir: Path) -> tuple[list, float]:
    """``certify --instances`` on every instance of ``bench`` (a :func:`linked_benchmark` folder)."""
    out = workdir / "ours.csv"
    command = [sys.executable, "-m", "nncert.cli.certify", "--instances", str(bench / "instances.csv"), "--domain",
               "mnbab", "--timeout", str(timeout), "--threads", str(threads), "--out", str(out), "--quiet"]
    start_time = time.perf_counter()
    with open(workdir / "ours.log", "w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start_time
    with open(out) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [{"result": r["result"], "time_s": float(r["time_s"])} for r in rows], wall


TOOLS = (("ours", "nncert mnbab"), ("abcrown", "alpha-beta-CROWN"))


def tally(rows: list[dict], wall: float) -> dict:
    times = [r["time_s"] for r in rows]
    return {**{a: sum(r["result"] == a for r in rows) for a in ("unsat", "sat", "timeout", "unknown")},
            "n": len(rows), "total_s": sum(times), "median_s": statistics.median(times) if times else 0.0,
            "wall_s": wall}


def compare_answers(instances, bench: Path, ours: list[dict], theirs: list[dict]) -> tuple[list[dict], list[str]]:
    """Per instance both tools' answers next to ``reference_results.csv``'s best known (``?`` without one),
    and every decided answer that contradicts it."""
    reference = {}
    if (bench / "reference_results.csv").exists():
        with open(bench / "reference_results.csv") as f:
            reference = {(r["onnx"], r["vnnlib"]): r["best_known"] for r in csv.DictReader(f)}
    rows, contradictions = [], []
    for inst, a, b in zip(instances, ours, theirs, strict=True):
        key = (inst.onnx.relative_to(bench).as_posix(), inst.vnnlib.relative_to(bench).as_posix())
        row = {"instance": inst.name, "reference": reference.get(key, "?"), "ours": a, "abcrown": b}
        for tool in ("ours", "abcrown"):
            answer = row[tool]["result"]
            if answer in ("sat", "unsat") and row["reference"] in ("sat", "unsat") and answer != row["reference"]:
                contradictions.append(f"{tool} {inst.name}: {answer}, reference {row['reference']}")
        rows.append(row)
    return rows, contradictions


def complete_section(args) -> str:
    """The results section of a complete run: benchmark, timeout and the options that change the selection."""
    parts = ["complete", Path(args.benchmark).name, f"{args.timeout:g}s"]
    parts += [f"pgd{args.abcrown_pgd_restarts}"] if args.abcrown_pgd_restarts is not None else []
    parts += [f"start{args.start}"] if args.start else []
    parts += [f"config-{Path(args.abcrown_config).stem}"] if args.abcrown_config else []
    parts += ["only"] if args.only else []
    parts += [f"hard{args.hard_seconds:g}s"] if args.hard_from else []
    parts += [f"sample{args.sample}"] if args.sample else []
    return "_".join(parts)


def run_complete(args) -> dict | None:
    abcrown = args.abcrown or os.environ.get("NNCERT_ABCROWN")
    peer_path = args.peer_path or os.environ.get("NNCERT_PEERS")
    if not abcrown or not (Path(abcrown) / "abcrown.py").exists():
        print(f"peers: skipped complete: alpha-beta-CROWN not installed ({README})")
        return None
    bench = benchmark_folder(args.benchmark, Path(args.benchmarks))
    hard = undecided_or_slow(Path(args.hard_from), args.hard_seconds) if args.hard_from else None
    instances = select_instances(read_instances(bench / "instances.csv"), args.start, args.num, args.only, hard,
                                 args.sample, args.seed)
    config_file = abcrown_config_file(bench, args.abcrown_config)
    sys.path.insert(0, peer_path or "")
    yaml = importlib.import_module("yaml")  # the peer's dependency, from its site dir
    config_path = Path(config_file) if Path(config_file).is_file() else Path(abcrown) / "exp_configs" / config_file
    base = yaml.safe_load(config_path.read_text())
    shape, ours, theirs, ours_wall, theirs_wall = shared_input_shape(instances), [], [], 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="nncert-peers-") as tmp:
        # the tools take turns every --chunk instances, so that a shared machine's load changes hit both alike
        for k, first in enumerate(range(0, len(instances), args.chunk)):
            chunk, workdir = instances[first:first + args.chunk], Path(args.keep or tmp) / f"chunk{k}"
            workdir.mkdir(parents=True, exist_ok=True)
            linked = linked_benchmark(chunk, args.timeout, workdir)  # both tools read the same files
            config = abcrown_config(base, linked, len(chunk), args.timeout, workdir / "abcrown_results.pkl", shape,
                                    args.abcrown_batch_size, args.abcrown_pgd_restarts)
            rows, wall = run_ours(linked, args.timeout, args.threads, workdir)
            ours, ours_wall = ours + rows, ours_wall + wall
            rows, wall = run_abcrown(Path(abcrown), peer_path, config, args.threads, workdir)
            theirs, theirs_wall = theirs + rows, theirs_wall + wall
    rows, contradictions = compare_answers(instances, bench, ours, theirs)
    return {"benchmark": bench.name, "start": args.start, "num": args.num, "only": args.only,
            "hard_from": args.hard_from, "hard_seconds": args.hard_seconds if args.hard_from else None,
            "sample": args.sample, "seed": args.seed, "timeout_s": args.timeout, "threads": args.threads,
            "chunk": args.chunk,
            "abcrown_config_file": config_file, "abcrown_config": config,
            "ours": tally(ours, ours_wall), "abcrown": tally(theirs, theirs_wall),
            "contradictions": contradictions, "rows": rows}


# -- report ---------------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = []
    for section in sorted(report, key=lambda k: (["crown", "alpha", "complete"].index(k.split("_")[0]), k)):
        meta = report[section]["meta"]
        lines += [f"## {section}", "", f"Command: `{meta['command']}`  ",
                  f"{meta['date']}, torch {meta['versions']['torch']}, {meta['versions']['platform']}, "
                  f"{meta['threads']} thread(s), {meta['machine']}; peers: "
                  f"{meta.get('peer_commits') or 'commits not recorded'}", ""]
        lines += (complete_table(report[section]) if section.startswith("complete")
                  else bounds_table(report[section], section.split("_")[0])) + [""]
    return "\n".join(lines)


def bounds_table(data: dict, section: str) -> list[str]:
    if section == "crown":
        lines = ["| network | samples | max abs diff vs CROWN (float64) | vs CROWN+IBP (float64) | vs CROWN+IBP "
                 "(float32; largest abs bound) | ours ms | CROWN ms | ratio | CROWN+IBP ms | ratio |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for n in data["networks"]:
            a, b = n["summary"]["crown"], n["summary"]["crown+ibp"]
            exact = [f"{x:.1e}" if x is not None else "not checked"
                     for x in (a["max_abs_diff_float64"], b["max_abs_diff_float64"])]
            lines.append(f"| {n['network']} | {n['samples']} | {exact[0]} | "
                         f"{exact[1]} | {b['max_abs_diff']:.1e}; {b['max_abs_bound']:.3g} | "
                         f"{a['median_ours_ms']:.1f} | {a['median_peer_ms']:.1f} | {a['time_ratio']:.2f} | "
                         f"{b['median_peer_ms']:.1f} | {b['time_ratio']:.2f} |")
        if all("mean_diff" in n["summary"]["crown"] for n in data["networks"]):
            lines += ["", "Signed differences, ours - peer (> 0: ours tighter; float32; min and max over all "
                      "margins of all samples; tighter: samples by their mean):", "",
                      "| network | vs CROWN: mean | min | max | tighter ours / peer | vs CROWN+IBP: mean | min | max | "
                      "tighter ours / peer | bound - sampled margin, max: ours / CROWN+IBP |", "|---" * 10 + "|"]
            for n in data["networks"]:
                cells = [f"{s['mean_diff']:+.4g} | {s['min_diff']:+.3g} | {s['max_diff']:+.3g} | "
                         f"{s['ours_tighter']} / {s['peer_tighter']}"
                         for s in (n["summary"]["crown"], n["summary"]["crown+ibp"])]
                lines.append(f"| {n['network']} | {' | '.join(cells)} | {sampled_check(n['summary']['crown+ibp'])} |")
        return lines
    lines = ["| network | samples | mean bound diff (ours - peer) | min | max | ours tighter | peer tighter | "
             "certified ours / peer | ours ms | alpha-CROWN ms | ratio | bound - sampled margin, max: ours / peer |",
             "|---" * 12 + "|"]
    for n in data["networks"]:
        s = n["summary"]["alpha"]
        extremes = f"{s['min_diff']:+.3g} | {s['max_diff']:+.3g}" if "min_diff" in s else "| "
        lines.append(f"| {n['network']} | {n['samples']} | {s['mean_diff']:+.4f} | {extremes} | {s['ours_tighter']} | "
                     f"{s['peer_tighter']} | {s['ours_certified']} / {s['peer_certified']} | "
                     f"{s['median_ours_ms']:.1f} | {s['median_peer_ms']:.1f} | {s['time_ratio']:.2f} | "
                     f"{sampled_check(s)} |")
    return lines


def sampled_check(summary: dict) -> str:
    """The largest excess of a lower bound over the smallest margin sampled in the box, ours / peer (a sound
    bound has none beyond rounding); empty for runs before it was recorded."""
    if "ours_above_sampled" not in summary:
        return ""
    return f"{summary['ours_above_sampled']:+.2g} / {summary['peer_above_sampled']:+.2g}"


def complete_table(data: dict) -> list[str]:
    config = data["abcrown_config"]
    restarts = config.get("attack", {}).get("pgd_restarts", "its default")
    chosen = f"{data['start']}..{data['start'] + data['num'] - 1}" if data.get("num") else f"{data['start']}..end"
    if data.get("only"):
        chosen = f"{data['only'].replace(',', ', ')} (of {chosen})"
    elif data.get("hard_from"):
        chosen = (f"{chosen} undecided or slower than {data['hard_seconds']:g} s in {data['hard_from']}, and "
                  f"{data['sample']} more drawn at random (seed {data['seed']})")
    elif data.get("sample"):
        chosen = f"{data['sample']} drawn at random (seed {data['seed']}) of {chosen}"
    benchmark = data.get("benchmark", "2022_mnist_fc")
    lines = [f"{benchmark}: instances {chosen} of instances.csv, timeout {data['timeout_s']:g} s for both; "
             f"alpha-beta-CROWN with {data.get('abcrown_config_file', 'vnncomp22/mnistfc.yaml')} as changed by "
             f"the harness (batch {config.get('solver', {}).get('batch_size', 'its default')}, "
             f"{restarts} PGD restarts)" + (f"; the tools take turns every {data['chunk']} instances"
                                            if data.get("chunk") else "; first ours on all, then the peer") + ".", "",
             "| tool | n | unsat | sat | timeout | unknown | median s | total s | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tool, name in TOOLS:
        s = data[tool]
        lines.append(f"| {name} | {s['n']} | {s['unsat']} | {s['sat']} | {s['timeout']} | {s['unknown']} | "
                     f"{s['median_s']:.2f} | {s['total_s']:.1f} | {s['wall_s']:.0f} |")
    networks = sorted({row["instance"].split("__")[0] for row in data["rows"]})
    if 1 < len(networks) <= 8:
        lines += ["", "| network | tool | unsat | sat | timeout | unknown | median s | total s |",
                  "|---|---|---|---|---|---|---|---|"]
        for net in networks:
            rows = [row for row in data["rows"] if row["instance"].startswith(net + "__")]
            for tool, name in TOOLS:
                s = tally([row[tool] for row in rows], 0.0)
                lines.append(f"| {net} | {name} | {s['unsat']} | {s['sat']} | {s['timeout']} | {s['unknown']} | "
                             f"{s['median_s']:.2f} | {s['total_s']:.1f} |")
    if len(data["rows"]) <= 40:
        lines += ["", "| instance | reference | nncert mnbab | s | alpha-beta-CROWN | s |", "|---|---|---|---|---|---|"]
        lines += [f"| {row['instance']} | {row['reference']} | {row['ours']['result']} | {row['ours']['time_s']:.1f} | "
                  f"{row['abcrown']['result']} | {row['abcrown']['time_s']:.1f} |" for row in data["rows"]]
    for tool, other, name in (("ours", "abcrown", "nncert mnbab"), ("abcrown", "ours", "alpha-beta-CROWN")):
        only = [row["instance"] for row in data["rows"]
                if row[tool]["result"] in ("sat", "unsat") and row[other]["result"] not in ("sat", "unsat")]
        lines += ["", f"Decided by {name} only: {', '.join(only) or 'none'}."]
    lines += ["", f"Contradictions with reference_results.csv: {data['contradictions'] or 'none'}."]
    return lines


def meta(args, peer_path: str | None) -> dict:
    commits = Path(peer_path) / "PEERS.txt" if peer_path else None
    return {"command": command_line(), "versions": versions(), "threads": args.threads,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seed": 0,
            "peer_commits": commits.read_text().strip() if commits and commits.exists() else None,
            "machine": f"{os.cpu_count()} CPUs, shared with other jobs"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("comparisons", nargs="+", choices=["crown", "alpha", "complete"])
    p.add_argument("--peer-path", default=None, help="site dir with auto_LiRPA (default: $NNCERT_PEERS)")
    p.add_argument("--abcrown", default=None,
                   help="alpha-beta-CROWN's complete_verifier folder (default: $NNCERT_ABCROWN)")
    p.add_argument("--benchmarks", default=os.environ.get("NNCERT_BENCHMARKS") or str(REPO.parent / "shared" /
                                                                                      "benchmarks"))
    p.add_argument("--num", type=int, default=None,
                   help="samples per network (bounds; default 10) or instances from --start (complete; default all)")
    p.add_argument("--eps-cnn", type=float, default=0.1, help="L-inf radius on the CNN3 models")
    p.add_argument("--eps-nonrelu", type=float, default=0.03,
                   help="L-inf radius on benchmarks/nonrelu.py's networks (its own default)")
    p.add_argument("--networks", default=",".join(NETWORK_GROUPS),
                   help="bounds: comma-separated groups of networks (models, mnist_fc, nonrelu); a subset gets its "
                        "own results sections")
    p.add_argument("--data-dir", default=os.environ.get("NNCERT_DATA") or str(REPO.parent / "shared" / "data"),
                   help="MNIST for training the nonrelu networks (default: $NNCERT_DATA or ../shared/data)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--benchmark", default="2022_mnist_fc",
                   help="complete: a VNN-COMP benchmark folder with instances.csv, as a path or a name under "
                        "--benchmarks/vnncomp (acasxu, 2022_oval21, 2022_sri_resnet_b, ...)")
    p.add_argument("--abcrown-config", default=None,
                   help="complete: alpha-beta-CROWN's configuration file (a path, or a name under its exp_configs; "
                        "default: its own for the benchmark, from the table ABCROWN_CONFIGS)")
    p.add_argument("--start", type=int, default=0, help="complete: first instance of instances.csv")
    p.add_argument("--timeout", type=float, default=60.0, help="complete: seconds per instance, both tools")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--abcrown-pgd-restarts", type=int, default=None,
                   help="complete: alpha-beta-CROWN's PGD restarts (default: its configuration's)")
    p.add_argument("--abcrown-batch-size", type=int, default=1024,
                   help="complete: at most this many subproblems per alpha-beta-CROWN batch (its GPU batches are too "
                        "large for one CPU thread)")
    p.add_argument("--only", default=None, help="complete: only these instances of the range (comma-separated "
                   "<onnx stem>__<vnnlib stem>, e.g. mnist-net_256x6__prop_1_0.03)")
    p.add_argument("--hard-from", default=None,
                   help="complete: only the instances one of our results CSVs (certify --instances --out) left "
                        "undecided or decided in more than --hard-seconds")
    p.add_argument("--hard-seconds", type=float, default=3.0)
    p.add_argument("--sample", type=int, default=0,
                   help="complete: this many more instances of the range drawn at random (all of them drawn if "
                        "neither --only nor --hard-from is given)")
    p.add_argument("--seed", type=int, default=0, help="complete: seed of --sample")
    p.add_argument("--chunk", type=int, default=10,
                   help="complete: the tools take turns every this many instances (each turn of alpha-beta-CROWN "
                        "starts it anew, 20-30 s outside the instances' times)")
    p.add_argument("--keep", default=None, help="keep the complete run's logs and configs in this folder")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    peer_path = args.peer_path or os.environ.get("NNCERT_PEERS")
    bound_kinds = [k for k in ("crown", "alpha") if k in args.comparisons]
    new = {}
    if bound_kinds:
        data = run_bounds(args, bound_kinds)
        if data is not None:
            groups = args.networks.split(",")
            suffix = "" if set(groups) == set(NETWORK_GROUPS) else "_" + "_".join(groups)
            for kind in bound_kinds:
                new[kind + suffix] = {**data, "meta": meta(args, peer_path)}
    if "complete" in args.comparisons:
        data = run_complete(args)
        if data is not None:
            new[complete_section(args)] = {**data, "meta": meta(args, peer_path)}
    if not new:
        return
    out = Path(args.out)  # read only now: other comparisons may have written their sections meanwhile
    report = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    report.update(new)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
