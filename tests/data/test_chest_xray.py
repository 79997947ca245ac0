import numpy as np
import pytest

from dpmed.data import chest_xray as cx
from dpmed.data import load_dataset
from dpmed.errors import DataError


def test_real_kermany_counts_and_patient_grouped_validation(real_data):
    data = load_dataset("chest-xray", image_size=32, data_root=real_data, seed=0)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert len(train) + len(val) == 1341 + 3875
    assert (np.bincount(test.labels) == [234, 390]).all()
    assert train.images.shape[1:] == (32, 32) and train.images.dtype == np.uint8
    assert set(train.patients).isdisjoint(val.patients)
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    assert abs(val.labels.mean() - train.labels.mean()) < 0.05


def test_decoded_once_then_read_from_cache(kermany_root, monkeypatch):
    first = cx.list_chest_xray(kermany_root, 16).splits()

    def fail(*_):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(cx, "read_grey", fail)
    again = cx.list_chest_xray(kermany_root, 16).splits()
    assert np.array_equal(first["train"].images, again["train"].images)
    with pytest.raises(AssertionError, match="cache was not used"):
        cx.list_chest_xray(kermany_root, 20).splits()  # another size is another cache entry


def test_changed_file_invalidates_the_cache(kermany_root):
    before = cx.list_chest_xray(kermany_root, 16).splits()["train"].images
    victim = sorted((kermany_root / "chest_xray/train/NORMAL").iterdir())[0]
    from PIL import Image

    Image.new("L", (40, 40), color=255).save(victim, format="JPEG")
    after = cx.list_chest_xray(kermany_root, 16).splits()["train"].images
    assert not np.array_equal(before, after)
    assert after[0].min() > 240


def test_layout_errors(tmp_path, kermany_root):
    with pytest.raises(DataError, match="no chest_xray/ folder"):
        cx.list_chest_xray(tmp_path, 16).splits()
    (kermany_root / "chest_xray/test/NORMAL").rename(kermany_root / "elsewhere")
    with pytest.raises(DataError, match="missing folder .*test/NORMAL"):
        cx.list_chest_xray(kermany_root, 16).splits()


def test_corrupt_image_is_named(kermany_root):
    bad = kermany_root / "chest_xray/train/PNEUMONIA/person9_virus_99.jpeg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="cannot read image .*person9_virus_99.jpeg"):
        cx.list_chest_xray(kermany_root, 16).splits()
