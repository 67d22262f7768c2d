"""The audit: spec -> stages -> report, with progress events.

Stages: load the checkpoint and data; evaluate the submitted model; purify with each
method (O-C-Acc, O-ASR, DER); build the RA baseline (the caller's clean reference, else the
EP model); then for each method and trigger: RA (P-ASR, and the sweep), QRA (and its
transfer to the other methods), LMC. A stage that fails is recorded with its reason and
the audit goes on; only a bad checkpoint or bad data stops it (there is nothing to audit).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import __version__, data, models
from .attacks import Trigger, triggered_test
from .checkpoint import load_model, sha256_file
from .cost import Sizes, total_work
from .data import ImageSet
from .defenses import DefenseContext, purify
from .errors import Cancelled, SpecError
from .gate import check_subjects, evaluate
from .metrics import attack_success_rate, clean_accuracy, der
from .ppr.lmc import lambda50, trace_path
from .ppr.qra import PerturbationGenerator, evaluate_qra, run_qra
from .ppr.retune import build_retune_set, retune
from .report import (
    AuditReport,
    BaselineInfo,
    LMCCurve,
    MethodResult,
    ModelResult,
    Provenance,
    QRAResult,
    StageStatus,
    SweepPoint,
    TriggerResult,
    headline,
)
from .spec import AuditSpec, MethodSpec
from .train import pick_device

# (stage, overall fraction in [0, 1], message); it may raise Cancelled to stop the audit.
ProgressSink = Callable[[str, float, str], None]


def _quiet(stage: str, fraction: float, message: str) -> None:
    """The sink that reports nothing."""


@dataclass
class AuditOutcome:
    """The report and the purified models (by method key), for callers that keep them."""

    report: AuditReport
    models: dict[str, nn.Module] = field(default_factory=dict)


class Tracker:
    """Maps each stage's own fraction onto the audit's overall fraction."""

    def __init__(self, sink: ProgressSink, units: int) -> None:
        self.sink, self.units, self.done = sink, max(1, units), 0

    def sub(self, stage: str) -> Callable[[str, float], None]:
        """A (message, fraction) callback for one unit of work named `stage`."""
        base = self.done

        def cb(message: str, fraction: float) -> None:
            frac = (base + max(0.0, min(1.0, fraction))) / self.units
            self.sink(stage, frac, message)

        return cb

    def finish(self, stage: str) -> None:
        """Mark one unit done."""
        self.done += 1
        self.sink(stage, self.done / self.units, f"{stage}: done")


@dataclass
class _Data:
    clean: ImageSet
    clean_train: ImageSet
    val: ImageSet
    test: ImageSet
    pool: ImageSet
    triggers: list[Trigger]
    labels: list[str]
    triggered: list[ImageSet]
    retune_seed: int = 0
    _retune_sets: dict = field(default_factory=dict)

    def retune_set(self, i: int, poison_num: int, clean_num: int):
        """RA's data for trigger `i` (built once, shared by every method and the baseline)."""
        key = (i, poison_num, clean_num)
        if key not in self._retune_sets:
            self._retune_sets[key] = build_retune_set(self.pool, self.triggers[i], poison_num,
                                                      clean_num, self.retune_seed)
        return self._retune_sets[key]


