"""`certify`: verify an ONNX model on samples (L-inf balls) or on a VNN-LIB property.

Argument parsing and wiring only; the work is in verifier/.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from nncert.cli.errors import OneLineParser, UserError, run_main
from nncert.cli.threads import torch_threads
from nncert.domains.bab import BaBConfig
from nncert.domains.input_bab import InputBaBConfig
from nncert.domains.intermediate_bab import IntermediateBaBConfig
from nncert.domains.mnbab import INPUT_SPLIT_MAX_DIMS, MNBaBConfig
from nncert.training import distributed
from nncert.verifier.api import pipeline
from nncert.verifier.certify import Instance, Pipeline
from nncert.verifier.instances import (
    BenchmarkInstance,
    InstanceResults,
    Runner,
    format_instance_table,
    read_instances,
    run_instances,
    summarize_instances,
)
from nncert.verifier.onnx_import import load_onnx
from nncert.verifier.problems import Model, adapt_to_images, linf_instances, load_inputs_npz, remaining, vnnlib_instance
from nncert.verifier.registry import DOMAINS, Options
from nncert.verifier.results import ResultsFile, command_line, format_table, versions
from nncert.verifier.run import certify_instances
from nncert.verifier.shard import (
    Shard,
    ShardsIncomplete,
    finished_instances,
    finished_samples,
    merge_instance_results,
    merge_results,
    shard_files,
)
from nncert.verifier.spec import SpecError, parse_eps
from nncert.verifier.vnnlib import parse_vnnlib

DEFAULT_DOMAINS = "box,deeppoly" + (",mnbab" if "mnbab" in DOMAINS else "")
DEMO_EPS = "0.1"
DEFAULT_TIMEOUT = 60.0
DEFAULT_NUM = 100
SHARD_WAIT = timedelta(days=7)  # under torchrun, how long finished ranks wait for the slowest before the merge
R = TypeVar("R")


def demo_files() -> tuple[Path, Path]:
    data = resources.files("nncert.verifier") / "data"
    return Path(str(data / "demo_mnist.onnx")), Path(str(data / "mnist_first100.npz"))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="certify",
        description="Certify an ONNX ReLU network with Box, DeepPoly and MN-BaB. Without a model, runs the "
                    "bundled demo (a SABR-trained MNIST network on the first 100 MNIST test images, eps 0.1).")
    p.add_argument("model", nargs="?", help="ONNX model (default: the bundled demo network)")
    p.add_argument("--eps", help="L-inf radius in input space, e.g. 0.1 or 2/255")
    source = add_sample_options(p)
    source.add_argument("--vnnlib", help="VNN-LIB property file (instead of eps / dataset / inputs)")
    source.add_argument("--instances", help="VNN-COMP instances.csv (onnx, vnnlib, timeout per row; no MODEL): "
                                            "verify every instance, results to --out")
    add_verifier_options(p, timeout_help="wall-clock seconds per property (default 60; with --instances, each "
                                         "instance's own)")
    p.add_argument("--json", help="write results here as they arrive")
    p.add_argument("--out", help="with --instances: the results CSV, one row per instance and domain")
    p.add_argument("--vnncomp-dir", help="with --instances: write each instance's VNN-COMP result file "
                                         "(sat + counterexample / unsat / unknown / timeout) to DIR/DOMAIN/")
    p.add_argument("--resume", action="store_true",
                   help="continue the run stored in --json (or --out): what is done in every domain is skipped")
    add_shard_options(p, "--json (or --out)")
    return p


def add_shard_options(p: argparse.ArgumentParser, output: str) -> None:
    """--shard and --merge: a run split over processes (torchrun does this by itself) or batch jobs."""
    group = p.add_argument_group("sharding (torchrun shards by itself: one shard per process, merged by rank 0)")
    group.add_argument("--shard", type=shard_value, metavar="I/N",
                       help=f"run only shard I of N (samples I, I+N, ...) into {output}.shard-I-of-N; the shard "
                            "that completes the set merges them into the normal output")
    group.add_argument("--merge", action="store_true",
                       help=f"only merge the shard files of {output} into it (every sample must be done)")


def shard_value(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


def add_sample_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Where L-inf samples come from and how they are normalised; returns the group of sample sources."""
    source = p.add_argument_group("samples (one of)")
    source.add_argument("--dataset", choices=("mnist", "cifar10"))
    source.add_argument("--inputs", help=".npz with x (N, *input_shape) in [clip-min, clip-max] and y (N,) labels")
    p.add_argument("--data-dir", help="dataset folder in torchvision layout (default: $NNCERT_DATA, else download)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--start", type=int, default=0, help="index of the first sample (or instance)")
    p.add_argument("--num", type=int, help=f"number of samples (default {DEFAULT_NUM}; instances: all)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation applied before the model (per channel)")
    p.add_argument("--std", type=float, nargs="+", help="normalisation applied before the model (per channel)")
    p.add_argument("--clip-min", type=float, default=0.0, help="lower end of the valid input range")
    p.add_argument("--clip-max", type=float, default=1.0, help="upper end of the valid input range")
    return source


