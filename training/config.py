"""Hyper-parameters of a training run, with the SABR paper's recipe for those left unset.

The recipe (Mueller et al., ICLR 2023, main results) trains CNN7 with Adam, lr 5e-4
decayed by 0.2 at two milestones, one natural warm-up epoch and a smooth epsilon
ramp, then the full epsilon. When ``epochs`` differs from the recipe, the
milestones and the ramp length are scaled to it so the schedule keeps its shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from nncert.training.abscert import default_bin_width
from nncert.training.datasets import DATASETS

METHODS = ("std", "pgd", "ibp", "sabr", "mtl-ibp", "abscert")
MODELS = ("fc", "cnn3", "cnn5", "cnn7")
CERTIFIED = ("ibp", "sabr", "mtl-ibp")


class ConfigError(ValueError):
    """An invalid combination of hyper-parameters, reported to the user as one line."""


@dataclass(frozen=True)
class Recipe:
    eps: float
    lam: float
    l1: float
    epochs: int
    batch_size: int
    lr_milestones: tuple[int, ...]
    warmup_epochs: int
    ramp_epochs: int
    mtl_alpha: float  # MTL-IBP's weight of the IBP loss (De Palma et al., ICLR 2024, their CNN7 runs)


RECIPES = {
    "mnist": (Recipe(0.1, 0.4, 1e-5, 70, 256, (50, 60), 1, 20, 1e-2),
              Recipe(0.3, 0.6, 1e-6, 70, 256, (50, 60), 1, 20, 8e-2)),
    "cifar10": (Recipe(2 / 255, 0.1, 1e-6, 160, 128, (120, 140), 1, 80, 4e-3),
                Recipe(8 / 255, 0.7, 0.0, 180, 128, (140, 160), 1, 80, 0.5)),
}


def recipe(dataset: str, eps: float) -> Recipe:
    """The paper's recipe for the epsilon closest to ``eps`` on ``dataset``."""
    return min(RECIPES[dataset], key=lambda r: abs(r.eps - eps))


