"""Typed run configuration: defaults < YAML file < command-line flags.

>>> cfg = RunConfig.from_mapping({"technique": "laplace", "noise_scale": 2})
>>> cfg.noise_scale, cfg.resolved_image_size
(2.0, 64)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpmed.data.tabular import TABLES
from dpmed.errors import ConfigError
from dpmed.files import read_text
from dpmed.models.tabular import CLASSIFIERS, TABLE_MODELS
from dpmed.models.vision import SCATTERNETS
from dpmed.privacy import MECHANISMS, InputMechanism, Unit, build_mechanism
from dpmed.privacy.postprocess import parse_postprocess, postprocessed_size
from dpmed.train.metrics import THRESHOLDS

IMAGE_DATASETS = {"chest-xray": 64, "pneumoniamnist": 28}  # name -> default image size
DATASETS = (*IMAGE_DATASETS, *TABLES)
TABLE_TECHNIQUES = ("none", "laplace", "adaptive-laplace", "diffprivlib", "dp-sgd")
TECHNIQUES = ("none", *MECHANISMS, "adaptive-laplace", "diffprivlib", "dp-sgd")
IMAGE_MODELS = ("resnet18", "resnet18-gn", "small-cnn", *SCATTERNETS)
MODELS = (*IMAGE_MODELS, *TABLE_MODELS)
# the smallest input side a model takes: the small CNN halves it 4 times, ScatterNet 2^J
SMALLEST_INPUT = {"small-cnn": 16} | dict.fromkeys(SCATTERNETS, 4)
OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
# DP-SGD's accountant: dp-accounting's PLD under replace-one (Opacus's prv and rdp bound
# add/remove adjacency and are refused; dpmed.privacy.dpsgd_accounting)
ACCOUNTANTS = ("pld",)
# How DP-SGD gets per-image gradient norms (Opacus): auto picks per model, from the table below.
GRAD_SAMPLE_MODES = ("auto", "hooks", "functorch", "ew", "ghost", "bk")
# Per model, the fastest grad_sample_mode on CPU as measured by benchmarks/dpsgd_speed.py
# (results/dpsgd_speed.json), and the fastest with per-image gradients, which the adaptive
# variants need; a model not listed uses hooks.
FASTEST_MODES_MEASURED_BY_DPSGD_SPEED = {
    "small-cnn": ("bk", "ew"),
    "resnet18-gn": ("bk", "ew"),
    "scatternet": ("bk", "ew"),
    "scatternet-cnn": ("bk", "ew"),
}
CLIPPINGS = ("flat", "adaptive")  # DP-SGD's clip bound: fixed, or toward a quantile
NOISE_ALLOCATIONS = ("equal", "entropy")  # DP-SGD's per-layer noise shares


@dataclass(frozen=True)
class RunConfig:
    """One experiment: a dataset, a privacy technique, a model and how to train it."""

    dataset: str = "chest-xray"
    technique: str = "none"
    noise_scale: float = 0.0
    target_epsilon: float | None = None
    unit: str | None = None
    delta: float = 0.0
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    physical_batch_size: int | None = None
    grad_sample_mode: str = "auto"
    clipping: str = "flat"
    target_unclipped_quantile: float | None = None
    noise_allocation: str | None = None
    cell_size: int | None = None
    snapping: bool = False
    weight_floor: float | None = None
    clip_after_release: bool = False
    postprocess: str | None = None
    perturb_test: bool = True
    model: str = "resnet18"
    weights: str | None = None
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    augment: bool = False
    augment_multiplicity: int = 1
    balanced_loss: bool = False
    ema_decay: float | None = None
    threshold: str = "fixed"
    val_fraction: float = 0.1
    max_images: int | None = None
    seed: int = 0
    data_root: str | None = None
    device: str = "auto"
    table: str | None = None
    schema: str | None = None
    strict: bool = False
    importance_share: float = 0.2
    # a membership-audit run (dpmed audit): each training image is a member with
    # probability 1/2, drawn from this public seed; `canaries` of them have flipped labels
    audit_seed: int | None = None
    canaries: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = _coerce(field.name, getattr(self, field.name), _HINTS[field.name])
            object.__setattr__(self, field.name, value)
        self._check_ranges()

    @property
    def is_table(self) -> bool:
        return self.dataset in TABLES

    @property
    def resolved_image_size(self) -> int | None:
        return None if self.is_table else self.image_size or IMAGE_DATASETS[self.dataset]

    @property
    def input_size(self) -> int | None:
        """The image side the model sees: the release's, after post-processing (down<k>)."""
        if self.is_table:
            return None
        return postprocessed_size(parse_postprocess(self.postprocess), self.resolved_image_size)

    @property
    def planned_epochs(self) -> int:
        """Epochs the run will report: a table classifier is fitted once."""
        return 1 if self.is_table and self.model in CLASSIFIERS else self.epochs

    @property
    def resolved_grad_sample_mode(self) -> str:
        """`grad_sample_mode`, or for auto the model's fastest measured mode that fits the
        settings (ghost has no per-image gradients, which the adaptive variants and
        augmentation multiplicity need)."""
        if self.grad_sample_mode != "auto":
            return self.grad_sample_mode
        fastest, per_image = FASTEST_MODES_MEASURED_BY_DPSGD_SPEED.get(self.model, ("hooks",) * 2)
        return per_image if self._needs_per_image_gradients else fastest

    @property
    def _needs_per_image_gradients(self) -> bool:
        adaptive = self.clipping == "adaptive" or self.noise_allocation is not None
        return adaptive or self.augment_multiplicity > 1

    @property
    def resolved_unit(self) -> str:
        """What one protected record is: `unit`, else a table row or an image."""
        return self.unit or ("record" if self.is_table else "image")

    def input_mechanism(self) -> InputMechanism | None:
        """The technique's image noise mechanism with its settings; None when there is none."""
        if self.is_table or self.technique in ("none", "dp-sgd"):
            return None
        return build_mechanism(
            self.technique, self.to_dict() | {"image_size": self.resolved_image_size}
        )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, source: str = "config") -> RunConfig:
        unknown = sorted(set(values) - set(_HINTS))
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]!r} in {source}; known settings: {', '.join(_HINTS)}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _check_ranges(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        _choice("technique", self.technique, TECHNIQUES)
        _choice("model", self.model, MODELS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("threshold", self.threshold, THRESHOLDS)
        _choice("device", self.device, DEVICES)
        if self.noise_scale < 0:
            raise ConfigError(
                f"noise_scale must be >= 0 (0 means no noise), got {self.noise_scale}"
            )
        if self.technique == "none" and (self.noise_scale > 0 or self.target_epsilon is not None):
            raise ConfigError(
                "noise_scale or target_epsilon is set but technique is 'none'; "
                f"use --technique {' or '.join(MECHANISMS)}"
            )
        if self.target_epsilon is not None and self.noise_scale > 0:
            raise ConfigError("set noise_scale or target_epsilon, not both")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ConfigError(f"target_epsilon must be > 0, got {self.target_epsilon:g}")
        adaptive = self.target_unclipped_quantile is not None or self.noise_allocation
        if self.technique != "dp-sgd" and (self.clipping != "flat" or adaptive):
            raise ConfigError(
                "clipping, target_unclipped_quantile and noise_allocation are for dp-sgd"
            )
        if self.is_table:
            self._check_table()
        else:
            self._check_images()
        for name in ("image_size", "max_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in (0, 1), e.g. 0.999, got {self.ema_decay:g}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.weights is not None and self.model != "resnet18":
            raise ConfigError("weights are only supported for model 'resnet18'")
        if self.model in SCATTERNETS:
            self._check_scatternet()
        self._check_multiplicity()
        self._check_audit()

    def _check_audit(self) -> None:
        if self.audit_seed is not None and self.is_table:
            raise ConfigError(f"audit_seed is for image data sets, not the table {self.dataset}")
        if self.audit_seed is not None and self.audit_seed < 0:
            raise ConfigError(f"audit_seed must be >= 0, got {self.audit_seed}")
        if self.canaries < 0:
            raise ConfigError(f"canaries must be >= 0 (0 = none), got {self.canaries}")
        if self.canaries and self.audit_seed is None:
            raise ConfigError("canaries are inserted by an audit run: set audit_seed too")

    def _check_multiplicity(self) -> None:
        """K augmented copies per image (De et al. 2022): K >= 1, and differing copies."""
        k = self.augment_multiplicity
        if k < 1:
            raise ConfigError(f"augment_multiplicity must be >= 1 (1 = one copy), got {k}")
        if k > 1 and not self.augment:
            raise ConfigError(
                f"augment_multiplicity {k} needs augmentation, else the copies are identical; "
                "add --augment"
            )

    def _check_scatternet(self) -> None:
        """ScatterNet's features are computed once per image: nothing to augment per epoch."""
        if self.augment or self.augment_multiplicity != 1:
            raise ConfigError(
                f"augment cannot be used with model {self.model}: its fixed features are computed "
                "once per image before training; drop --augment (and --augment-multiplicity) "
                "or choose another model"
            )

    def _check_images(self) -> None:
        _choice("model", self.model, IMAGE_MODELS)
        if self.technique in ("adaptive-laplace", "diffprivlib"):
            raise ConfigError(f"technique {self.technique} is for tables (breast-cancer, csv)")
        for name in ("table", "schema"):
            if getattr(self, name) is not None:
                raise ConfigError(f"{name} is for dataset csv, not {self.dataset}")
        unit, size = Unit.parse(self.resolved_unit), self.resolved_image_size
        if unit.pixels > size * size:
            raise ConfigError(
                f"unit {unit} is more pixels than an image has ({size}x{size} = {size * size:,}); "
                "use --unit image, or m at most the pixel count"
            )
        if self.technique == "dp-sgd":
            self._check_dpsgd()
        else:
            self._check_mechanism()
        smallest = SMALLEST_INPUT.get(self.model, 1)
        if self.input_size < smallest:
            raise ConfigError(
                f"model {self.model} needs images of at least {smallest}x{smallest}, got "
                f"{self.input_size} px (after image_size and postprocess); use larger images "
                "or a smaller down<k>"
            )

    def _check_table(self) -> None:
        """Tables protect records (one patient's row): epsilon per record, tabular models."""
        _choice("technique", self.technique, TABLE_TECHNIQUES)
        _choice("model", self.model, TABLE_MODELS)
        if self.resolved_unit != "record":
            raise ConfigError(f"a table protects records: --unit must be record, not {self.unit}")
        image_only = (
            "noise_scale",
            "cell_size",
            "image_size",
            "weights",
            "postprocess",
            "max_images",
            "weight_floor",
        )
        for name in image_only:
            if getattr(self, name) not in (None, 0, 0.0):
                raise ConfigError(f"{name} is for images, not the table {self.dataset}")
        if self.snapping or self.augment:
            raise ConfigError("snapping and augment are for images, not tables")
        if self.augment_multiplicity != 1:
            raise ConfigError(f"augment_multiplicity is for images, not the table {self.dataset}")
        if self.dataset == "csv" and not (self.table and self.schema):
            raise ConfigError("dataset csv needs --table FILE.csv and --schema FILE.yaml")
        if self.dataset != "csv" and (self.table or self.schema):
            raise ConfigError(f"table and schema are for dataset csv; {self.dataset} is built in")
        if not 0 < self.importance_share < 1:
            raise ConfigError(f"importance_share must lie in (0, 1), got {self.importance_share:g}")
        noisy = self.technique not in ("none", "dp-sgd")
        if noisy and self.target_epsilon is None:
            raise ConfigError(f"technique {self.technique} needs --target-epsilon (per record)")
        if self.technique == "diffprivlib" and self.model not in CLASSIFIERS:
            raise ConfigError(
                f"technique diffprivlib trains {', '.join(CLASSIFIERS)}, not {self.model}"
            )
        if self.technique == "dp-sgd" and self.model != "mlp":
            raise ConfigError(f"on tables, dp-sgd trains the mlp, not {self.model}")
        if self.technique == "dp-sgd":
            self._check_dpsgd()
        elif self.delta != 0:
            raise ConfigError(
                f"technique {self.technique} on tables is pure epsilon-DP: delta must be 0"
            )

    def _check_mechanism(self) -> None:
        if self.cell_size is not None and self.technique != "dppix":
            raise ConfigError("cell_size is only for technique dppix")
        if self.technique == "dppix" and self.cell_size is None:
            raise ConfigError("technique dppix needs cell_size, the side of its square cells")
        if self.snapping and self.technique != "laplace":
            raise ConfigError("snapping is only for technique laplace")
        if self.weight_floor is not None and self.technique != "weighted-laplace":
            raise ConfigError("weight_floor is only for technique weighted-laplace")
        mechanism = self.input_mechanism()
        if mechanism is None:
            if self.delta != 0:
                raise ConfigError("delta is set but technique is 'none'")
            return
        mechanism.check(delta=self.delta, image_size=self.resolved_image_size)

    def _check_dpsgd(self) -> None:
        """DP-SGD settings: a target epsilon per image or a noise multiplier, not both."""
        if self.accountant in ("prv", "rdp"):
            raise ConfigError(
                f"accountant {self.accountant} bounds add/remove adjacency; dpmed states every "
                "guarantee under replace-one: use accountant pld (the default)"
            )
        _choice("accountant", self.accountant, ACCOUNTANTS)
        _choice("grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError("technique dp-sgd needs --target-epsilon or --noise-multiplier, one")
        if self.noise_scale > 0 or self.cell_size is not None or self.snapping:
            raise ConfigError("noise_scale, cell_size and snapping are for input noise, not dp-sgd")
        if self.weight_floor is not None:
            raise ConfigError("weight_floor is for input noise (weighted-laplace), not dp-sgd")
        if self.resolved_unit not in ("image", "record"):
            raise ConfigError(
                "dp-sgd protects training images: --unit must be image "
                "(the patient-level guarantee is reported by group privacy)"
            )
        if self.noise_multiplier is not None and self.noise_multiplier <= 0:
            raise ConfigError(f"noise_multiplier must be > 0, got {self.noise_multiplier:g}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm:g}")
        if not 0 <= self.delta < 1:
            raise ConfigError(f"delta must lie in [0, 1) (0 = 1/N^1.1), got {self.delta:g}")
        if self.physical_batch_size is not None and self.physical_batch_size < 1:
            raise ConfigError("physical_batch_size must be a positive integer")
        self._check_adaptive()

    def _check_adaptive(self) -> None:
        """Adaptive clipping (target quantile in (0, 1)) or a noise allocation, not both."""
        _choice("clipping", self.clipping, CLIPPINGS)
        if self.noise_allocation is not None:
            _choice("noise_allocation", self.noise_allocation, NOISE_ALLOCATIONS)
        if self.clipping == "adaptive" and self.noise_allocation is not None:
            raise ConfigError(
                "noise_allocation clips per layer: use it with clipping flat, not adaptive"
            )
        if self.grad_sample_mode in ("ghost", "bk") and self._needs_per_image_gradients:
            raise ConfigError(
                f"grad_sample_mode {self.grad_sample_mode} has no per-image gradients, which "
                "clipping adaptive, "
                "noise_allocation and augment_multiplicity > 1 need; use grad_sample_mode "
                "auto or hooks"
            )
        quantile = self.target_unclipped_quantile
        if quantile is not None and self.clipping != "adaptive":
            raise ConfigError("target_unclipped_quantile is for clipping adaptive")
        if quantile is not None and not 0 < quantile < 1:
            raise ConfigError(f"target_unclipped_quantile must lie in (0, 1), got {quantile:g}")


_HINTS = typing.get_type_hints(RunConfig)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings; every failure is a ConfigError."""
    path = Path(path)
    try:
        values = yaml.safe_load(read_text(path, "config file"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings, not a list or value"
        )
    return values


def _choice(name: str, value: str, allowed: typing.Iterable[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type; ints are accepted where floats are expected."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN passes every range check: refuse it here
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
    wanted = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"{name} must be {wanted}, got {value!r}")