def add_verifier_options(p: argparse.ArgumentParser, timeout_help: str) -> None:
    """Domains, their settings and the machine."""
    p.add_argument("--domain", default=DEFAULT_DOMAINS,
                   help=f"comma-separated domains among {', '.join(DOMAINS)} (default: {DEFAULT_DOMAINS})")
    p.add_argument("--timeout", type=float, help=timeout_help)
    p.add_argument("--no-attack", action="store_true",
                   help="skip the PGD attack stages (before the domains, and MN-BaB's before branching)")
    p.add_argument("--batch-size", type=int, default=32, help="samples bounded together by Box / DeepPoly")
    mnbab = p.add_argument_group("MN-BaB")
    mnbab.add_argument("--bab-batch-size", type=int, default=BaBConfig.batch_size,
                       help=f"subproblems branched together (default {BaBConfig.batch_size})")
    mnbab.add_argument("--branching", choices=("acs", "babsr"), default="babsr",
                       help="BaBSR or MN-BaB's active-constraint score")
    mnbab.add_argument("--branching-candidates", type=int, default=BaBConfig.fsb_candidates, metavar="K",
                       help="filtered smart branching: the top K neurons of each score are tried with a cheap "
                            "bound of their children (1: split the best-scored neuron; default "
                            f"{BaBConfig.fsb_candidates})")
    mnbab.add_argument("--lp-checks", type=int, default=BaBConfig.lp_checks, metavar="N",
                       help="per batch, check up to N children whose bound did not rise above their parent's by "
                            "the LP relaxation of the MILP encoding (HiGHS), pruning empty regions (0: off; default "
                            f"{BaBConfig.lp_checks})")
    mnbab.add_argument("--bab-split", choices=("auto", "relu", "input"), default="auto",
                       help="branch on ReLUs or on the input box; auto: input for inputs of at most "
                            f"{INPUT_SPLIT_MAX_DIMS} dimensions (e.g. ACAS Xu), else ReLUs")
    mnbab.add_argument("--multineuron-k", type=int, default=3, choices=(0, 2, 3, 4),
                       help="ReLUs per multi-neuron constraint group (0 disables the constraints)")
    mnbab.add_argument("--alpha-iterations", type=int, default=20, help="slope optimisation steps at the root")
    mnbab.add_argument("--intermediate-bab-share", type=float, default=MNBaBConfig.intermediate_bab_share,
                       metavar="F", help="at most this share of the time left tightens the intermediate bounds at "
                                         "the root by a small branch-and-bound per unstable neuron (0: off; "
                                         f"default {MNBaBConfig.intermediate_bab_share})")
    mnbab.add_argument("--max-memory", type=size_value, metavar="SIZE",
                       help="memory each MN-BaB stage may take, e.g. 512M or 2G (default: half the memory "
                            "available when the run starts): the optimised slopes of the bounds that do not fit "
                            "stay DeepPoly's, near the cap BaB goes depth-first, and a property whose open "
                            "subproblems still do not fit ends as unknown")
    mnbab.add_argument("--max-queue", type=int, default=BaBConfig.max_queue,
                       help=f"open subproblems beyond which BaB goes depth-first (default {BaBConfig.max_queue})")
    mnbab.add_argument("--milp-backend", choices=("auto", "highs", "gurobi"), default="auto",
                       help="solver for --domain milp")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--float64", action="store_true",
                   help="compute everything in float64: network, specification, bounds (default float32, with "
                        "every certificate guarded against float32 rounding by float64)")
    p.add_argument("--trust-float32", action="store_true",
                   help="take float32 bounds at face value, without the float64 guard (faster; a margin within "
                        "rounding may then certify)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: the cores not busy, from the load average)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
DEFAULT_MEMORY_SHARE = 0.5  # of the memory available at start: room for the process itself and the machine's others


def default_max_memory() -> int:
    """``DEFAULT_MEMORY_SHARE`` of the memory available now (MemAvailable; else of the physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(DEFAULT_MEMORY_SHARE * available)


def size_value(text: str) -> int:
    """Bytes from a size like 2G, 512M, 1.5G or 1000000 (binary units, an optional trailing B or iB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size like 512M or 2G, got {text!r}")
    return int(float(match[1]) * SIZE_UNITS[match[2]])


def parse_domains(text: str) -> list[str]:
    domains = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise UserError(f"unknown domain {', '.join(unknown) or repr(text)}; choose from {', '.join(DOMAINS)}")
    return domains


def device_of(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"invalid --device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    return device


def options_from(args) -> Options:
    if (min(args.bab_batch_size, args.max_queue, args.branching_candidates) < 1
            or min(args.alpha_iterations, args.lp_checks) < 0 or not 0 <= args.intermediate_bab_share <= 1):
        raise UserError("--bab-batch-size, --max-queue and --branching-candidates must be >= 1, "
                        "--alpha-iterations and --lp-checks >= 0 and --intermediate-bab-share in [0, 1]")
    memory = args.max_memory
    bab = BaBConfig(batch_size=args.bab_batch_size, branching=args.branching, max_queue=args.max_queue,
                    max_memory=memory, batch_memory=memory, fsb_candidates=args.branching_candidates,
                    lp_checks=args.lp_checks)
    searches = IntermediateBaBConfig()
    mnbab = MNBaBConfig(alpha_iterations=args.alpha_iterations, multineuron=args.multineuron_k > 0,
                        k=max(args.multineuron_k, 2), bab_config=bab, split=args.bab_split,
                        intermediate_bab_share=args.intermediate_bab_share, max_memory=memory,
                        intermediate_bab_config=replace(searches, max_memory=min(searches.max_memory, memory)),
                        input_bab_config=InputBaBConfig(max_memory=memory),
                        attack_restarts=0 if args.no_attack else MNBaBConfig.attack_restarts)
    return Options(milp_backend=args.milp_backend, mnbab=mnbab)


def load_samples(args) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """Images (N, C, H, W) or inputs (N, *shape), labels (N,), and the dataset name if any."""
    num = args.num or DEFAULT_NUM
    if args.inputs:
        x, y = load_inputs_npz(args.inputs, args.clip_min, args.clip_max)
        return x[args.start:args.start + num], y[args.start:args.start + num], None
    from nncert.training.datasets import load_dataset

    data = load_dataset(args.dataset, args.split, args.data_dir).subset(args.start, num)
    return data.x, data.y, args.dataset


def main(argv: list[str] | None = None) -> int:
    return run_main("certify", _main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    domains, device = check_verifier_options(args)
    with distributed.process_group(device, backend="gloo", timeout=SHARD_WAIT) as device:
        return _main_instances(args, domains, device) if args.instances else _main_samples(args, domains, device)


def _main_samples(args, domains: list[str], device: torch.device) -> int:
    if args.out or args.vnncomp_dir:
        raise UserError("--out and --vnncomp-dir go with --instances (use --json for samples and --vnnlib)")
    if args.model is None:
        if args.vnnlib or args.dataset:
            raise UserError("give a MODEL with --vnnlib or --dataset (without a model the bundled demo runs)")
        args.model, args.inputs = demo_files()
        args.eps = args.eps or DEMO_EPS
    if args.vnnlib is None and args.dataset is None and args.inputs is None:
        raise UserError("give one of --dataset, --inputs, --vnnlib or --instances")
    if args.resume and not args.json:
        raise UserError("--resume needs --json (the results file to continue)")
    check_shard_options(args, args.json, "--json")
    results = run_sharded(args, lambda shard: certify_run(args, domains, device, shard),
                          lambda required: merge_run(args, domains, device, required), [args.json])
    if results is None:
        return 0
    if args.vnnlib:
        for row in results.rows:
            print(f"{row['domain']}: {row['status']} ({row['time_s']:.2f} s)")
    print(format_table(results.summary))
    if args.json:
        print(f"results written to {args.json}")
    return 0


def check_shard_options(args, output: str | None, option: str) -> None:
    if args.shard and distributed.launched():
        raise UserError("--shard is for runs outside torchrun (under torchrun every process is a shard already)")
    if args.merge and (args.shard or distributed.launched()):
        raise UserError("--merge runs alone: without --shard, in one process")
    if (args.shard or args.merge or distributed.launched()) and not output:
        raise UserError(f"--shard, --merge and torchrun need {option} (the merged output)")


def run_sharded(args, run: Callable[[Shard | None], R], merge: Callable[[bool], R | None],
                outputs: list[str | Path | None]) -> R | None:
    """The run as the options ask: all of it, this process's shard (then the merge if every shard is done), or
    only the merge (--merge). Under torchrun every rank runs its shard and rank 0 merges once all are done.
    Resuming ``outputs`` that have shard files in one process runs as the one shard 0/1, so their work counts.

    Returns the (merged) output, or None where this process has no output to show.
    """
    if args.merge:
        return merge(True)
    shard = args.shard or (Shard(distributed.rank(), distributed.world_size()) if distributed.world_size() > 1
                           else None)
    if shard is None and args.resume and any(shard_files(out) for out in outputs if out):
        shard = Shard(0, 1)
    if shard is None:
        return run(None)
    run(shard)
    if distributed.world_size() > 1:
        distributed.barrier()
        return merge(True) if distributed.is_main() else None
    merged = merge(False)
    if merged is None:
        print(f"shard {shard} done; not every shard is: the last one to finish merges them (or run with --merge)",
              file=sys.stderr)
    return merged


def merge_or_none(merge: Callable[[], R], required: bool) -> R | None:
    """``merge()``; None instead if some shard is not done and the merge is not ``required``."""
    try:
        return merge()
    except ShardsIncomplete as e:
        if required:
            raise UserError(str(e)) from None
        return None


def check_verifier_options(args) -> tuple[list[str], torch.device]:
    """Validates the shared options (and applies --threads); returns the domains and the device."""
    domains = parse_domains(args.domain)
    device = device_of(args.device)
    if args.timeout is not None and args.timeout <= 0:
        raise UserError("--timeout must be positive")
    if (args.num is not None and args.num < 1) or args.start < 0:
        raise UserError("--num must be >= 1 and --start >= 0")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1")
    torch.set_num_threads(torch_threads(args.threads))
    if args.max_memory is None:  # chosen once per run, so the options recorded are those used
        args.max_memory = default_max_memory()
    return domains, device


def dtype_of(args) -> torch.dtype:
    return torch.float64 if args.float64 else torch.float32


def make_pipeline(args, model, domains: list[str], timeout: float, device: torch.device) -> Pipeline:
    """The pipeline the options ask for, on ``model`` (a Model: network and oracle) on device and dtype."""
    return pipeline(model, domains, timeout, attack=not args.no_attack, seed=args.seed, options=options_from(args),
                    batch_size=args.batch_size, device=device, dtype=dtype_of(args), recheck=not args.trust_float32)


def certify_run(args, domains: list[str], device: torch.device, shard: Shard | None = None) -> ResultsFile:
    """One model on L-inf samples (args.eps) or a VNN-LIB file, streamed to args.json (resumed with args.resume).

    With ``shard``, only its samples, streamed to its shard file of args.json;
    resuming skips the samples done in any shard file (or in args.json).
    """
    model, instances, meta = run_setup(args, domains, device)
    path = args.json
    if shard is not None:
        instances, path, meta = shard.take(instances), shard.path(args.json), {**meta, **shard.meta()}
    pipeline = make_pipeline(args, model, domains, meta["timeout_s"], device)
    if args.resume:
        results = ResultsFile.resume(path, meta, domains)
        done = results.completed() | (finished_samples(args.json, meta, domains) if shard is not None else set())
        instances = remaining(instances, done)
    else:
        results = ResultsFile(path, meta, domains)
    return certify_instances(pipeline, instances, results,
                             progress=not args.quiet and sys.stderr.isatty() and distributed.is_main())


def merge_run(args, domains: list[str], device: torch.device, required: bool) -> ResultsFile | None:
    """args.json written from its shard files (see verifier.shard); None if a shard is not done and not required."""
    _, instances, meta = run_setup(args, domains, device)
    return merge_or_none(lambda: merge_results(args.json, meta, domains, [inst.index for inst in instances],
                                               include_out=args.resume or args.merge), required)


def run_setup(args, domains: list[str], device: torch.device) -> tuple[Model, Sequence[Instance], dict]:
    """The model, the instances (samples or the VNN-LIB property) and the results' meta of a run."""
    timeout = args.timeout or DEFAULT_TIMEOUT
    onnx_model = load_onnx(args.model)
    meta = {"command": command_line(), "versions": versions(), "seed": args.seed, "model": str(args.model),
            "model_sha256": onnx_model.sha256, "domains": domains, "timeout_s": timeout,
            "device": str(device), "dtype": str(dtype_of(args)).removeprefix("torch."),
            "float64_guard": not (args.float64 or args.trust_float32),
            "options": dataclasses.asdict(options_from(args))}
    if args.vnnlib:
        props = parse_vnnlib(args.vnnlib, n_inputs=None, n_outputs=None)
        instances = [vnnlib_instance(props, onnx_model.input_shape, onnx_model.output_size)]
        model = adapt_to_images(onnx_model.network, onnx_model.run, onnx_model.input_shape)
        meta.update(vnnlib=str(args.vnnlib))
    else:
        if args.eps is None:
            raise UserError("--eps is required with --dataset / --inputs")
        if args.clip_min >= args.clip_max:
            raise UserError("--clip-min must be below --clip-max")
        eps = parse_eps(args.eps, args.clip_min, args.clip_max)
        x, y, dataset = load_samples(args)
        model = adapt_to_images(onnx_model.network, onnx_model.run, tuple(x.shape[1:]), args.mean, args.std)
        instances = linf_instances(x, y, eps, onnx_model.output_size, args.clip_min, args.clip_max, args.start)
        meta.update(eps=eps, eps_text=args.eps, dataset=dataset, inputs=str(args.inputs) if args.inputs else None,
                    split=args.split, start=args.start, num=len(instances), mean=args.mean, std=args.std,
                    clip=[args.clip_min, args.clip_max])
    return model, instances, meta


def _main_instances(args, domains: list[str], device: torch.device) -> int:
    """``--instances``: a VNN-COMP benchmark, one CSV row per instance and domain."""
    if args.model or args.vnnlib or args.dataset or args.inputs:
        raise UserError("--instances takes the models and properties from the csv: give no MODEL, --vnnlib, "
                        "--dataset or --inputs")
    if not args.out:
        raise UserError("--instances needs --out (the results CSV)")
    check_shard_options(args, args.out, "--out")
    instances = read_instances(args.instances)[args.start:args.start + args.num if args.num else None]
    if not instances:
        raise UserError(f"--start {args.start} is past the last instance")
    meta = {"command": command_line(), "versions": versions(), "seed": args.seed, "instances": args.instances,
            "start": args.start, "num": len(instances), "dtype": str(dtype_of(args)).removeprefix("torch."),
            "float64_guard": not (args.float64 or args.trust_float32),
            "domains": domains, "timeout_s": args.timeout or "per instance", "device": str(device),
            "options": dataclasses.asdict(options_from(args))}

    def run(shard: Shard | None) -> list[dict]:
        return _run_instances(args, domains, device, instances, meta, shard)

    def merge(required: bool) -> list[dict] | None:
        return merge_or_none(lambda: merge_instance_results(args.out, meta, instances, domains,
                                                            include_out=args.resume or args.merge), required)

    rows = run_sharded(args, run, merge, [args.out])
    if rows is None:
        return 0
    print(format_instance_table(summarize_instances(rows, domains)))
    print(f"results written to {args.out}")
    return 0


def _run_instances(args, domains: list[str], device: torch.device, instances: list[BenchmarkInstance], meta: dict,
                   shard: Shard | None) -> list[dict]:
    """Every instance (or the shard's) into args.out (or its shard file); returns the file's rows."""
    path = args.out
    if shard is not None:
        path, meta = shard.path(args.out), {**meta, **shard.meta()}
        instances = shard.take(instances)
        if args.resume:  # skip what another shard file finished
            done = finished_instances(args.out)
            instances = [inst for inst in instances
                         if any((str(inst.onnx), str(inst.vnnlib), d) not in done for d in domains)]
    results = InstanceResults(path, meta, resume=args.resume)

    bar = tqdm(total=len(instances), unit="instance", leave=False, desc="certify " + ",".join(domains),
               disable=args.quiet or not sys.stderr.isatty() or not distributed.is_main())

    def progress(results: InstanceResults) -> None:
        bar.update(1)
        summary = summarize_instances(results.rows, domains)
        bar.set_postfix({d: f"{s['unsat']} unsat {s['sat']} sat" for d, s in summary.items()})

    try:
        runner = Runner(lambda model, todo, timeout: make_pipeline(args, model, todo, timeout, device), args.timeout)
        run_instances(instances, domains, results, runner,
                      Path(args.vnncomp_dir) if args.vnncomp_dir else None, progress)
    finally:
        bar.close()
    return results.rows


if __name__ == "__main__":
    sys.exit(main())
