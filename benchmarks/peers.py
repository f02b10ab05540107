"""Side by side with peer verifiers: auto_LiRPA (CROWN, alpha-CROWN) and alpha-beta-CROWN, in one run.

Three comparisons, each measured in the same process run as ours so the
ratios hold on a shared machine:

- ``crown``: our DeepPoly bound against auto_LiRPA's CROWN on the same
  networks, input boxes and margin rows C (one sample at a time). DeepPoly and
  CROWN use the same ReLU relaxation (triangle upper line, lower slope 1 iff
  u > -l); ours also intersects every back-substituted bound with interval
  propagation, which auto_LiRPA does with ``compare_crown_with_ibp``, so both
  the peer's default and that setting are reported. Max |bound difference|
  and per-sample time ratios.
- ``alpha``: our alpha-optimised DeepPoly against auto_LiRPA's alpha-CROWN
  (``CROWN-Optimized``) at the same iteration count and learning rate, both
  optimising the intermediate layers' slopes too: which is tighter, and time.
- ``complete``: ``certify --instances`` (MN-BaB) against alpha-beta-CROWN on
  VNN-COMP 2022 mnist_fc instances at one shared timeout: answers, times and
  contradictions with ``reference_results.csv``.

The peers are never part of this project: install them under a temporary
directory (see benchmarks/README.md, "Installing and running the peers") and point the
harness at it with ``--peer-path`` / ``$NNCERT_PEERS`` (a site directory
holding ``auto_LiRPA`` and its dependencies) and ``--abcrown`` /
``$NNCERT_ABCROWN`` (alpha-beta-CROWN's ``complete_verifier`` folder). A
comparison whose peer is missing is skipped with a message (exit code 0).

    python benchmarks/peers.py crown alpha --num 10
    python benchmarks/peers.py complete --start 0 --num 30 --timeout 60

Writes ``benchmarks/results/peers.{json,md}``; each comparison replaces its
own section, so they can be run separately.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib
import json
import math
import os
import pickle
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
from nncert.domains.alpha import AlphaDeepPoly  # noqa: E402
from nncert.domains.deeppoly import DeepPoly  # noqa: E402
from nncert.domains.network import Conv2d, ElementwiseAffine, Linear, Network, ReLU, Reshape  # noqa: E402
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


def to_torch(net: Network) -> nn.Sequential:
    """A chain IR network as an nn.Sequential with the same weights (Linear, Conv2d, ReLU, Reshape, affine)."""
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
        elif isinstance(op, ReLU):
            layers.append(nn.ReLU())
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


def networks(args) -> list[tuple]:
    """(name, network, lower, upper, C, sample names) for every network of the bound comparisons."""
    demo, samples = demo_files()
    x, y = load_inputs_npz(samples, 0.0, 1.0)
    out = []
    for path in [demo, *sorted((REPO / "benchmarks" / "models").glob("*.onnx"))]:
        model = load_onnx(path)
        net = adapt_to_images(model.network, model.run, tuple(x.shape[1:])).network
        name = "demo " + path.stem if path == demo else path.stem
        out.append((f"{name} eps {args.eps_cnn}", net, *sample_problems(net, x, y, args.eps_cnn, args.num)))
    fc = Path(args.benchmarks) / "vnncomp" / "2022_mnist_fc" / "instances.csv"
    if fc.exists():
        out += list(vnnlib_problems(read_instances(fc), args.num))
    else:
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


def compare_sample(lirpa, peer: dict, net: Network, lo, hi, c, kinds, exact=None) -> dict:
    """One sample (batch 1): our bounds and times against the peer's, for the comparisons in ``kinds``.

    ``exact`` = (network, peer modules) in float64: the DeepPoly / CROWN agreement is checked there too,
    apart from float32 rounding.
    """
    row = {}
    if "crown" in kinds:
        with torch.no_grad():
            ours, t_ours = timed(lambda: DeepPoly(net, lo, hi).bound(c))
        for key in ("crown", "crown+ibp"):
            theirs, t_theirs = timed(lambda key=key: lirpa_bound(lirpa, peer[key], lo, hi, c, "CROWN"))
            row[key] = {"max_abs_diff": float((ours - theirs).abs().max()), "ours_s": t_ours,
                        "peer_s": t_theirs, "ours_min_bound": float(ours.min()), "peer_min_bound": float(theirs.min())}
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
        diff = ours - theirs  # > 0: ours tighter (larger lower bound)
        row["alpha"] = {"mean_diff": float(diff.mean()), "max_diff": float(diff.max()), "min_diff": float(diff.min()),
                        "ours_s": t_ours, "peer_s": t_theirs, "ours_certified": bool((ours > 0).all()),
                        "peer_certified": bool((theirs > 0).all()), "ours_min_bound": float(ours.min()),
                        "peer_min_bound": float(theirs.min())}
    return row


def compare_network(lirpa, name, net, lower, upper, C, names, kinds, dtype) -> dict:
    """Every sample of one network, one at a time (batch 1), in ``dtype`` (and the agreement in float64)."""
    net = net.to(dtype=dtype)
    lower, upper, C = lower.to(dtype), upper.to(dtype), C.to(dtype)
    peer = bounded_modules(lirpa, net, dtype, [k for k in ("crown", "crown+ibp", "alpha")
                                               if k.split("+")[0] in kinds])
    exact = None
    if "crown" in kinds:
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
        if key == "alpha":
            out[key].update(mean_diff=statistics.mean(x["mean_diff"] for x in r),
                            ours_tighter=sum(x["mean_diff"] > 1e-6 for x in r),
                            peer_tighter=sum(x["mean_diff"] < -1e-6 for x in r),
                            ours_certified=sum(x["ours_certified"] for x in r),
                            peer_certified=sum(x["peer_certified"] for x in r))
        else:
            out[key]["max_abs_diff"] = max(x["max_abs_diff"] for x in r)
            out[key]["max_abs_diff_float64"] = max(x["max_abs_diff_float64"] for x in r)
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
    for name, net, lower, upper, C, names in networks(args):
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


def abcrown_config(bench: Path, start: int, end: int, timeout: float, results: Path, restarts: int = 100) -> dict:
    """alpha-beta-CROWN's VNN-COMP 2022 mnist_fc settings (exp_configs/vnncomp22/mnistfc.yaml) on the CPU.

    Changed: device cpu; ``bab`` instead of ``bab-refine`` (MIP-refined intermediate bounds need a Gurobi
    licence); batch size 1024 instead of 4096 (CPU memory); the timeout overridden by ours; optionally
    fewer PGD restarts than the competition's 100 (a GPU's budget, tens of seconds on one CPU thread).
    """
    return {
        "general": {"device": "cpu", "root_path": str(bench), "csv_name": "instances.csv",
                    "complete_verifier": "bab", "results_file": str(results)},
        "model": {"input_shape": [-1, 1, 28, 28]},
        "data": {"start": start, "end": end},
        "solver": {"batch_size": 1024, "start_save_best": -1,
                   "beta-crown": {"iteration": 20, "lr_beta": 0.03, "enable_opt_interm_bounds": False}},
        "bab": {"override_timeout": timeout, "branching": {"candidates": 5, "reduceop": "max"}},
        "attack": {"attack_mode": "diversed_PGD", "pgd_restarts": restarts},
    }


def abcrown_answer(status: str) -> str:
    """alpha-beta-CROWN's verified_status as unsat / sat / timeout (its own mapping in single-file mode)."""
    if "unknown" in status or "timed out" in status or "timeout" in status:
        return "timeout"
    return "sat" if "unsafe" in status else "unsat" if "safe" in status else "timeout"


