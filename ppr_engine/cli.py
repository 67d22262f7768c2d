"""The engine's commands (a typer app): demo, audit, purify, make-backdoor, eval, methods,
import-backdoorbench.

Mounted by the `ppr` composition root (`ppr_cli`). Every command takes `--json` where it
prints results, shows progress bars on a terminal, and exits non-zero with one clear line
on bad input (2), a failed gate (1) or an internal error (3).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from .errors import InputError, PPRError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="ppr-audit engine: make, evaluate, purify and audit backdoored models.")

JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p",
                                                    help="attack parameter key=value")]


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn engine errors into one line and an exit code, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except InputError as exc:
            fail(str(exc), 2)
        except PPRError as exc:
            fail(str(exc), 3)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback
            if "PPR_DEBUG" in __import__("os").environ:
                raise
            fail(f"internal error: {type(exc).__name__}: {exc}", 3)

    return wrapper


def parse_kv(items: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs to a dict; values are read as YAML scalars (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"parameter {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def stage_lines(every_s: float = 60.0) -> Callable[[str, float, str], None]:
    """A (stage, fraction, message) sink for logs (no terminal): one line on stderr when a
    stage starts and when it ends, with its seconds, and one every `every_s` while a stage
    runs, so a CI log or `docker logs` shows what a long job is doing."""
    t0 = time.monotonic()
    state = {"stage": None, "since": t0, "said": t0}

    def say(text: str) -> None:
        typer.echo(f"[{time.monotonic() - t0:8.1f}s] {text}", err=True)

    def sink(stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction < 0:
            return
        if stage != state["stage"]:
            if state["stage"] is not None:
                say(f"done  {state['stage']} ({now - state['since']:.1f} s)")
            said = message and not message.startswith(stage)
            say(f"start {stage}" + (f": {message}" if said else ""))
            state.update(stage=stage, since=now, said=now)
        elif now - state["said"] >= every_s:
            state["said"] = now
            say(f"      {stage}: {message} ({fraction:.0%} of the job)")
    return sink


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, float, str], None]]:
    """A (stage, fraction, message) sink: a rich progress bar on a terminal, else one log
    line per stage start and end (stage_lines)."""
    if not enabled:
        yield lambda stage, fraction, message: None
        return
    if not sys.stderr.isatty():
        yield stage_lines()
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.percentage:>3.0f}%"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("starting", total=1.0)
        stages: dict[str, int] = {}  # one line per stage of the audit's plan, with its time

        def sink(stage: str, fraction: float, message: str) -> None:
            if fraction < 0:
                return
            if stage not in stages:
                for done in stages.values():
                    bar.update(done, completed=1.0)
                stages[stage] = bar.add_task(f"  {stage}", total=1.0)
            bar.update(task, completed=fraction, description=message or stage)

        yield sink


def _engine_progress(sink: Callable[[str, float, str], None]) -> Callable[[str, float], None]:
    return lambda message, fraction: sink("train", fraction, message) if fraction >= 0 else None


def _print_report(report, as_json: bool) -> None:
    from .report import TABLE_HEADER, fmt, gap_intervals, table_rows

    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    asr = ", ".join(f"{k}: {fmt(v)}" for k, v in report.model.asr.items())
    console.print(f"Submitted model: C-Acc {fmt(report.model.c_acc)}, ASR {asr or '-'}; "
                  f"RA baseline: {report.baseline.kind} (P-ASR "
                  f"{', '.join(fmt(v) for v in report.baseline.p_asr.values()) or '-'})")
    table = Table(*TABLE_HEADER)
    styles = {"robust": "green", "superficial": "dark_orange", "not_removed": "red",
              "degraded": "magenta"}
    for row in table_rows(report):
        verdict = row[-2]
        table.add_row(*row[:-2], f"[{styles.get(verdict, 'dim')}]{verdict}[/]", row[-1])
    console.print(table)
    budgets, gaps = gap_intervals(report)
    if gaps:
        intervals = Table("gap to baseline, 95% interval", *(f"{pn} ({ep} ep)"
                                                             for pn, ep in budgets))
        for label, cells in gaps:
            intervals.add_row(label, *cells)
        console.print(intervals)
    if report.headline:
        console.print(f"[bold]{escape(report.headline)}[/bold]")
    for m in report.methods:
        for s in m.stages:
            if s.status == "failed":
                console.print(f"[red]failed[/red] {m.key} {s.name}: {s.error}")
    if report.gate.passed is not None:
        console.print(f"Gate: {'[green]PASSED' if report.gate.passed else '[red]FAILED'}")
        for c in report.gate.clauses:
            console.print(f"  {'pass' if c.passed else 'FAIL'} {c.expr}  {c.detail}")


def write_reports(report, out: Path) -> dict[str, str]:
    """Write report.json, report.md and report.html into `out` (atomically each)."""
    from .report import render
    from .util import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt_name, ext in (("json", "json"), ("md", "md"), ("html", "html")):
        body, _ = render(report, fmt_name)
        atomic_write_text(out / f"report.{ext}", body)
        paths[fmt_name] = str(out / f"report.{ext}")
    return paths


@app.command()
@guarded
def methods(as_json: JsonOpt = False) -> None:
    """List architectures, attacks, purification methods (with their kind, reference and
    parameters) and data reference kinds."""
    from .catalog import catalog

    cat = catalog()
    if as_json:
        typer.echo(json.dumps(cat, indent=2))
        return
    for section, entries in cat.items():
        typer.echo(f"{section}:")
        for e in entries:
            kind = f"[{e['kind']}] " if e.get("kind") else ""
            typer.echo(f"  {e['name']:<16} {kind}{e['summary']}")
            if e.get("reference"):
                typer.echo(f"      reference: {e['reference']}")
            if params := ", ".join(f"{k}={v['default']!r}"
                                   for k, v in e.get("params", {}).items()):
                typer.echo(f"      {params}")


@app.command("make-backdoor")
@guarded
def make_backdoor_cmd(
    out: Annotated[Path, typer.Option(help="output .safetensors file")],
    arch: Annotated[str, typer.Option(help="architecture")] = "resnet18_cifar",
    width: Annotated[int | None, typer.Option(help="base width (resnet18_cifar, "
                                              "preact_resnet18; default 64)")] = None,
    data: Annotated[str, typer.Option(help="training data reference")] = "synthetic:?n=6000",
    test: Annotated[str | None, typer.Option(help="test data reference for C-Acc/ASR")] = None,
    attack: Annotated[str, typer.Option(help="attack name")] = "badnets",
    target: int = 0,
    rate: Annotated[float, typer.Option(help="poisoning rate")] = 0.1,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 128,
    augment: Annotated[bool, typer.Option(help="random crop + flip")] = True,
    seed: int = 0,
    param: ParamOpt = None,
    device: Annotated[str | None, typer.Option(help="torch device")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a backdoored model and save it as safetensors."""
    from .backdoor import BackdoorRecipe, make_backdoor
    from .checkpoint import save_model
    from .train import pick_device

    if out.suffix != ".safetensors":
        raise InputError(f"--out must end in .safetensors, got {out.name}")
    recipe = BackdoorRecipe(arch=arch, width=width, attack=attack, attack_params={**parse_kv(param),
                            "target": target}, rate=rate, epochs=epochs, lr=lr,
                            batch_size=batch_size, augment=augment, seed=seed)
    with progress_bar(not as_json) as sink:
        res = make_backdoor(recipe, data, test, device=pick_device(device),
                            progress=_engine_progress(sink))
    sha = save_model(res.model, out, attack=attack, target=str(target), rate=str(rate))
    info = {"checkpoint": str(out), "sha256": sha, "arch": arch, "attack": attack,
            "target": target, "rate": rate, "poisoned": res.poisoned, "c_acc": res.c_acc,
            "asr": res.asr, "seconds": round(res.seconds, 2),
            "images_per_second": round(res.images_per_second, 1), "warnings": res.warnings()}
    if not as_json:
        for text in info.pop("warnings"):
            typer.echo(f"warning: {text}", err=True)
    _emit(info, as_json)


