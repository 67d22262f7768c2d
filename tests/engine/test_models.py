"""Every registered architecture builds and runs a forward pass; heads and stages exist."""

import copy

import pytest
import torch
from torch import nn

from ppr_engine import models


@pytest.mark.parametrize("name", models.list_models())
def test_every_architecture_builds_and_runs(name, device):
    arch = models.architecture(name)
    model = models.create(name, num_classes=7).to(device).eval()
    x = torch.rand(2, 3, arch.input_size, arch.input_size, device=device)
    feats, logits = models.features(model, x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    head = models.head_of(model)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert feats.shape == (2, head.in_features)
    for stage in arch.stages:
        assert isinstance(models.submodule(model, stage), nn.Module)


def test_normalization_is_inside_and_not_in_the_state_dict():
    model = models.create("small_cnn")
    assert "input_mean" not in model.state_dict()
    assert torch.allclose(model.input_mean.flatten(), torch.tensor(models.CIFAR_MEAN))


def test_unknown_architecture_names_the_known_ones():
    from ppr_engine.errors import SpecError

    with pytest.raises(SpecError, match="known: .*small_cnn"):
        models.create("resnet9000")


def test_preact_resnet18_has_backdoorbench_layout():
    """BackdoorBench's PreAct-ResNet-18: 16 BN layers and 3,392 BN channels (ANP's
    neurons), no BN after the last block, so its state dicts load key for key."""
    model = models.create("preact_resnet18")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 16 and sum(b.num_features for b in bns) == 3392
    assert not any(k.startswith("bn.") for k in model.state_dict())


@pytest.mark.parametrize("name", ["resnet18_cifar", "preact_resnet18"])
@pytest.mark.parametrize("width", [8, 16])
def test_reduced_width_keeps_the_blocks_and_the_layer4_features(name, width):
    """A base width scales every stage: the same blocks and keys as the full model, and the
    last stage (the one the inversion bounds) gives 8 x width channels at 4 x 4."""
    from ppr_engine.inversion.features import stage_features

    full, narrow = models.create(name), models.create(name, width=width)
    assert list(full.state_dict()) == list(narrow.state_dict())
    assert narrow.layer4[-1].conv2.out_channels == 8 * width
    logits, feats = stage_features(narrow.eval(), torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats.shape == (2, 8 * width, 4, 4)
    assert models.head_of(narrow).in_features == 8 * width


def test_width_is_refused_for_a_fixed_width_architecture():
    from ppr_engine.errors import SpecError
    from ppr_engine.spec import validate_spec

    with pytest.raises(SpecError, match="small_cnn has a fixed width"):
        models.create("small_cnn", width=16)
    with pytest.raises(SpecError, match="fixed width"):
        validate_spec({"model": {"arch": "vgg16_bn", "width": 16},
                       "data": {"clean": "synthetic:?n=100", "test": "synthetic:?n=100"},
                       "triggers": [{"attack": "badnets", "target": 3}]})


def _logits_and_input_grad(model: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), x.grad


def _error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).norm() / exact.norm().clamp_min(1e-12))


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", models.list_models())
def test_a_frozen_eval_copy_folds_its_batchnorms_and_computes_the_same(name):
    """Scans and inversions differentiate through an eval-mode frozen copy: its BatchNorms
    are folded into their convolutions, and its logits and input gradients are as close to
    the exact ones (float64) as the model's own in float32 (BatchNorm statistics drawn away
    from the identity, so a wrong fold shows)."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.eval()
    before = _batchnorms(model)
    frozen = models.frozen_copy(model, train_mode=False)
    assert _batchnorms(model) == before  # the model itself is untouched
    assert before == 0 or _batchnorms(frozen) < before
    size = models.architecture(name).input_size
    x = torch.rand(2, 3, size, size)
    exact = _logits_and_input_grad(copy.deepcopy(model).double(), x.double())
    for ours, folded, want in zip(_logits_and_input_grad(model, x),
                                  _logits_and_input_grad(frozen, x), exact, strict=True):
        assert _error(folded, want) <= 2 * _error(ours, want) + 1e-6
    train_copy = models.frozen_copy(model, train_mode=True)  # batch statistics: kept
    assert _batchnorms(train_copy) == before


def test_a_convolution_read_twice_keeps_its_batchnorm():
    """Folding rewrites the convolution's weights: where another layer also reads its
    output (here a skip connection), the BatchNorm stays."""

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h) + h

    model = Skip().eval()
    model.bn.running_mean.fill_(0.3)
    x = torch.rand(2, 3, 8, 8)
    want = model(x)
    assert models.fold_batchnorm(model) == 0 and isinstance(model.bn, nn.BatchNorm2d)
    assert torch.equal(model(x), want)