def linked_benchmark(instances, workdir: Path) -> Path:
    """The instances as a benchmark folder of symlinks: alpha-beta-CROWN caches files next to its inputs,
    which must not land in the shared benchmark folder."""
    root = workdir / "benchmark"
    rows = []
    for inst in instances:
        for path in (inst.onnx, inst.vnnlib):
            link = root / path.parent.name / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path.resolve())
        rows.append(f"{inst.onnx.parent.name}/{inst.onnx.name},{inst.vnnlib.parent.name}/{inst.vnnlib.name},"
                    f"{inst.timeout:g}")
    (root / "instances.csv").write_text("\n".join(rows) + "\n")
    return root


def run_abcrown(abcrown: Path, peer_path: str | None, bench: Path, n: int, args, workdir: Path
                ) -> tuple[list[dict], float]:
    """alpha-beta-CROWN on the ``n`` instances of ``bench`` (a :func:`linked_benchmark` folder)."""
    cfg, results = workdir / "abcrown.json", workdir / "abcrown_results.pkl"
    config = abcrown_config(bench, 0, n, args.timeout, results, args.abcrown_pgd_restarts)
    cfg.write_text(json.dumps(config))  # YAML 1.2 reads JSON
    threads = args.threads
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


def tally(rows: list[dict], wall: float) -> dict:
    times = [r["time_s"] for r in rows]
    return {**{a: sum(r["result"] == a for r in rows) for a in ("unsat", "sat", "timeout", "unknown")},
            "n": len(rows), "total_s": sum(times), "median_s": statistics.median(times) if times else 0.0,
            "wall_s": wall}


