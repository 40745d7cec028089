from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from featurize import BACKBONES, BackboneError, get_backbone, register
from featurize.backbones import LiteBackbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gives_its_declared_pooled_size(name):
    record = BACKBONES[name]
    torch.manual_seed(0)
    model = record.load("random")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        vectors = model(images)
    assert vectors.shape == (2, record.feature_dim)
    assert torch.isfinite(vectors).all()
    prep = record.preprocessing()
    assert prep.resize_size >= prep.crop_size > 0 and len(prep.mean) == len(prep.std) == 3
    assert record.weights_id("random").startswith("random")
    assert record.weights_id(None) != record.weights_id("random")


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        register(LiteBackbone("efficientnet_lite0", 1280))


def test_unknown_backbone_names_the_valid_ones():
    with pytest.raises(BackboneError) as error:
        get_backbone("resnet5O")
    assert "resnet50" in str(error.value) and "efficientnet_lite0" in str(error.value)


def test_torchvision_weights_offline_fail_clearly(offline_torch_hub):
    record = get_backbone("resnet18")
    where, available = record.pretrained_location()
    assert not available and where.startswith(str(offline_torch_hub))
    with pytest.raises(BackboneError) as error:
        record.load()
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(offline_torch_hub) in message
    assert "--weights PATH" in message and "efficientnet_lite0" in message


def test_torchvision_weights_come_from_a_filled_torch_cache(monkeypatch, tmp_path):
    """The standard mechanism: a file in $TORCH_HOME/hub/checkpoints is used without a network."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    record = get_backbone("resnet18")
    assert record.pretrained_location() == (str(cache / "resnet18-f37072fd.pth"), True)
    trunk = record.load().trunk
    assert torch.equal(trunk.conv1.weight, reference.conv1.weight)
    assert torch.equal(trunk.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_checkpoint_as_state_dict_or_full_module(tmp_path):
    import torchvision

    torch.manual_seed(2)
    full = torchvision.models.resnet18(num_classes=5)  # a fine-tuned net: another head
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "sd.pth")
    torch.save(full, tmp_path / "module.pth")
    record = get_backbone("resnet18")
    for name, trust in (("sd.pth", False), ("module.pth", True)):
        trunk = record.load(str(tmp_path / name), trust_pickle=trust).trunk
        assert torch.equal(trunk.layer3[0].conv1.weight, full.layer3[0].conv1.weight)
    with pytest.raises(BackboneError, match="runs code from the file; refusing.*--trust-pickle"):
        record.load(str(tmp_path / "module.pth"))  # a whole module only with the opt-in
    assert record.weights_id(str(tmp_path / "sd.pth")).startswith("file:")
    with pytest.raises(BackboneError, match="does not fit backbone resnet50"):
        get_backbone("resnet50").load(str(tmp_path / "sd.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="not a readable torch checkpoint"):
        record.load(str(tmp_path / "junk.pth"))
    with pytest.raises(BackboneError, match="no such file"):
        record.weights_id(str(tmp_path / "absent.pth"))


IMAGENET_BEE, IMAGENET_ANT = 309, 310


def _imagenet_top1(model, files, normalize):
    preprocess = T.Compose(
        [T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(), normalize]
    )
    hits = 0
    with torch.inference_mode():
        for start in range(0, len(files), 32):
            chunk = files[start : start + 32]
            batch = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in chunk])
            logits = model._fc(model(batch))  # pooled vector -> the ImageNet classifier of the weights
            target = torch.tensor([IMAGENET_ANT if f.parent.name == "ants" else IMAGENET_BEE for f in chunk])
            hits += int((logits.argmax(1) == target).sum())
    return hits / len(files)


def test_lite0_preprocessing_is_the_one_its_weights_expect(hymenoptera):
    """Hymenoptera's photos are ImageNet's ant and bee classes: the weights' own ImageNet head must
    name them far more often with the registry's normalisation than with ImageNet mean/std."""
    record = get_backbone("efficientnet_lite0")
    prep = record.preprocessing()
    trunk = record.load().trunk
    files = sorted(Path(hymenoptera, "val").glob("*/*.jpg"))
    ours = _imagenet_top1(trunk, files, T.Normalize(prep.mean, prep.std))
    imagenet_stats = _imagenet_top1(trunk, files, T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    assert ours >= 0.80, ours
    assert ours >= imagenet_stats + 0.08, (ours, imagenet_stats)
