"""The standing feature tap (issue 31 item 2): the inversion reads the last stage's features
through one hook registered once per model, not one added and removed on every call. It must
return bitwise what a plain per-call hook sees, mask as the per-call hook masked, leave the
model's own output untouched when idle, and travel with a deep copy."""

from __future__ import annotations

import copy

import pytest
import torch

from ppr_engine import models
from ppr_engine.inversion.features import decoupled_logits, last_stage, stage_features, tap


def _hooked(model, x, mask=None, split=False):
    """The reference: a hook added for this call only, as the inversion did before."""
    seen = []

    def hook(module, args, out):
        seen.append(out)
        if mask is None:
            return out
        return torch.cat([out * mask, out * (1 - mask)]) if split else out * mask

    handle = last_stage(model).register_forward_hook(hook)
    try:
        return model(x), seen[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("arch, width", [("small_cnn", None), ("resnet18_cifar", 8),
                                         ("preact_resnet18", 8)])
@pytest.mark.parametrize("train", [False, True])
def test_the_tap_sees_bitwise_what_a_per_call_hook_sees(arch, width, train):
    torch.manual_seed(0)
    model = models.create(arch, 10, **({"width": width} if width else {})).train(train)
    x = torch.rand(6, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())
    ref_logits, ref_features = _hooked(model, x)
    model.load_state_dict(state)  # BatchNorm statistics as before the reference pass
    logits, features = stage_features(model, x)
    assert torch.equal(logits, ref_logits) and torch.equal(features, ref_features)

    mask = torch.rand(features.shape[1:])
    model.load_state_dict(state)
    ref_masked, _ = _hooked(model, x, mask)
    model.load_state_dict(state)
    assert torch.equal(stage_features(model, x, mask)[0], ref_masked)
    model.load_state_dict(state)
    ref_split, _ = _hooked(model, x, mask, split=True)
    model.load_state_dict(state)
    benign, backdoor = decoupled_logits(model, x, mask)
    assert torch.equal(torch.cat([benign, backdoor]), ref_split)


def test_the_tap_is_registered_once_keeps_nothing_and_travels_with_a_copy():
    model = models.create("small_cnn", 10).eval()
    x = torch.rand(4, 3, 32, 32)
    plain = model(x)
    for _ in range(3):
        stage_features(model, x, torch.rand(stage_features(model, x)[1].shape[1:]))
    hooks = last_stage(model)._forward_hooks
    assert list(hooks.values()) == [tap(model)]  # one hook, however many calls
    assert tap(model).seen is None and tap(model).mask is None  # no tensor held
    assert torch.equal(model(x), plain)  # idle, the model's output is its own

    twin = copy.deepcopy(model)
    assert tap(twin) is not tap(model)
    assert list(last_stage(twin)._forward_hooks.values()) == [tap(twin)]
    assert torch.equal(stage_features(twin, x)[1], stage_features(model, x)[1])