def _load_data(spec: AuditSpec, resolve_dataset, roots, device) -> tuple[_Data, dict]:
    arch = models.architecture(spec.model.arch)
    kw = {"resolve_dataset": resolve_dataset, "roots": roots, "size": arch.input_size}
    def load(ref: str, name: str) -> ImageSet:
        """Load `ref` and refuse images the model cannot take."""
        ds = data.load(ref, **kw)
        if ds.x.shape[-1] != arch.input_size or ds.x.shape[-2] != arch.input_size:
            raise SpecError(f"{name}: images are {tuple(ds.x.shape[-2:])}, but "
                            f"{spec.model.arch} takes {arch.input_size}x{arch.input_size}; "
                            f"add ?size={arch.input_size} to the reference")
        if len(ds) and int(ds.y.max()) >= spec.model.num_classes:
            raise SpecError(f"{name} has label {int(ds.y.max())}, but the model has "
                            f"{spec.model.num_classes} classes")
        return ds

    clean = load(spec.data.clean, "data.clean")
    test = load(spec.data.test, "data.test")
    # roles, whatever the references look like: sample-specific triggers (SSBA) look the
    # defender's and the attacker's images up in the attack's training split, test images
    # in its test split
    clean, test = replace(clean, split="train"), replace(test, split="test")
    if spec.data.attacker:
        pool = replace(load(spec.data.attacker, "data.attacker"), split="train")
        attacker_prov = {"ref": spec.data.attacker}
        refuse_overlap(test, {"data.clean": clean, "data.attacker": pool})
    else:
        refuse_overlap(test, {"data.clean": clean})
        # split the clean reference so that the attacker and the defender share no image
        need = attacker_images(spec)
        if need > len(clean) // 2:
            raise SpecError(f"data.clean has {len(clean)} images: too few to set {need} aside "
                            f"for the attacker (RA and QRA) and keep the larger part for the "
                            f"defender; give data.attacker or lower the RA/QRA budgets")
        pool, clean = data.take(clean, n=need, seed=spec.plan.retune.seed)
        attacker_prov = {"ref": f"{need} images split from data.clean (RA's seed)"}
    clean_train, val = data.train_val(clean, spec.data.val_fraction, spec.seed)
    triggers = [t.build() for t in spec.triggers]
    for i, t in enumerate(triggers):
        if t.target >= spec.model.num_classes:
            raise SpecError(f"trigger target {t.target} is not a class of a "
                            f"{spec.model.num_classes}-class model")
        t.bind(lambda ref, i=i: load(ref, f"triggers.{i}"))
    d = _Data(clean.to(device), clean_train.to(device), val.to(device), test.to(device),
              pool.to(device), triggers, [t.label for t in spec.triggers], [],
              spec.plan.retune.seed)
    prov = {
        "clean": {"ref": spec.data.clean, "n": len(clean), "sha256": clean.content_hash(),
                  "train": len(clean_train), "val": len(val)},
        "test": {"ref": spec.data.test, "n": len(test), "sha256": test.content_hash()},
        "attacker": {**attacker_prov, "n": len(pool), "sha256": pool.content_hash(),
                     "shared_with_clean": len(pool.shared_with(clean))},
    }
    return d, prov


def _learn_triggers(d: _Data, bd: nn.Module, ctx: DefenseContext, report: AuditReport,
                    tracker: Tracker) -> None:
    """Learn the triggers found in the model itself (inversion), build every trigger's test
    set, and record each trigger's provenance. A trigger whose inversion fails is dropped
    (its stage says why); one that finds no backdoor stays until the model is evaluated."""
    keep = []
    for i, (lbl, t) in enumerate(zip(d.labels, d.triggers, strict=True)):
        if t.learns_from_model:
            ctx.progress = tracker.sub(f"invert:{lbl}")
            with _stage(report.stages, f"invert[{lbl}]") as st:
                t.learn(bd, ctx)
            if st.status == "failed":
                continue
        keep.append(i)
    _select(d, keep)
    d.triggered = [triggered_test(d.test, t) for t in d.triggers]
    for lbl, t in zip(d.labels, d.triggers, strict=True):
        if (own := t.provenance()) is not None:
            report.provenance.data[f"trigger {lbl}"] = own


def _select(d: _Data, keep: list[int]) -> None:
    """Keep triggers `keep` (positions) of `d`, with their labels and test sets."""
    d.triggers[:] = [d.triggers[i] for i in keep]
    d.labels = [d.labels[i] for i in keep]
    d.triggered = [d.triggered[i] for i in keep] if d.triggered else []


def attacker_images(spec: AuditSpec) -> int:
    """How many images RA (every budget of its sweep) and QRA draw from the attacker."""
    rs, q = spec.plan.retune, spec.plan.qra
    need = rs.poison_num + rs.clean_num if rs.enabled else 0
    if rs.enabled:
        need = max([need] + [b.poison_num + (b.clean_num or 0) for b in rs.sweep])
    if q.enabled:
        need = max(need, q.clean_num + q.poison_num)
    return need


