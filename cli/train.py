"""`train`: certified training (std, pgd, ibp, sabr, mtl-ibp, abscert) of a model exported as ONNX for `certify`.

Argument parsing and wiring only; the work is in training/.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from nncert.cli.errors import OneLineParser, run_main
from nncert.cli.threads import torch_threads
from nncert.training.config import METHODS, MODELS, TrainConfig
from nncert.training.datasets import DATASETS
from nncert.training.trainer import train
from nncert.verifier.spec import SpecError, parse_eps


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="train", description="Train a network with std, PGD, IBP, SABR, MTL-IBP or AbsCert "
                                          "training and export RUN_DIR/model.onnx for `certify`. Unset options follow "
                                          "the SABR paper's recipe for the dataset and eps. Under `torchrun "
                                          "--nproc-per-node N` it trains data parallel (--batch-size is the "
                                          "global batch).")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--eps", required=True, type=eps_value, help="L-inf radius in [0, 1] pixel space, e.g. 0.1 or 2/255")
    p.add_argument("--out", required=True, help="run directory (checkpoint, metrics, model.onnx, summary)")
    p.add_argument("--train-eps", type=eps_value, help="epsilon trained for (default: --eps)")
    p.add_argument("--lambda", dest="lam", type=float, help="SABR small-box ratio tau / eps in (0, 1]; 1 is IBP")
    p.add_argument("--mtl-alpha", type=float, help="MTL-IBP's weight alpha in [0, 1] of the IBP loss in "
                   "(1 - alpha) L_adv + alpha L_IBP (default: the paper's 4e-3 at CIFAR-10 2/255, 0.5 at 8/255, "
                   "1e-2 at MNIST 0.1, 8e-2 at 0.3)")
    p.add_argument("--bin-width", type=eps_value, help="AbsCert's bin width eta of the input abstraction, >= 2 eps "
                                                   "(default: 2 * --train-eps)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split evenly among torchrun's processes)")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    p.add_argument("--lr-milestones", type=int, nargs="*", help="epochs after which the lr is multiplied by "
                                                                 "--lr-decay")
    p.add_argument("--lr-decay", type=float, default=0.2)
    p.add_argument("--warmup-epochs", type=int, help="epochs of natural training before the eps ramp")
    p.add_argument("--ramp-epochs", type=int, help="epochs over which eps grows from 0 to --train-eps")
    p.add_argument("--l1", type=float, help="L1 regularisation coefficient")
    p.add_argument("--reg-lambda", type=float, default=0.5, help="weight of Shi et al.'s warm-up regularisers")
    p.add_argument("--grad-clip", type=float, default=10.0, help="gradient norm clipping")
    p.add_argument("--pgd-steps", type=int, default=8, help="PGD steps of pgd training and SABR's region selection")
    p.add_argument("--widths", type=widths_value, default=(100, 100), help="hidden widths of --model fc, e.g. 100,100")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random crops and flips (default: on for cifar10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="dataset folder in torchvision layout (default: $NNCERT_DATA, else download)")
    p.add_argument("--subset", type=int, help="train on the first N training images")
    p.add_argument("--val-size", type=int, default=500, help="test images evaluated after every epoch")
    p.add_argument("--eval-subset", type=int, default=1000, help="first test images of the final summary's "
                   "natural, PGD and Box-certified accuracy (default 1000; 10000 for the whole CIFAR-10 / MNIST "
                   "test set)")
    p.add_argument("--eval-pgd-steps", type=int, default=40)
    p.add_argument("--eval-pgd-restarts", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: the cores not busy, from the load average)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def eps_value(text: str) -> float:
    try:
        return parse_eps(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"invalid --eps {text!r}: ")) from None


def widths_value(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        method=args.method, dataset=args.dataset, model=args.model, eps=args.eps, out=args.out,
        train_eps=args.train_eps, lam=args.lam, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        bin_width=args.bin_width, mtl_alpha=args.mtl_alpha,
        lr_milestones=None if args.lr_milestones is None else tuple(args.lr_milestones), lr_decay=args.lr_decay,
        warmup_epochs=args.warmup_epochs, ramp_epochs=args.ramp_epochs, l1=args.l1, reg_lambda=args.reg_lambda,
        grad_clip=args.grad_clip, pgd_steps=args.pgd_steps, widths=args.widths, augment=args.augment,
        seed=args.seed, data_dir=args.data_dir, subset=args.subset, val_size=args.val_size,
        eval_subset=args.eval_subset, eval_pgd_steps=args.eval_pgd_steps, eval_pgd_restarts=args.eval_pgd_restarts,
        device=args.device, threads=torch_threads(args.threads), resume=args.resume, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    """Console script `train`: exit 0 on success, 2 with a one-line message on bad input, 130 on Ctrl-C."""
    return run_main("train", _main, sys.argv[1:] if argv is None else argv,
                    interrupted="continue from the last finished epoch with --resume")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    summary = train(config_from_args(args), command=shlex.join(["train", *argv]))
    if summary is None:  # a process of a torchrun job other than rank 0
        return 0
    print(f"{summary['method']} {summary['model']} {summary['dataset']} eps {summary['eps']:g} on {summary['n']} "
          f"test images: natural {summary['natural']:.2%}, PGD {summary['pgd']:.2%}, "
          f"Box-certified {summary['box']:.2%}; model: {summary['onnx']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
