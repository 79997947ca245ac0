import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from dpmed.data import load_dataset
from dpmed.data import pneumoniamnist as pm
from dpmed.errors import DataError


def test_real_pneumoniamnist_official_split(real_data):
    data = load_dataset("pneumoniamnist", image_size=28, data_root=real_data)
    sizes = {split: len(d) for split, d in data.splits.items()}
    assert sizes == {"train": 4708, "val": 524, "test": 624}
    assert (np.bincount(data.splits["test"].labels) == [234, 390]).all()
    assert data.pixels_per_image == 28 * 28


def test_resized_on_request(real_data):
    data = load_dataset("pneumoniamnist", image_size=40, data_root=real_data, max_images=20)
    assert data.splits["val"].images.shape == (20, 40, 40)


def _fake_npz(path, keys=("train", "val", "test")):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in keys:
        arrays[f"{split}_images"] = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(10) % 2).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def test_npz_without_expected_keys(tmp_path):
    _fake_npz(tmp_path / pm.FILENAME, keys=("train", "test"))
    with pytest.raises(DataError, match="lacks the keys val_images, val_labels"):
        pm.list_pneumoniamnist(tmp_path).splits()


def test_npz_that_is_not_an_npz(tmp_path):
    (tmp_path / pm.FILENAME).write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read .* as an npz"):
        pm.list_pneumoniamnist(tmp_path).splits()


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_md5_then_loads(tmp_path, http_server, monkeypatch):
    served, url = http_server
    source = _fake_npz(served / "pneumoniamnist.npz")
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    monkeypatch.setattr(pm, "URL", f"{url}/pneumoniamnist.npz")
    monkeypatch.setattr(pm, "MD5", md5)
    root = tmp_path / "root"
    splits = pm.list_pneumoniamnist(root).splits()
    assert (root / pm.FILENAME).read_bytes() == source.read_bytes()
    assert len(splits["val"]) == 10


def test_download_with_wrong_md5_keeps_nothing(tmp_path, http_server):
    served, url = http_server
    _fake_npz(served / "pneumoniamnist.npz")
    target = tmp_path / "root" / pm.FILENAME
    with pytest.raises(DataError, match="expected 0+; nothing was saved"):
        pm.download(f"{url}/pneumoniamnist.npz", target, "0" * 32)
    assert not target.exists()
    assert not list(target.parent.iterdir())


def test_download_failure_is_a_clear_error(tmp_path, http_server):
    _, url = http_server
    with pytest.raises(DataError, match="downloading it failed"):
        pm.download(f"{url}/absent.npz", tmp_path / pm.FILENAME, "0" * 32)
