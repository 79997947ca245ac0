import pytest

from dpmed.errors import ConfigError
from dpmed.privacy.guarantee import PrivacyGuarantee, Unit


@pytest.mark.parametrize(
    ("text", "changed"), [("pixel", 1), ("16-pixels", 16), ("1-pixel", 1), ("image", 784)]
)
def test_units_count_changed_pixels(text, changed):
    assert Unit.parse(text).changed_pixels(784) == changed


def test_patient_unit_covers_k_images():
    patient = Unit.parse("patient").with_images(3)
    assert patient.changed_pixels(784) == 3 * 784 and str(patient) == "patient (3 images)"
    assert str(Unit.parse("Image")) == "image" and str(Unit.parse("16-pixels")) == "16-pixels"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("m-pixels", r"unknown unit 'm-pixels' \(give m, e.g. 16-pixels\)"),
        ("record", "unknown unit 'record'; choose one of: pixel, <m>-pixels, image, patient"),
        ("0-pixels", "needs m >= 1"),
        ("voxel", "unknown unit 'voxel'"),
    ],
)
def test_unknown_units_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        Unit.parse(text)


def test_describe_and_to_dict():
    g = PrivacyGuarantee("gaussian", "image", 8.0, 1e-5, "formula", ("a",))
    assert g.describe() == "epsilon = 8 per image, delta = 1e-05 (gaussian)"
    assert g.to_dict()["assumptions"] == ["a"]