def _emit(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            typer.echo(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}")


@app.command("eval")
@guarded
def eval_cmd(
    checkpoint: Path,
    arch: Annotated[str, typer.Option(help="architecture")],
    data: Annotated[str, typer.Option(help="test data reference")],
    num_classes: int = 10,
    width: Annotated[int | None, typer.Option(help="base width (as make-backdoor)")] = None,
    attack: Annotated[str | None, typer.Option(help="attack for ASR")] = None,
    target: int = 0,
    param: ParamOpt = None,
    device: Annotated[str | None, typer.Option(help="torch device")] = None,
    as_json: JsonOpt = False,
) -> None:
    """C-Acc (and ASR with --attack) of a checkpoint."""
    from . import data as data_mod
    from . import models
    from .attacks import build_trigger, triggered_test
    from .checkpoint import load_model, sha256_file
    from .metrics import attack_success_rate, clean_accuracy
    from .train import pick_device

    dev = pick_device(device)
    model = load_model(checkpoint, arch, num_classes, width=width).to(dev)
    test = data_mod.load(data, size=models.architecture(arch).input_size)
    info: dict[str, Any] = {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint),
                            "images": len(test), "c_acc": clean_accuracy(model, test)}
    if attack:
        trig = build_trigger(attack, {**parse_kv(param), "target": target})
        trig.bind(lambda ref: data_mod.load(ref, size=models.architecture(arch).input_size))
        info["asr"] = attack_success_rate(model, triggered_test(test, trig), target)
    _emit(info, as_json)