def refuse_overlap(test: ImageSet, others: dict[str, ImageSet]) -> None:
    """SpecError when the test set shares images (pixel for pixel) with the defender's or
    the attacker's data: every number measured on it would then be measured on seen data."""
    for name, other in others.items():
        shared = test.shared_with(other)
        if len(shared):
            first = ", ".join(str(int(i)) for i in test.index[shared[:5].to(
                test.index.device)].tolist())
            raise SpecError(f"data.test shares {len(shared)} of its {len(test)} images with "
                            f"{name} (test images at positions {first}"
                            f"{', ...' if len(shared) > 5 else ''}); audit on disjoint data")


@contextlib.contextmanager
def _stage(stages: list[StageStatus], name: str) -> Iterator[StageStatus]:
    status = StageStatus(name=name)
    start = time.perf_counter()
    try:
        yield status
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the audit goes on
        status.status = "failed"
        status.error = f"{type(exc).__name__}: {exc}".strip()[:500]
    finally:
        status.seconds = round(time.perf_counter() - start, 3)
        stages.append(status)


VERDICT_RULE = ("degraded: O-C-Acc more than plan.retune.max_acc_drop below the submitted "
                "model's C-Acc (acc_drop), whatever the ASR; not_removed: O-ASR above "
                "plan.retune.removed_asr; superficial: removed, but under some RA budget (the "
                "reference one or a sweep point) P-ASR exceeds the baseline's P-ASR under the "
                "same budget by more than plan.retune.superficial_gap (the robustness score "
                "max_gap); robust: removed, accuracy kept, and max_gap within that margin")


def _check_detection(record: dict, triggers: list[Trigger]) -> None:
    """Put the audit's known targets beside a method's detected one, so the report can say
    whether the inversion found the right class; the method itself never saw them."""
    det = record.get("detection")
    known = sorted({t.target for t in triggers if not t.learns_from_model})
    if det is not None and known:
        det["audit_targets"] = known


def _verdict(m: MethodResult, spec: AuditSpec) -> str:
    """The rule of VERDICT_RULE; without a baseline, P-ASR against removed_asr. Accuracy
    comes first: a method that breaks the model "removes" any backdoor, and calling it
    robust would recommend it (FST at C-Acc 0.34 was, in docs/RESULTS.md)."""
    if m.acc_drop is not None and m.acc_drop > spec.plan.retune.max_acc_drop:
        return "degraded"
    if m.o_asr is None:
        return "unknown"
    if m.o_asr > spec.plan.retune.removed_asr:
        return "not_removed"
    if m.max_gap is not None:
        return "superficial" if m.max_gap > spec.plan.retune.superficial_gap else "robust"
    if m.p_asr is not None:
        return "superficial" if m.p_asr > spec.plan.retune.removed_asr else "robust"
    return "unknown"


