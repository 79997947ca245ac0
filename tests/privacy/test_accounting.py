import pytest

from dpmed.errors import ConfigError
from dpmed.privacy import DPPix, Gaussian, Laplace, Unit
from dpmed.privacy.accounting import account


def test_laplace_scale_to_every_unit_and_back():
    report = account(Laplace(), noise_scale=2.0, pixels_per_image=784, images_per_patient=3)
    assert report.epsilon("pixel") == 0.5 and report.epsilon("image") == 392.0
    assert report.epsilon("patient") == 3 * 392.0  # group privacy: k x epsilon (pure DP)
    assert report.headline.unit == "image" and report.noise_std == pytest.approx(2 * 2**0.5)
    back = account(Laplace(), target_epsilon=392.0, pixels_per_image=784)
    assert back.noise_scale == 2.0 and back.to_dict()["target_epsilon"] == 392.0


def test_target_at_patient_and_m_pixels_units():
    report = account(
        Gaussian(),
        target_epsilon=8.0,
        unit=Unit("patient"),
        delta=1e-5,
        pixels_per_image=784,
        images_per_patient=3,
    )
    assert report.epsilon("patient") == pytest.approx(8.0)
    assert report.headline.unit == "patient (3 images)" and report.epsilon("image") < 8.0
    assert list(report.by_unit) == ["pixel", "image", "patient"]
    pix = account(DPPix(4), noise_scale=0.5, unit=Unit.parse("16-pixels"), pixels_per_image=784)
    assert pix.headline.epsilon == 2.0 and pix.to_dict()["epsilon_per_image"] == 98.0
    assert "2 per 16-pixels" in pix.describe() and "98 per image" in pix.describe()


def test_no_noise_and_bad_combinations():
    none = account(None, pixels_per_image=784)
    assert none.epsilon("image") is None and none.noise_std == 0.0
    assert "infinite" in none.describe()
    with pytest.raises(ConfigError, match="not both"):
        account(Laplace(), noise_scale=1.0, target_epsilon=1.0, pixels_per_image=784)
    with pytest.raises(ConfigError, match="needs a technique"):
        account(None, target_epsilon=1.0, pixels_per_image=784)
    extra = account(Laplace(), noise_scale=1.0, pixels_per_image=4, assumptions=("k = 1",))
    assert extra.headline.assumptions[-1] == "k = 1"