@app.command()
@guarded
def audit(
    checkpoint: Path,
    spec: Annotated[Path, typer.Option(help="audit spec (YAML or JSON)")],
    out: Annotated[Path, typer.Option(help="directory for report.json/.md/.html")] = Path(
        "ppr-report"),
    as_json: JsonOpt = False,
) -> None:
    """Run an audit in-process; print the summary and write the reports. Exit 1 if the
    spec's gate fails."""
    from .audit import run
    from .spec import load_spec

    s = load_spec(spec)
    with progress_bar(not as_json) as sink:
        outcome = run(s, checkpoint, progress=sink)
    write_reports(outcome.report, out)
    _print_report(outcome.report, as_json)
    if not as_json:
        typer.echo(f"reports written to {out}/report.{{json,md,html}}")
    if outcome.report.gate.passed is False:
        raise typer.Exit(1)


@app.command("import-backdoorbench")
@guarded
def import_backdoorbench_cmd(
    result: Annotated[Path, typer.Argument(help="BackdoorBench result folder (or its "
                                           "attack_result.pt)")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("bb-import"),
    clean: Annotated[str | None, typer.Option(help="the defender's clean data reference "
                                              "(default: BackdoorBench's own dataset path)")
                     ] = None,
    test: Annotated[str | None, typer.Option(help="clean test data reference")] = None,
    arch: Annotated[str | None, typer.Option(help="architecture (default: from the "
                                             "result's model name)")] = None,
    methods: Annotated[str, typer.Option(help="comma-separated methods of the spec")] =
        "ft,fst,bti_dbf,ep,pam",
    as_json: JsonOpt = False,
) -> None:
    """Import a BackdoorBench attack result: a safetensors checkpoint, the poisoned samples
    as ImageFolder archives, and an audit spec that gives the trigger by example."""
    from .bb_import import import_backdoorbench

    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    res = import_backdoorbench(result, out, clean=clean, test=test, arch=arch, methods=names)
    info = {"checkpoint": str(res.checkpoint), "spec": str(res.spec),
            "manifest": str(res.manifest), "arch": res.arch, "target": res.target,
            "test_examples": res.test_examples, "train_examples": res.train_examples}
    _emit(info, as_json)
    if not as_json:
        typer.echo(f"next: ppr audit {res.checkpoint} --spec {res.spec}")


@app.command()
@guarded
def purify(
    checkpoint: Path,
    method: Annotated[str, typer.Option(help="purification method")],
    arch: Annotated[str, typer.Option(help="architecture")],
    clean: Annotated[str, typer.Option(help="the defender's clean data reference")],
    test: Annotated[str, typer.Option(help="clean test data reference")],
    out: Annotated[Path, typer.Option(help="purified checkpoint (.safetensors)")],
    attacker: Annotated[str | None, typer.Option(
        help="the attacker's images for RA and QRA (default: set aside from --clean)")] = None,
    num_classes: int = 10,
    attack: Annotated[str | None, typer.Option(help="known trigger (for ASR, EP, RA)")] = None,
    target: int = 0,
    param: ParamOpt = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="method parameter "
                                                   "key=value")] = None,
    robustness: Annotated[bool, typer.Option(help="also run RA, QRA and LMC")] = False,
    until: Annotated[str | None, typer.Option(
        help="robust: attack each result with RA and its sweep and escalate the setting "
        "(rounds, then rho, then the reversed-sample share) until it is robust; exit 1 when "
        "no attempt is")] = None,
    max_attempts: Annotated[int, typer.Option(help="with --until, the most attempts")] = 4,
    seed: int = 0,
    device: Annotated[str | None, typer.Option(help="torch device")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run one purification method; write the purified checkpoint and its report."""
    from .audit import run
    from .checkpoint import save_model
    from .spec import validate_spec

    if out.suffix != ".safetensors":
        raise InputError(f"--out must end in .safetensors, got {out.name}")
    triggers = [{"attack": attack, "target": target, **parse_kv(param)}] if attack else []
    plan = {"methods": [{"name": method, **parse_kv(set_)}]}
    if until is not None:
        plan.update({"until": until, "max_attempts": max_attempts})
    elif not robustness:
        plan.update({"retune": {"enabled": False}, "qra": {"enabled": False},
                     "lmc": {"enabled": False}})
    s = validate_spec({"model": {"arch": arch, "num_classes": num_classes},
                       "data": {"clean": clean, "test": test, "attacker": attacker},
                       "triggers": triggers, "plan": plan, "seed": seed, "device": device})
    with progress_bar(not as_json) as sink:
        outcome = run(s, checkpoint, kind="purify", progress=sink)
    report = outcome.report
    model = outcome.models.get(s.plan.methods[0].key)
    if model is None:
        failed = "; ".join(f"{st.name}: {st.error}" for m in report.methods for st in m.stages
                           if st.status == "failed")
        raise InputError(f"{method} failed: {failed}")
    sha = save_model(model, out, method=method, source_sha256=report.provenance.checkpoint_sha256)
    write_reports(report, out.with_suffix("").with_name(out.stem + "-report"))
    for name, attempt in outcome.models.items():  # --until: every attempt's model
        if name.startswith(f"{s.plan.methods[0].key}#"):
            save_model(attempt, out.with_name(f"{out.stem}-attempt{name.rsplit('#', 1)[1]}"
                                              ".safetensors"), method=method,
                       source_sha256=report.provenance.checkpoint_sha256)
    _print_report(report, as_json)
    if not as_json:
        typer.echo(f"purified checkpoint: {out} (sha256 {sha[:12]})")
    if report.escalation is not None and not report.escalation.robust:
        if not as_json:
            typer.echo(f"not robust: {report.escalation.reason}", err=True)
        raise typer.Exit(1)


@app.command()
@guarded
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("out/demo"),
    quick: Annotated[bool, typer.Option(help="no QRA or LMC, a smaller backdoor budget")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The whole story on synthetic data: backdoor a model, audit it, write the HTML."""
    from .audit import run
    from .demo import PAM_NOTE, demo_spec, make_demo_model
    from .spec import spec_yaml

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "backdoored.safetensors"
    with progress_bar(not as_json) as sink:
        info = make_demo_model(ckpt, epochs=4 if quick else 8, progress=_engine_progress(sink))
        if not as_json:
            typer.echo(f"backdoored model: C-Acc {info['c_acc']:.3f}, ASR {info['asr']:.3f} "
                       f"({info['seconds']:.1f} s) -> {ckpt}")
        spec = demo_spec(quick)
        (out / "audit.yaml").write_text(spec_yaml(spec))
        outcome = run(spec, ckpt, progress=sink)
    paths = write_reports(outcome.report, out)
    _print_report(outcome.report, as_json)
    if not as_json:
        typer.echo(f"Note: {PAM_NOTE}.")
        typer.echo(f"HTML report: {paths['html']}")
