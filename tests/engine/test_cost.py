"""The work estimate is the plan (issue 34 items 2 and 3): what the cap counts is the sum of
the stages that run, each RA stage with its test-set evaluation, weighted by what one image
costs the audited architecture."""

from __future__ import annotations

import random

import pytest

from ppr_engine.audit.plan import estimated_work, plan_for
from ppr_engine.cost import Sizes, evaluation_work, forward_flops, image_cost
from ppr_engine.spec import validate_spec

SIZES = Sizes(clean=900, test=1000, pool=1000, classes=10)


def _random_spec(rng: random.Random) -> dict:
    methods = rng.sample(["ft", "lp", "fst", "ep", "pam", "nad", "fp"], rng.randint(0, 4))
    sweep = [[rng.randint(1, 60), rng.randint(1, 8)] for _ in range(rng.randint(0, 4))]
    triggers = [{"attack": rng.choice(["badnets", "blended"]), "target": rng.randint(0, 9)}
                for _ in range(rng.randint(0, 3))]
    return {"model": {"arch": rng.choice(["small_cnn", "resnet18_cifar", "vgg16_bn"])},
            "data": {"clean": "synthetic:?n=1000", "test": "synthetic:?n=1000&seed=1"},
            "triggers": triggers,
            "plan": {"methods": [{"name": m} for m in methods],
                     "retune": {"epochs": rng.randint(1, 6), "sweep": sweep},
                     "qra": {"enabled": rng.random() < 0.5, "epochs": rng.randint(1, 9)},
                     "lmc": {"enabled": rng.random() < 0.5, "points": rng.randint(2, 11)}}}


@pytest.mark.parametrize("seed", range(12))
def test_a_random_specs_estimate_is_its_plans_stage_costs(seed):
    spec = validate_spec(_random_spec(random.Random(seed)))
    plan = plan_for(spec, SIZES)
    assert estimated_work(spec, SIZES) == pytest.approx(sum(s.cost for s in plan))
    weight = image_cost(spec)
    for s in plan:
        if s.kind == "retune":  # the training and the test-set evaluation every RA stage does
            b = s.budget
            seeds = spec.plan.retune.seeds_on(spec.device)
            assert s.cost == pytest.approx(
                weight * seeds * (b.epochs * (b.poison + b.clean) + evaluation_work(SIZES, 1)))


def test_the_issues_wide_spec_is_now_counted_at_what_it_runs():
    """16 methods x 8 triggers x 10 sweep points of 1 image x 1 epoch on 200,000 test
    images: estimated at 1.0e7 before (the evaluations left out), 2.1e8 by its plan."""
    spec = validate_spec({
        "model": {"arch": "small_cnn"},
        "data": {"clean": "synthetic:?n=1000", "test": "synthetic:?n=200000&seed=1"},
        "triggers": [{"attack": "badnets", "target": t} for t in range(8)],
        "plan": {"methods": [{"name": "ft", "label": f"ft{i}", "epochs": 1} for i in range(16)],
                 "retune": {"poison_num": 1, "clean_num": 0, "epochs": 1,
                            "sweep": [[1, 2 + i] for i in range(10)]},
                 "qra": {"enabled": False}, "lmc": {"enabled": False}}})
    sizes = Sizes(clean=500, test=200_000, pool=500, classes=10)
    retunes = [s for s in plan_for(spec, sizes) if s.kind == "retune"]
    assert len(retunes) == (16 + 1) * 8 * 11
    unweighted = estimated_work(spec, sizes) / image_cost(spec)
    assert unweighted > 2e8


def test_the_architecture_weighs_what_an_image_costs():
    """FLOPs of one forward pass, counted on the meta device: the same spec costs more on
    a larger model, in proportion to its FLOPs; a width-16 ResNet-18 about 1/16 of the full
    one."""
    base = {"data": {"clean": "synthetic:?n=1000", "test": "synthetic:?n=1000&seed=1"},
            "triggers": [{"attack": "badnets", "target": 3}],
            "plan": {"methods": [{"name": "ft"}]}}
    work = {}
    for arch, width in [("small_cnn", None), ("resnet18_cifar", 16), ("resnet18_cifar", None),
                        ("resnet50", None)]:
        spec = validate_spec({**base, "model": {"arch": arch, "width": width}})
        work[arch, width] = estimated_work(spec, SIZES)
    assert work["resnet18_cifar", None] > work["resnet18_cifar", 16] > work["small_cnn", None]
    assert work["resnet50", None] > 5 * work["resnet18_cifar", None]
    ratio = work["resnet18_cifar", 16] / work["resnet18_cifar", None]
    assert ratio == pytest.approx(forward_flops("resnet18_cifar", 10, 16)
                                  / forward_flops("resnet18_cifar", 10))
    assert 1 / 20 < ratio < 1 / 12
