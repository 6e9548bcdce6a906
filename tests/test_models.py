"""Architectures build and train, train modes update exactly what they name, weights load offline or say why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from caltech_core.config import ARCHITECTURES, TRAIN_MODES
from caltech_core.nets import models
from caltech_core.nets.architectures import ARCH_LABELS, HubWeights, UnknownArchitectureError, get_spec


def _real_batch(mini_root: Path, size: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """n real images (two per class), resized to size x size, normalised to [-1, 1]."""
    images, labels = [], []
    folders = sorted(p for p in (mini_root / "101_ObjectCategories").iterdir() if p.name != "BACKGROUND_Google")
    for label, folder in enumerate(folders[:3]):
        for f in sorted(folder.iterdir())[: n // 3]:
            img = Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1)
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """One SGD step (no weight decay or momentum: only parameters with gradients can move)."""
    model.train()
    models.set_train_mode_eval(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_and_takes_a_training_step(arch: str, mini_root: Path) -> None:
    torch.manual_seed(0)
    model = models.build_model(arch, 3)
    assert models.output_layer(model, arch).out_features == 3
    size = 64 if arch == "alexnet" else 32  # AlexNet's pooling needs at least ~63 pixels
    x, y = _real_batch(mini_root, size, n=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = _step(model, x, y)
    assert np.isfinite(loss)
    with torch.no_grad():
        assert model.eval()(x).shape == (3, 3)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > len(before) // 2


def _expected_trainable(arch: str, mode: str, names: list[str]) -> set[str]:
    classifier = {"resnet18": "fc.", "resnet50": "fc."}.get(arch, "classifier.")
    head = {"alexnet": "classifier.6.", "vgg16": "classifier.6.", "mobilenet_v3_small": "classifier.3."}.get(
        arch, classifier)
    if mode == "all":
        return set(names)
    if mode == "fc":
        return {n for n in names if n.startswith(classifier)}
    if mode == "conv":
        return {n for n in names if not n.startswith(classifier)}
    return {n for n in names if not n.startswith(classifier) or n.startswith(head)}


@pytest.mark.parametrize("mode", TRAIN_MODES)
@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "mobilenet_v3_small", "efficientnet_lite0"])
def test_train_mode_updates_exactly_the_named_parameters(arch: str, mode: str, mini_root: Path) -> None:
    torch.manual_seed(1)
    model = models.build_model(arch, 3)
    trainable = models.apply_train_mode(model, arch, mode)
    names = [n for n, _ in model.named_parameters()]
    assert set(trainable) == _expected_trainable(arch, mode, names)
    assert 0 < len(trainable) <= len(names)

    x, y = _real_batch(mini_root, 64 if arch == "alexnet" else 40)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers_before = {n: b.detach().clone() for n, b in model.named_buffers()}
    _step(model, x, y)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, params_before[n])}
    assert changed == set(trainable)

    # BatchNorm layers with frozen parameters keep their running statistics; trained ones update them.
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            frozen = not module.weight.requires_grad
            same = torch.equal(module.running_mean, buffers_before[f"{name}.running_mean"])
            assert same == frozen, f"{name}: frozen={frozen} but running stats same={same}"


def test_conv_mode_keeps_alexnet_classifier_at_random_init(mini_root: Path) -> None:
    torch.manual_seed(2)
    model = models.build_model("alexnet", 3)
    models.apply_train_mode(model, "alexnet", "conv")
    head = model.classifier[6].weight.detach().clone()
    _step(model, *_real_batch(mini_root, 64))
    assert torch.equal(model.classifier[6].weight, head)


def test_mobilenet_batchnorm_follows_a_short_run(tmp_path: Path) -> None:
    # torchvision's momentum 0.01 would leave a short run's running statistics mostly at their initial values.
    source = models.build_model("mobilenet_v3_small", 1000)
    torch.save(source.state_dict(), tmp_path / "mnv3.pth")
    fine_tuned = models.build_model("mobilenet_v3_small", 3, pretrained=True, weights_path=tmp_path / "mnv3.pth")
    for model in (models.build_model("mobilenet_v3_small", 3), fine_tuned):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and {(m.momentum, m.eps) for m in norms} == {(0.1, 0.001)}
    assert torch.equal(fine_tuned.features[0][0].weight, source.features[0][0].weight)


def test_unknown_mode_and_arch_are_rejected() -> None:
    model = models.build_model("resnet18", 3)
    with pytest.raises(ValueError, match="unknown train mode 'head'"):
        models.apply_train_mode(model, "resnet18", "head")
    with pytest.raises(ValueError, match="unknown architecture 'lenet'"):
        models.build_model("lenet", 3)


@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "mobilenet_v3_small", "efficientnet_lite0",
                                  "efficientnet_lite2"])
def test_backbone_and_head_compose_to_the_model(arch: str) -> None:
    torch.manual_seed(3)
    model = models.build_model(arch, 3).eval()
    backbone, head = models.split_for_features(model, arch)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(head.eval()(backbone(x)), model(x))
    head_params = {id(p) for p in head.parameters()}
    assert head_params == {id(p) for p in models._classifier(model, arch).parameters()}


def test_missing_pretrained_weights_name_file_folder_and_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    status = models.weights_status("alexnet")
    assert not status.available and status.path is None
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.build_model("alexnet", 3, pretrained=True)
    message = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(folder) in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert not folder.exists(), "nothing may be downloaded"

    # Put a (here: random) file of that name in that folder: it is found and loaded, offline.
    torch.manual_seed(4)
    source = models.build_model("alexnet", 1000)
    folder.mkdir(parents=True)
    torch.save(source.state_dict(), folder / "alexnet-owt-7be5be79.pth")
    assert models.weights_status("alexnet").available
    model = models.build_model("alexnet", 3, pretrained=True)
    assert torch.equal(model.features[0].weight, source.features[0].weight)
    assert torch.equal(model.classifier[4].weight, source.classifier[4].weight)
    assert model.classifier[6].out_features == 3


def test_local_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = models.build_model("resnet18", 1000)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = models.build_model("resnet18", 7, pretrained=True, weights_path=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 7
    with pytest.raises(models.WeightsUnavailableError, match="weights file not found"):
        models.build_model("resnet18", 7, pretrained=True, weights_path=str(tmp_path / "nope.pth"))
    with pytest.raises(models.WeightsUnavailableError, match="does not fit resnet50"):
        models.build_model("resnet50", 7, pretrained=True, weights_path=str(path))
    # A pickle holding code is refused (weights_only), with the file named.
    (tmp_path / "evil.pth").write_bytes(b"\x80\x02cos\nsystem\n.")
    with pytest.raises(models.WeightsUnavailableError, match="evil.pth"):
        models.build_model("resnet18", 7, pretrained=True, weights_path=str(tmp_path / "evil.pth"))


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_pretrained_builds_with_new_head(arch: str) -> None:
    status = models.weights_status(arch)
    assert status.available, status.message
    model = models.build_model(arch, 5, pretrained=True)
    reference = models.imagenet_model(arch)
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(model.blocks[-1][0].conv_pwl.weight, reference.blocks[-1][0].conv_pwl.weight)
    assert model.classifier.out_features == 5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_table_entry_is_complete(arch: str) -> None:
    """Output layer, classifier, split and Grad-CAM layer of each spec point into the model it builds."""
    spec = get_spec(arch)
    model = spec.build(4)
    output = models.output_layer(model, arch)
    assert isinstance(output, torch.nn.Linear) and output.out_features == 4
    owned = {id(m) for m in model.modules()}
    assert id(spec.gradcam(model)) in owned
    classifier = model.get_submodule(spec.classifier)
    assert id(output) in {id(m) for m in classifier.modules()}
    backbone, head = models.split_for_features(model, arch)
    assert {id(p) for p in head.parameters()} == {id(p) for p in classifier.parameters()}
    assert spec.label and 32 <= spec.image_size <= 512 and spec.normalization in ("imagenet", "half")
    assert ARCH_LABELS[arch] == spec.label
    if isinstance(spec.weights, HubWeights):  # named in the table; the builder's own DEFAULT weights
        default = torchvision.models.get_model_weights(arch).DEFAULT
        assert spec.weights.enum is default and spec.weights.url == default.url
        assert spec.imagenet_top1 == default.meta["_metrics"]["ImageNet-1K"]["acc@1"]


def test_unknown_architecture_fails_loudly_everywhere() -> None:
    from caltech_core.config import ConfigError, TrainConfig
    from caltech_core.use.inference import target_layer

    model = models.build_model("efficientnet_lite0", 3)
    for call in (
        lambda: get_spec("resnet34"),
        lambda: models.build_model("resnet34", 3),
        lambda: models.output_layer(model, "resnet34"),
        lambda: models.split_for_features(model, "resnet34"),
        lambda: models.apply_train_mode(model, "resnet34", "fc"),
        lambda: models.weights_status("resnet34"),
        lambda: target_layer(model, "resnet34"),
    ):
        with pytest.raises(UnknownArchitectureError, match=r"unknown architecture 'resnet34' \(known: alexnet"):
            call()
    with pytest.raises(ConfigError, match="arch: 'resnet34' is not one of") as err:
        TrainConfig(arch="resnet34")
    assert err.value.field == "arch"


def test_config_takes_the_architectures_native_size_unless_set() -> None:
    from caltech_core.config import TrainConfig

    assert TrainConfig().image_size == 224
    lite2 = TrainConfig(arch="efficientnet_lite2", pretrained=True)
    assert (lite2.image_size, lite2.resize_size, lite2.normalization) == (260, 292, "half")
    assert TrainConfig(arch="efficientnet_lite1").image_size == 240
    assert TrainConfig(arch="efficientnet_lite2", image_size=128).image_size == 128  # overridable
    # A new architecture brings its size along, unless the size had been chosen by hand.
    assert TrainConfig().replace(arch="efficientnet_lite2").image_size == 260
    assert TrainConfig(image_size=64).replace(arch="efficientnet_lite2").image_size == 64
    assert lite2.replace(arch="resnet50").image_size == 224
    assert TrainConfig.from_dict(lite2.to_dict()) == lite2
    assert TrainConfig.from_dict({"arch": "efficientnet_lite1"}).image_size == 240
