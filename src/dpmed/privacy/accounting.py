"""A noise setting's guarantee at every unit, calibrated either way.

`account` is the one place that turns (mechanism, noise scale or target epsilon, unit,
delta, image size, images per patient) into the guarantees a result stores: `dpmed run`
and `dpmed privacy` both call it.

>>> from dpmed.privacy.laplace import Laplace
>>> report = account(Laplace(), noise_scale=2.0, pixels_per_image=28 * 28)
>>> report.epsilon("pixel"), report.epsilon("image"), report.epsilon("patient")
(0.5, 392.0, None)
>>> account(Laplace(), noise_scale=2.0, pixels_per_image=784, images_per_patient=3).epsilon(
...     "patient")
1176.0
>>> account(Laplace(), target_epsilon=8.0, pixels_per_image=784).noise_scale
98.0
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpmed.errors import ConfigError
from dpmed.privacy.guarantee import NO_PRIVACY, PrivacyGuarantee, Unit
from dpmed.privacy.mechanism import InputMechanism

if TYPE_CHECKING:
    from dpmed.config import RunConfig

IMAGE = Unit("image")
NO_PATIENTS = (
    "unknown: the images have no patient ids, and one patient may have several images; "
    "give the most images of one patient (k) to get it"
)


@dataclass(frozen=True)
class Accounting:
    """The guarantees of one noise setting; `headline` is the one at the asked-for unit."""

    mechanism: InputMechanism | None
    noise_scale: float
    target_epsilon: float | None
    images_per_patient: int | None  # None: unknown (no patient ids), so is the patient unit
    headline: PrivacyGuarantee
    by_unit: dict[str, PrivacyGuarantee]

    def epsilon(self, unit: str) -> float | None:
        """Epsilon per `unit`; None without noise or, for the patient, when k is unknown."""
        return self.by_unit[unit].epsilon if unit in self.by_unit else None

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on one released pixel (0 without noise)."""
        return self.mechanism.noise_std(self.noise_scale) if self.mechanism else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The `privacy` entry of summary.json (without the release's hashes)."""
        return {
            "mechanism": self.headline.mechanism,
            "noise_scale": self.noise_scale,
            "noise_std": self.noise_std,
            "target_epsilon": self.target_epsilon,
            "unit": self.headline.unit,
            "adjacency": self.headline.adjacency,
            "epsilon": self.headline.epsilon,
            "delta": self.headline.delta,
            **{f"epsilon_per_{u}": self.epsilon(u) for u in ("pixel", "image", "patient")},
            "images_per_patient": self.images_per_patient,
            **({} if "patient" in self.by_unit else {"epsilon_per_patient_unknown": NO_PATIENTS}),
            "accounting": self.headline.accounting,
            "assumptions": list(self.headline.assumptions),
            "description": self.describe(),
        }

    def describe(self) -> str:
        if self.headline.epsilon is None:
            return self.headline.describe()
        others = ", ".join(
            f"{self.epsilon(u):,.4g} per {u}"
            for u in ("pixel", "image", "patient")
            if u in self.by_unit and self.by_unit[u].unit != self.headline.unit
        )
        if "patient" not in self.by_unit:
            others += ", unknown per patient"
        return f"{self.headline.describe()} (epsilon = {others})"


def account(
    mechanism: InputMechanism | None,
    *,
    pixels_per_image: int,
    noise_scale: float = 0.0,
    target_epsilon: float | None = None,
    unit: Unit = IMAGE,
    delta: float = 0.0,
    images_per_patient: int | None = None,
    assumptions: tuple[str, ...] = (),
) -> Accounting:
    """Calibrate (from `noise_scale`, or to `target_epsilon` per `unit`) and account.

    The patient unit covers `images_per_patient` (k) images; when k is unknown (None: no
    patient ids) there is no patient guarantee, never the per-image one in its place.
    `assumptions` are added to every guarantee (e.g. how k was found).
    """
    if target_epsilon is not None and noise_scale:
        raise ConfigError("set noise_scale or target_epsilon, not both")
    units = {"pixel": Unit("pixel"), "image": Unit("image")}
    if images_per_patient is not None:
        units["patient"] = Unit("patient", images=images_per_patient)
    elif unit.name == "patient":
        raise ConfigError(
            "the patient unit needs k, the most images of one patient, which is unknown here "
            "(no patient ids): choose another --unit, or give --images-per-patient k to "
            "dpmed privacy"
        )
    key = str(unit) if unit.name == "m-pixels" else unit.name
    unit = units.setdefault(key, unit)
    if mechanism is None:
        if target_epsilon is not None:
            raise ConfigError("target_epsilon needs a technique that adds noise")
        by_unit = {key: dataclasses.replace(NO_PRIVACY, unit=str(u)) for key, u in units.items()}
    else:
        if target_epsilon is not None:
            noise_scale = mechanism.calibrate(
                target_epsilon, unit, pixels_per_image=pixels_per_image, delta=delta
            )
        by_unit = {
            key: mechanism.guarantee(noise_scale, u, pixels_per_image=pixels_per_image, delta=delta)
            for key, u in units.items()
        }
    by_unit = {
        key: dataclasses.replace(g, assumptions=g.assumptions + assumptions)
        for key, g in by_unit.items()
    }
    return Accounting(
        mechanism=mechanism,
        noise_scale=noise_scale,
        target_epsilon=target_epsilon,
        images_per_patient=images_per_patient,
        headline=by_unit[key],
        by_unit=by_unit,
    )


def account_setting(config: RunConfig, *, images_per_patient: int | None = None) -> Accounting:
    """The guarantee of `config`'s input-noise setting on square images of its image size,
    planned without data (`dpmed privacy`, `dpmed.guarantee`)."""
    size = config.resolved_image_size
    return account(
        config.input_mechanism(),
        pixels_per_image=size * size,
        noise_scale=config.noise_scale,
        target_epsilon=config.target_epsilon,
        unit=Unit.parse(config.resolved_unit),
        delta=config.delta,
        images_per_patient=images_per_patient,
    )