def _worst(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def run(spec: AuditSpec, checkpoint: Path, *, kind: str = "audit",
        progress: ProgressSink = _quiet, resolve_dataset=None, roots: list[Path] | None = None,
        max_checkpoint_bytes: int | None = None, checkpoint_name: str | None = None,
        max_work: float | None = None) -> AuditOutcome:
    """Run the audit `spec` on the checkpoint at `checkpoint`; never modifies it. With
    `max_work` (a service's cap), a spec whose estimated work on the loaded data exceeds it
    is refused before any work starts."""
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    device = pick_device(spec.device)
    torch.manual_seed(spec.seed)
    keys = [m.key for m in spec.plan.methods]
    check_subjects(spec.gate, keys or ["model"])
    report = AuditReport(kind=kind)
    checkpoint = Path(checkpoint)

    progress("load", 0.0, "loading checkpoint and data")
    load_kw = {"max_bytes": max_checkpoint_bytes} if max_checkpoint_bytes else {}
    bd = load_model(checkpoint, spec.model.arch, spec.model.num_classes, **load_kw).to(device)
    d, data_prov = _load_data(spec, resolve_dataset, roots, device)
    if max_work is not None:
        work = total_work(spec, Sizes(len(d.clean_train), len(d.test), len(d.pool),
                                      spec.model.num_classes))
        if work > max_work:
            raise SpecError(f"spec asks too much: the audit's estimated work on these data "
                            f"is {work:.3g} image passes, the limit is {max_work:.3g}")
    report.provenance = Provenance(
        checkpoint_sha256=sha256_file(checkpoint),
        checkpoint_name=checkpoint_name or checkpoint.name,
        data=data_prov, spec=spec.model_dump(mode="json"), seed=spec.seed,
        engine_version=__version__, torch_version=torch.__version__, device=str(device),
        started_at=started)

    plan = spec.plan
    n_methods = max(1, len(plan.methods))
    # inversions + evaluate + per method (purify, RA, QRA, LMC) + baseline + report
    units = (sum(t.learns_from_model for t in d.triggers) + 1
             + n_methods * (1 + plan.retune.enabled + plan.qra.enabled + plan.lmc.enabled) + 2)
    tracker = Tracker(progress, units)

    ctx = DefenseContext(d.clean_train, d.val, device, spec.seed, triggers=d.triggers)
    _learn_triggers(d, bd, ctx, report, tracker)
    with _stage(report.stages, "evaluate submitted model"):
        report.model = ModelResult(c_acc=clean_accuracy(bd, d.test), asr={
            lbl: attack_success_rate(bd, tt, t.target)
            for lbl, tt, t in zip(d.labels, d.triggered, d.triggers, strict=True)})
    tracker.finish("evaluate")
    for lbl, t in zip(d.labels, d.triggers, strict=True):
        if (inv := t.inversion) is not None:
            report.inversions.append(inv.model_copy(update={
                "trigger": lbl, "asr": report.model.asr.get(lbl)}))
            if not inv.found:  # what the generator reaches is no backdoor's ASR
                report.model.asr.pop(lbl, None)
    if report.inversions:
        report.model.backdoors_found = sum(inv.found for inv in report.inversions)
    # a trigger inverted from the model that found no backdoor gets no verdict
    _select(d, [i for i, t in enumerate(d.triggers) if t.found])
    if spec.triggers and not d.triggers:  # every trigger was inverted: none found, or failed
        reason = ("no backdoor found by inversion" if report.inversions else
                  "no trigger left: its inversion failed")
        for st in ("purify", "baseline", "retune", "qra", "lmc"):
            report.stages.append(StageStatus(name=st, status="skipped", error=reason))
        return _finish(report, spec, t0, tracker)

    purified: dict[str, nn.Module] = {}
    results: dict[str, MethodResult] = {}
    method_specs: list[MethodSpec] = plan.methods or []
    for ms in method_specs:
        res = MethodResult(key=ms.key, method=ms.name, params=ms.parsed().model_dump())
        results[ms.key] = res
        ctx.progress = tracker.sub(f"purify:{ms.key}")
        ctx.progress(f"purify:{ms.key}: starting", 0.0)
        with _stage(res.stages, "purify"):
            out = purify(ms.name, bd, ctx, ms.parsed())
            purified[ms.key] = out.model
            res.record = {k: v for k, v in out.record.items() if k != "params"}
            _check_detection(res.record, d.triggers)
            res.o_cacc = clean_accuracy(out.model, d.test)
            for lbl, tt, t in zip(d.labels, d.triggered, d.triggers, strict=True):
                o_asr = attack_success_rate(out.model, tt, t.target)
                res.per_trigger.append(TriggerResult(trigger=lbl, o_asr=o_asr, der=der(
                    report.model.asr[lbl], o_asr, report.model.c_acc, res.o_cacc)))
        tracker.finish(f"purify:{ms.key}")
    if not method_specs:  # audit the submitted model as it is
        res = MethodResult(key="model", method="none", o_cacc=report.model.c_acc)
        res.per_trigger = [TriggerResult(trigger=lbl, o_asr=report.model.asr.get(lbl))
                           for lbl in d.labels]
        results["model"], purified["model"] = res, bd
        tracker.finish("model")

    baseline, base_info = _baseline(spec, bd, purified, ctx, d, report, tracker)
    report.baseline = base_info

    qra_gens: dict[tuple[str, str], PerturbationGenerator] = {}
    for key, model in purified.items():
        res = results[key]
        for i, (trig, lbl, tt) in enumerate(zip(d.triggers, d.labels, d.triggered,
                                                strict=True)):
            tr = res.per_trigger[i]
            retuned = None
            if plan.retune.enabled:
                with _stage(res.stages, f"retune[{lbl}]"):
                    rset = d.retune_set(i, plan.retune.poison_num, plan.retune.clean_num)
                    retuned = retune(model, rset, plan.retune, device=device,
                                     progress=tracker.sub(f"retune:{key}"))
                    tr.p_cacc = clean_accuracy(retuned, d.test)
                    tr.p_asr = attack_success_rate(retuned, tt, trig.target)
                    tr.baseline_p_asr = base_info.p_asr.get(lbl)
                    if tr.baseline_p_asr is not None:
                        tr.gap = tr.p_asr - tr.baseline_p_asr
                    tr.sweep = _sweep(model, d, i, spec, device, tracker.sub(f"retune:{key}"))
                    for point, base in zip(tr.sweep, base_info.sweep.get(lbl, []),
                                           strict=False):
                        point.baseline_p_asr = base.p_asr
                    tr.max_gap = _worst([tr.gap] + [
                        p.p_asr - p.baseline_p_asr for p in tr.sweep
                        if p.p_asr is not None and p.baseline_p_asr is not None])
            if plan.qra.enabled:
                with _stage(res.stages, f"qra[{lbl}]"):
                    if baseline is None:
                        raise SpecError("QRA needs a benign reference model: give `reference` "
                                        "or a trigger so the EP model can be built")
                    if retuned is None:
                        raise SpecError("QRA needs the RA model; the retune stage did not run")
                    q = run_qra(model, retuned, baseline, d.pool, d.test, tt, trig, plan.qra,
                                device=device, seed=spec.seed + 7,
                                progress=tracker.sub(f"qra:{key}"))
                    qra_gens[(key, lbl)] = q.generator
                    tr.qra = QRAResult(asr=q.asr, clean_to_target=q.clean_to_target,
                                       ref_asr=q.ref_asr, ref_clean_to_target=q.ref_clean_to_target)
            if plan.lmc.enabled and key != "model":
                with _stage(res.stages, f"lmc[{lbl}]"):
                    path = trace_path(model, bd, d.clean_train, d.test, tt, trig.target,
                                      points=plan.lmc.points, bn=plan.lmc.bn, device=device,
                                      progress=tracker.sub(f"lmc:{key}"))
                    tr.lmc = LMCCurve(lambdas=[p.lam for p in path], c_acc=[p.c_acc for p in path],
                                      asr=[p.asr for p in path],
                                      backdoor_error=[p.backdoor_error for p in path],
                                      lambda50=lambda50(path), bn=plan.lmc.bn)
        for _ in range(plan.retune.enabled + plan.qra.enabled + plan.lmc.enabled):
            tracker.finish(key)

    if plan.qra.enabled and plan.qra.transfer and len(purified) > 1:
        with _stage(report.stages, "qra transfer"):
            for (src, lbl), gen in qra_gens.items():
                i = d.labels.index(lbl)
                tr = results[src].per_trigger[i]
                for dst, model in purified.items():
                    if dst != src and tr.qra is not None:
                        tr.qra.transfer[dst] = evaluate_qra(gen, model, d.test, d.triggered[i],
                                                            d.triggers[i].target, device)[0]

    for res in results.values():
        pt = res.per_trigger
        res.o_asr = _worst([t.o_asr for t in pt])
        res.der = min((t.der for t in pt if t.der is not None), default=None)
        res.p_asr = _worst([t.p_asr for t in pt])
        res.p_cacc = min((t.p_cacc for t in pt if t.p_cacc is not None), default=None)
        res.baseline_p_asr = _worst([t.baseline_p_asr for t in pt])
        res.gap = _worst([t.gap for t in pt])
        res.max_gap = _worst([t.max_gap for t in pt])
        res.qra_asr = _worst([t.qra.asr if t.qra else None for t in pt])
        res.qra_clean_to_target = _worst([t.qra.clean_to_target if t.qra else None for t in pt])
        lams = [t.lmc.lambda50 if t.lmc.lambda50 is not None else 1.0 for t in pt if t.lmc]
        res.lmc_lambda50 = min(lams) if lams and min(lams) < 1.0 else None
        if res.o_cacc is not None and report.model.c_acc is not None:
            res.acc_drop = report.model.c_acc - res.o_cacc
        res.verdict = _verdict(res, spec)  # type: ignore[assignment]
        res.seconds = round(sum(st.seconds for st in res.stages), 3)
    report.methods = list(results.values())
    report.verdict_rule = VERDICT_RULE
    return _finish(report, spec, t0, tracker, purified)


def _finish(report: AuditReport, spec: AuditSpec, t0: float, tracker: Tracker,
            purified: dict[str, nn.Module] | None = None) -> AuditOutcome:
    """Headline, gate and timing: the last stage of every audit."""
    report.headline = headline(report)
    report.gate = evaluate(spec.gate, report)
    report.seconds = round(time.perf_counter() - t0, 3)
    report.provenance.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tracker.finish("report")
    return AuditOutcome(report, purified or {})


def _baseline(spec: AuditSpec, bd: nn.Module, purified: dict[str, nn.Module],
              ctx: DefenseContext, d: _Data, report: AuditReport, tracker: Tracker
              ) -> tuple[nn.Module | None, BaselineInfo]:
    """The RA/QRA baseline (reference checkpoint, else the EP model) and its RA numbers."""
    plan = spec.plan
    info = BaselineInfo()
    model: nn.Module | None = None
    with _stage(report.stages, "baseline"):
        if spec.reference:
            model = load_model(Path(spec.reference), spec.model.arch,
                               spec.model.num_classes).to(ctx.device)
            info.kind = "reference"
            info.description = f"caller's clean reference {Path(spec.reference).name}"
        elif "ep" in [m.name for m in plan.methods]:
            ep_key = next(m.key for m in plan.methods if m.name == "ep")
            model = purified.get(ep_key)
            info.kind, info.description = "ep", f"the EP model of this audit ({ep_key})"
        else:
            ctx.progress = tracker.sub("baseline")
            model = purify("ep", bd, ctx, {}).model
            info.kind, info.description = "ep", "EP with default parameters, built for the baseline"
        if model is not None:
            info.c_acc = clean_accuracy(model, d.test)
            for i, (lbl, tt, t) in enumerate(zip(d.labels, d.triggered, d.triggers,
                                                 strict=True)):
                info.asr[lbl] = attack_success_rate(model, tt, t.target)
                if plan.retune.enabled and plan.retune.baseline:
                    rset = d.retune_set(i, plan.retune.poison_num, plan.retune.clean_num)
                    step = tracker.sub("baseline")
                    retuned = retune(model, rset, plan.retune, device=ctx.device, progress=step)
                    info.p_asr[lbl] = attack_success_rate(retuned, tt, t.target)
                    info.sweep[lbl] = _sweep(model, d, i, spec, ctx.device, step)
    tracker.finish("baseline")
    return model, info


def _sweep(model: nn.Module, d: _Data, i: int, spec: AuditSpec,
           device: torch.device, progress=None) -> list[SweepPoint]:
    """P-ASR of `model` against trigger `i` over the (poisoned samples, epochs) budgets of
    the sweep, the total number of RA images held constant."""
    rs = spec.plan.retune
    total = rs.poison_num + rs.clean_num
    trig, tt = d.triggers[i], d.triggered[i]
    return [SweepPoint(poison_num=b.poison_num, epochs=b.epochs, p_asr=attack_success_rate(
        retune(model, d.retune_set(i, b.poison_num, max(0, total - b.poison_num)
                                   if b.clean_num is None else b.clean_num),
               rs, epochs=b.epochs, device=device, progress=progress or (lambda m, f: None)),
        tt, trig.target)) for b in rs.sweep]
