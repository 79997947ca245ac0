"""dpmed: benchmark differential privacy on medical data, with honest guarantees.

A small API for notebooks (each call imports what it needs, so `import dpmed` stays fast):

- `experiment(config, out)`: one experiment from a mapping of settings, a YAML file or a
  `RunConfig`; writes the run folder and returns its summary (not called `run`: that
  name is the module `dpmed.run`).
- `guarantee(mechanism, ...)`: the guarantee of an input-noise setting at every unit,
  from a noise scale or calibrated to a target epsilon (`dpmed privacy`).
- `plan_dpsgd(...)`: DP-SGD's noise multiplier for a target epsilon, or the epsilon of a
  noise multiplier, from N, batch size, epochs and delta (`dpmed privacy --mechanism
  dp-sgd`), with the accountant training uses.
- `load_results(folder)`: a sweep's (or run folder's) results as a pandas DataFrame, one
  row per run with the columns of results.csv.

>>> guarantee("laplace", noise_scale=2, image_size=28)["epsilon_per_image"]
392.0
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

__version__ = "0.1.0"
__all__ = ["experiment", "guarantee", "load_results", "plan_dpsgd"]


def experiment(
    config: Any, out: str | Path, *, overwrite: bool = False, quiet: bool = True
) -> dict[str, Any]:
    """Run one experiment and write its run folder at `out`; its summary (best epoch's
    metrics, `privacy`, `timing`). `config`: a mapping of settings (as in a YAML file), the
    path of a YAML file, or a `dpmed.config.RunConfig`. Bad settings raise
    `dpmed.errors.ConfigError`."""
    from dpmed.config import RunConfig, load_yaml
    from dpmed.progress import quiet as quiet_progress
    from dpmed.run import run_experiment

    if isinstance(config, str | Path):
        config = RunConfig.from_mapping(load_yaml(config), source=str(config))
    elif not isinstance(config, RunConfig):
        config = RunConfig.from_mapping(dict(config), source="dpmed.experiment")
    quiet_progress(quiet)
    return run_experiment(
        config, out, overwrite=overwrite, log=(lambda _: None) if quiet else print
    ).summary


def guarantee(
    mechanism: str,
    *,
    image_size: int,
    noise_scale: float = 0.0,
    target_epsilon: float | None = None,
    unit: str = "image",
    delta: float = 0.0,
    images_per_patient: int | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """The guarantee of input noise (`laplace`, `gaussian`, `dppix`, `weighted-laplace`) on
    square images of side `image_size`, from `noise_scale` or calibrated to
    `target_epsilon` per `unit`: epsilon per pixel, image and (with k) patient, the noise
    scale and the assumptions. `settings`: the mechanism's own (cell_size, weight_floor...)."""
    from dpmed.config import RunConfig
    from dpmed.privacy.accounting import account_setting

    config = RunConfig.from_mapping(
        {
            "technique": mechanism,
            "image_size": image_size,
            "noise_scale": noise_scale,
            "target_epsilon": target_epsilon,
            "unit": unit,
            "delta": delta,
            **settings,
        },
        source="dpmed.guarantee",
    )
    report = account_setting(config, images_per_patient=images_per_patient)
    return report.to_dict() | {"image_size": image_size}


def plan_dpsgd(
    *,
    n_train: int,
    batch_size: int,
    epochs: int,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float = 0.0,
    images_per_patient: int | None = None,
) -> dict[str, Any]:
    """DP-SGD planned without training: give `target_epsilon` (get the noise multiplier)
    or `noise_multiplier` (get the epsilon per image); delta 0 means 1/N^1.1. See
    `dpmed.privacy.dpsgd.dpsgd_plan`."""
    from dpmed.privacy.dpsgd import dpsgd_plan

    return dpsgd_plan(
        n_train=n_train,
        batch_size=batch_size,
        epochs=epochs,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        delta=delta,
        images_per_patient=images_per_patient,
    )


def load_results(folder: str | Path) -> pandas.DataFrame:
    """The finished runs of a sweep folder (its results.db) or a run folder (its
    summary.json), a DataFrame with one row per run and the columns `dpmed report` writes
    to results.csv: settings, best epoch, train/val/test metrics (fractions), guarantee
    and timing."""
    import pandas

    from dpmed.report.build import load, result_rows

    return pandas.DataFrame(result_rows(load([Path(folder)]).runs))