def run_complete(args) -> dict | None:
    abcrown = args.abcrown or os.environ.get("NNCERT_ABCROWN")
    peer_path = args.peer_path or os.environ.get("NNCERT_PEERS")
    if not abcrown or not (Path(abcrown) / "abcrown.py").exists():
        print(f"peers: skipped complete: alpha-beta-CROWN not installed ({README})")
        return None
    bench = Path(args.benchmarks) / "vnncomp" / "2022_mnist_fc"
    instances = read_instances(bench / "instances.csv")[args.start:args.start + args.num]
    if args.only:
        names = set(args.only.split(","))
        instances = [inst for inst in instances if inst.name in names]
        if missing := names - {inst.name for inst in instances}:
            raise SystemExit(f"peers: --only: no instance {', '.join(sorted(missing))} in the selected range")
    with open(bench / "reference_results.csv") as f:
        reference = {(r["onnx"], r["vnnlib"]): r["best_known"] for r in csv.DictReader(f)}
    with tempfile.TemporaryDirectory(prefix="nncert-peers-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        linked = linked_benchmark(instances, workdir)  # both tools read the same files
        ours, ours_wall = run_ours(linked, args.timeout, args.threads, workdir)
        theirs, theirs_wall = run_abcrown(Path(abcrown), peer_path, linked, len(instances), args, workdir)
    rows, contradictions = [], []
    for inst, a, b in zip(instances, ours, theirs, strict=True):
        key = (str(inst.onnx.relative_to(bench)), str(inst.vnnlib.relative_to(bench)))
        row = {"instance": inst.name, "reference": reference.get(key, "?"), "ours": a, "abcrown": b}
        for tool in ("ours", "abcrown"):
            answer = row[tool]["result"]
            if answer in ("sat", "unsat") and row["reference"] in ("sat", "unsat") and answer != row["reference"]:
                contradictions.append(f"{tool} {inst.name}: {answer}, reference {row['reference']}")
        rows.append(row)
    return {"start": args.start, "num": args.num, "only": args.only, "timeout_s": args.timeout,
            "threads": args.threads,
            "abcrown_config": abcrown_config(Path("<symlinks to the instances>"), 0, len(instances), args.timeout,
                                             Path("results.pkl"), args.abcrown_pgd_restarts),
            "ours": tally(ours, ours_wall), "abcrown": tally(theirs, theirs_wall),
            "contradictions": contradictions, "rows": rows}


# -- report ---------------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = []
    for section in ("crown", "alpha", *sorted(k for k in report if k.startswith("complete"))):
        if section not in report:
            continue
        meta = report[section]["meta"]
        lines += [f"## {section}", "", f"Command: `{meta['command']}`  ",
                  f"{meta['date']}, torch {meta['versions']['torch']}, {meta['versions']['platform']}, "
                  f"{meta['threads']} thread(s), {meta['machine']}; peers: "
                  f"{meta.get('peer_commits') or 'commits not recorded'}", ""]
        lines += (complete_table(report[section]) if section.startswith("complete")
                  else bounds_table(report[section], section)) + [""]
    return "\n".join(lines)


def bounds_table(data: dict, section: str) -> list[str]:
    if section == "crown":
        lines = ["| network | samples | max abs diff vs CROWN (float64) | vs CROWN+IBP (float64) | vs CROWN+IBP "
                 "(float32; largest abs bound) | ours ms | CROWN ms | ratio | CROWN+IBP ms | ratio |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for n in data["networks"]:
            a, b = n["summary"]["crown"], n["summary"]["crown+ibp"]
            lines.append(f"| {n['network']} | {n['samples']} | {a['max_abs_diff_float64']:.1e} | "
                         f"{b['max_abs_diff_float64']:.1e} | {b['max_abs_diff']:.1e}; {b['max_abs_bound']:.3g} | "
                         f"{a['median_ours_ms']:.1f} | {a['median_peer_ms']:.1f} | {a['time_ratio']:.2f} | "
                         f"{b['median_peer_ms']:.1f} | {b['time_ratio']:.2f} |")
        return lines
    lines = ["| network | samples | mean bound diff (ours - peer) | ours tighter | peer tighter | certified ours / "
             "peer | ours ms | alpha-CROWN ms | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for n in data["networks"]:
        s = n["summary"]["alpha"]
        lines.append(f"| {n['network']} | {n['samples']} | {s['mean_diff']:+.4f} | {s['ours_tighter']} | "
                     f"{s['peer_tighter']} | {s['ours_certified']} / {s['peer_certified']} | "
                     f"{s['median_ours_ms']:.1f} | {s['median_peer_ms']:.1f} | {s['time_ratio']:.2f} |")
    return lines


def complete_table(data: dict) -> list[str]:
    restarts = data["abcrown_config"]["attack"]["pgd_restarts"]
    chosen = f"{data['start']}..{data['start'] + data['num'] - 1}"
    if data.get("only"):
        chosen = f"{data['only'].replace(',', ', ')} (of {chosen})"
    lines = [f"Instances {chosen} of instances.csv, timeout {data['timeout_s']} s for both; alpha-beta-CROWN with "
             f"{restarts} PGD restarts.", "",
             "| tool | n | unsat | sat | timeout | unknown | median s | total s | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tool, name in (("ours", "nncert mnbab"), ("abcrown", "alpha-beta-CROWN")):
        s = data[tool]
        lines.append(f"| {name} | {s['n']} | {s['unsat']} | {s['sat']} | {s['timeout']} | {s['unknown']} | "
                     f"{s['median_s']:.2f} | {s['total_s']:.1f} | {s['wall_s']:.0f} |")
    networks = sorted({row["instance"].split("__")[0] for row in data["rows"]})
    if len(networks) > 1:
        lines += ["", "| network | tool | unsat | sat | timeout | unknown | median s | total s |",
                  "|---|---|---|---|---|---|---|---|"]
        for net in networks:
            rows = [row for row in data["rows"] if row["instance"].startswith(net + "__")]
            for tool, name in (("ours", "nncert mnbab"), ("abcrown", "alpha-beta-CROWN")):
                s = tally([row[tool] for row in rows], 0.0)
                lines.append(f"| {net} | {name} | {s['unsat']} | {s['sat']} | {s['timeout']} | {s['unknown']} | "
                             f"{s['median_s']:.2f} | {s['total_s']:.1f} |")
    if data.get("only"):
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
    p.add_argument("--num", type=int, default=10, help="samples per network (bounds) or instances (complete)")
    p.add_argument("--eps-cnn", type=float, default=0.1, help="L-inf radius on the CNN3 models")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--start", type=int, default=0, help="first mnist_fc instance (complete)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per instance, both tools (complete)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--abcrown-pgd-restarts", type=int, default=100,
                   help="alpha-beta-CROWN's PGD restarts (competition: 100); other values (and a --start) get "
                        "their own results section")
    p.add_argument("--only", default=None, help="complete: only these instances of the range (comma-separated "
                   "<onnx stem>__<vnnlib stem>, e.g. mnist-net_256x6__prop_1_0.03); own results section")
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
            for kind in bound_kinds:
                new[kind] = {**data, "meta": meta(args, peer_path)}
    if "complete" in args.comparisons:
        data = run_complete(args)
        if data is not None:
            key = ("complete" + ("" if args.abcrown_pgd_restarts == 100 else f"_pgd{args.abcrown_pgd_restarts}")
                   + ("" if args.start == 0 else f"_start{args.start}")
                   + ("" if args.timeout == 60 else f"_{args.timeout:g}s") + ("_only" if args.only else ""))
            new[key] = {**data, "meta": meta(args, peer_path)}
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
