import pytest
import torch
from torchvision.models import resnet18

from dpmed.errors import DataError
from dpmed.models import build_model


@pytest.mark.parametrize("name", ["resnet18", "resnet18-gn", "small-cnn"])
@pytest.mark.parametrize("size", [28, 64])
def test_models_take_one_channel_and_give_two_logits(name, size):
    model, note = build_model(name)
    assert "random init" in note
    assert model(torch.rand(3, 1, size, size)).shape == (3, 2)


def test_torchvision_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = resnet18()  # an RGB, 1000-class ImageNet-shaped model
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    model, note = build_model("resnet18", weights=str(path))
    assert str(path) in note and "kept fresh: fc" in note
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.allclose(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    grey = torch.rand(2, 1, 64, 64)
    features = torch.nn.Sequential(*list(model.children())[:-1])
    source_features = torch.nn.Sequential(*list(source.children())[:-1])
    source.eval(), model.eval()
    assert torch.allclose(features(grey), source_features(grey.expand(-1, 3, -1, -1)), atol=1e-5)


def test_bad_weights_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_model("resnet18", weights=str(tmp_path / "absent.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot load weights"):
        build_model("resnet18", weights=str(junk))
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(1)}, other)
    with pytest.raises(DataError, match="not a torchvision ResNet-18"):
        build_model("resnet18", weights=str(other))