@dataclass
class TrainConfig:
    """Everything that determines a run; ``None`` fields are filled by :meth:`resolved`."""

    method: str
    dataset: str
    model: str
    eps: float
    out: str
    train_eps: float | None = None  # epsilon trained for (default: eps)
    lam: float | None = None  # SABR: small-box radius tau = lam * eps; 1 is IBP
    mtl_alpha: float | None = None  # MTL-IBP: loss (1 - alpha) L_adv + alpha L_IBP
    bin_width: float | None = None  # AbsCert: bin width eta of the input abstraction (default 2 * train_eps)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 5e-4
    lr_milestones: tuple[int, ...] | None = None
    lr_decay: float = 0.2
    warmup_epochs: int | None = None  # natural training only
    ramp_epochs: int | None = None  # epsilon grows from 0 to train_eps
    l1: float | None = None
    reg_lambda: float = 0.5  # weight of Shi et al.'s warm-up regularisers at eps = 0
    reg_tol: float = 0.5  # their tolerance tau
    grad_clip: float = 10.0
    pgd_steps: int = 8  # attack steps of PGD training and of SABR's region selection
    widths: tuple[int, ...] = (100, 100)  # hidden layers of the fc model
    augment: bool | None = None  # random crop and flip (default: on for cifar10)
    seed: int = 0
    data_dir: str | None = None
    subset: int | None = None  # train on the first N training images
    val_size: int = 500  # test images evaluated after every epoch
    eval_subset: int | None = 1000  # test images of the final summary (None: all)
    eval_pgd_steps: int = 40
    eval_pgd_restarts: int = 1
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    resume: bool = False
    progress: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with the recipe's defaults filled in, validated."""
        self._check_names()
        r = recipe(self.dataset, self.eps)
        epochs = self.epochs if self.epochs is not None else r.epochs

        def scaled(epoch: int) -> int:
            return round(epoch * epochs / r.epochs)

        config = replace(
            self,
            train_eps=self.eps if self.train_eps is None else self.train_eps,
            lam=r.lam if self.lam is None else self.lam,
            mtl_alpha=self._mtl_alpha(r),
            bin_width=self._bin_width(),
            epochs=epochs,
            batch_size=r.batch_size if self.batch_size is None else self.batch_size,
            lr_milestones=tuple(self.lr_milestones if self.lr_milestones is not None
                                else (scaled(m) for m in r.lr_milestones)),
            warmup_epochs=min(r.warmup_epochs, epochs - 1) if self.warmup_epochs is None else self.warmup_epochs,
            ramp_epochs=scaled(r.ramp_epochs) if self.ramp_epochs is None else self.ramp_epochs,
            l1=r.l1 if self.l1 is None else self.l1,
            widths=tuple(self.widths),
            augment=self.dataset == "cifar10" if self.augment is None else self.augment,
        )
        config._check_values()
        return config

    def _bin_width(self) -> float | None:
        """AbsCert's eta: as given, else the paper's 2 * train_eps; None for the other methods."""
        if self.method != "abscert" or self.bin_width is not None:
            return self.bin_width
        return default_bin_width(self.eps if self.train_eps is None else self.train_eps)

    def _mtl_alpha(self, r: Recipe) -> float | None:
        """MTL-IBP's alpha: as given, else the paper's value for the recipe; None for the other methods."""
        if self.method != "mtl-ibp" or self.mtl_alpha is not None:
            return self.mtl_alpha
        return r.mtl_alpha

    def _check_names(self) -> None:
        for name, value, choices in (("method", self.method, METHODS), ("dataset", self.dataset, DATASETS),
                                     ("model", self.model, MODELS)):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")

    def _check_values(self) -> None:
        checks = [
            (self.eps >= 0 and self.train_eps >= 0, "eps must be non-negative"),
            (self.eps <= 1 and self.train_eps <= 1, "eps must not exceed the input range [0, 1]"),
            (self.method not in CERTIFIED or self.train_eps > 0, f"--method {self.method} needs a positive eps"),
            (0 < self.lam <= 1, "--lambda must be in (0, 1]"),
            (self.method == "abscert" or self.bin_width is None, "--bin-width applies to --method abscert only"),
            (self.method == "mtl-ibp" or self.mtl_alpha is None, "--mtl-alpha applies to --method mtl-ibp only"),
            (self.mtl_alpha is None or 0 <= self.mtl_alpha <= 1, "--mtl-alpha must be in [0, 1]"),
            (self.method != "abscert" or self.bin_width > 0, "--method abscert needs a positive --bin-width or eps"),
            (self.method != "abscert" or self.bin_width >= 2 * self.train_eps,
             "--bin-width must be >= 2 * eps (AbsCert's setting: an eps-ball meets at most two bins per pixel)"),
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 2, "--batch-size must be >= 2 (BatchNorm needs batch statistics)"),
            (self.lr > 0, "--lr must be positive"),
            (self.warmup_epochs >= 0 and self.ramp_epochs >= 0, "--warmup-epochs and --ramp-epochs must be >= 0"),
            (self.l1 >= 0, "--l1 must be non-negative"),
            (self.pgd_steps >= 1 and self.eval_pgd_steps >= 1, "PGD needs at least one step"),
            (all(w >= 1 for w in self.widths) and len(self.widths) >= 1, "--widths must be positive integers"),
            (self.subset is None or self.subset >= 2, "--subset must be >= 2"),
            (self.eval_subset is None or self.eval_subset >= 1, "--eval-subset must be >= 1"),
            (self.val_size >= 1, "--val-size must be >= 1"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_json(self) -> dict:
        """Plain JSON types (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


# fields that may change between a run and its --resume without changing the result
RESUMABLE_CHANGES = frozenset({"epochs", "resume", "device", "threads", "data_dir", "out", "progress"})


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Raise ConfigError when ``config`` differs from the run's saved config beyond RESUMABLE_CHANGES."""
    current = config.to_json()
    differ = [f.name for f in fields(config)
              if f.name not in RESUMABLE_CHANGES and saved.get(f.name) != current[f.name]]
    if differ:
        raise ConfigError(f"--resume: the settings {', '.join(differ)} differ from the run's config.json "
                          "(pass the original values)")
