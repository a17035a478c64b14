"""`ttm`: one command for the trainer (train, models, presets) and, through entry points, the server's commands.

ttm/ never imports service/ or worker/: their sub-commands (admin, serve, worker) and the client commands register
themselves under the `ttm.cli` entry-point group, so `pip install ttm` on a laptop gives a working `ttm train`.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ttm.client_cli import Overrides

app = typer.Typer(no_args_is_help=True, add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
                  help="TTM/WTTM knowledge distillation: train locally, or run and use the job server.")
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"ttm {version('ttm')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("ttm (not installed)")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="print the version and exit")] = False) -> None:
    pass  # the options of `ttm` itself; its help is the Typer app's

EXIT_SPEC_ERROR = 2
EXIT_TRAINING_FAILED = 1


def require_trainer(command: str) -> None:
    """The trainer's commands need torch, which the base install (spec + client) leaves out."""
    missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        err.print(f"[bold red]ttm {command} needs the trainer[/] ({' and '.join(missing)} not installed): "
                  f"pip install 'ttm\\[train]'")
        raise typer.Exit(EXIT_TRAINING_FAILED) from None


def check_libraries(specs) -> None:
    """A student or teacher of an optional library (timm) that is not installed is a spec error here, said before
    any data is loaded."""
    from ttm.registry import missing_library
    from ttm.spec import SpecError

    archs = [(f, a) for s in specs for f, a in (("student.arch", s.student.arch),
                                                ("teacher.arch", getattr(s.teacher, "arch", None)))]
    problems = [(field, why) for field, arch in archs if arch and (why := missing_library(arch))]
    if problems:
        raise SpecError(problems)


def print_spec_error(error) -> None:
    err.print("[bold red]invalid spec[/]")
    for field, reason in error.problems:
        err.print(f"  [bold]{field or '<spec>'}[/]: {escape(reason)}")  # a reason may hold [brackets]


@app.command()
def train(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="job spec, YAML or JSON; several YAML "
                                              "documents run in order (e.g. a teacher, then its student)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="runs directory: each job writes OUT/<name>")] = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="continue from OUT/<name>/state.pt if present")] = True,
    stop_after: Annotated[int | None, typer.Option(help="stop after this epoch (resume later)")] = None,
    epochs: Annotated[int | None, typer.Option(help="override train.epochs (milestones past it are dropped)")] = None,
    data_root: Annotated[Path | None, typer.Option(help="where datasets live (torchvision layout)")] = None,
    overrides: Overrides = None,
    group: Annotated[bool, typer.Option("--group", help="train SPEC's documents together as one student group: "
                                        "one teacher forward per batch (they must share teacher, dataset, seed "
                                        "and batch plan)")] = False,
) -> None:
    """Train the student(s) of SPEC on this machine; one line per epoch, checkpoints every epoch.

    A teacher given as `{job: NAME}` is the best student of OUT/NAME, trained earlier or earlier in the same file.
    Needs `pip install 'ttm[train]'`.
    """
    require_trainer("train")
    from ttm.spec import SpecError, load_specs

    try:
        specs = load_specs(spec_path, overrides or [])
        specs = [_with_epochs(s, epochs) for s in specs] if epochs else specs
        check_libraries(specs)
    except SpecError as e:
        print_spec_error(e)
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    members = []
    for spec in specs:
        run_dir = out / spec.name
        if not resume:
            for name in ("state.pt", "metrics.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
        if spec.teacher is not None and spec.teacher.job:
            spec = _teacher_from_run(spec, out / spec.teacher.job)
        if spec.teacher is not None and spec.teacher.zoo:
            spec = _teacher_from_zoo(spec)
        if group:
            members.append(spec)
        else:
            _run_with_progress(spec, run_dir, stop_after, str(data_root) if data_root else None)
    if group:
        _run_group(members, out, stop_after, str(data_root) if data_root else None)


def _with_epochs(spec, epochs: int):
    """The spec run for `epochs` instead: the paper's default milestones scale with it; milestones the spec wrote
    keep those up to `epochs`."""
    from ttm.spec import paper_milestones, parse_spec

    data = spec.model_dump(mode="json", exclude_none=True)
    data.pop("preset", None)  # already applied
    sched = data["train"]["schedule"]
    if sched.get("milestones") == paper_milestones(data["train"]["epochs"]):
        del sched["milestones"]  # the default, filled in: scaled again to the new length
    elif sched.get("milestones"):
        sched["milestones"] = [m for m in sched["milestones"] if m <= epochs]
    data["train"]["epochs"] = epochs
    if sched.get("warmup_epochs", 0) >= epochs:
        sched["warmup_epochs"] = 0
    return parse_spec(data)


def _teacher_from_run(spec, run_dir: Path):
    """Locally, `teacher: {job: NAME}` means the best student of the run directory NAME."""
    import json

    manifest = run_dir / "best.json"
    if not manifest.exists():
        err.print(f"[bold red]invalid spec[/]\n  [bold]teacher.job[/]: no finished run at {run_dir} "
                  f"(train it first, or list it earlier in the same file)")
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    arch = json.loads(manifest.read_text())["arch"]
    teacher = spec.teacher.model_copy(update={"job": None, "arch": arch, "weights": str(run_dir / "best.safetensors"),
                                              "format": "safetensors"})
    return spec.model_copy(update={"teacher": teacher})


def _teacher_from_zoo(spec):
    """Locally, `teacher: {zoo: NAME}` is the zoo's file itself."""
    from ttm import zoo

    entry = zoo.get(spec.teacher.zoo)
    teacher = spec.teacher.model_copy(update={"zoo": None, "arch": entry.arch, "weights": str(entry.path),
                                              "format": "safetensors"})
    return spec.model_copy(update={"teacher": teacher})


def _run_with_progress(spec, out: Path, stop_after: int | None, data_root: str | None) -> None:
    from rich.logging import RichHandler
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ttm.teacher import WeightsError
    from ttm.train import TrainingError
    from ttm.train import train as run_training

    logger = logging.getLogger("ttm.train")
    if err.is_terminal:
        handler: logging.Handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    else:  # a file or a pipe: whole lines (rich would wrap them at 80 columns)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("epoch {task.fields[epoch]}/{task.total:.0f} {task.fields[step]}"),
               TextColumn("top-1 {task.fields[top1]}"), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task(spec.name, total=spec.train.epochs, top1="-", epoch=0, step="")

            def on_metrics(epoch: int, metrics: dict[str, float]) -> None:
                if epoch > 0:
                    progress.update(task, completed=epoch, top1=f"{metrics['test/top1']:.2f}", epoch=epoch, step="")

            def on_progress(epoch: int, step: int, steps: int) -> None:  # the bar moves within the epoch
                progress.update(task, completed=epoch - 1 + step / steps, epoch=epoch - 1,
                                step=f"(epoch {epoch}: step {step}/{steps})")

            result = run_training(spec, out, on_metrics=on_metrics, stop_after_epoch=stop_after, data_root=data_root,
                                  on_progress=on_progress)
    except (TrainingError, WeightsError, FileNotFoundError, ValueError) as e:
        err.print(f"[bold red]training failed:[/] {escape(str(e))}")
        raise typer.Exit(EXIT_TRAINING_FAILED) from None
    finally:
        logger.removeHandler(handler)
    print(f"best test top-1 {result.best_top1:.2f} (epoch {result.best_epoch}); student: {out / 'best.safetensors'}")


def _run_group(specs, out: Path, stop_after: int | None, data_root: str | None) -> None:
    """`ttm train --group`: the documents as one student group (ttm.group), a log line per member and epoch."""
    from ttm.group import GroupError, train_group
    from ttm.teacher import WeightsError
    from ttm.train import TrainingError

    logger = logging.getLogger("ttm.group")  # the members' loggers are its children
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        results = train_group(specs, [out / s.name for s in specs], stop_after_epoch=stop_after, data_root=data_root)
    except GroupError as e:
        err.print(f"[bold red]not one student group[/]\n  {escape(str(e))}")
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    except (TrainingError, WeightsError, FileNotFoundError, ValueError) as e:
        err.print(f"[bold red]training failed:[/] {escape(str(e))}")
        raise typer.Exit(EXIT_TRAINING_FAILED) from None
    finally:
        logger.removeHandler(handler)
    for r in results:
        name = r.member.spec.name
        if r.result is None:
            err.print(f"[bold red]{escape(name)} failed:[/] {escape(r.error or '')}")
        else:
            print(f"{name}: {r.state}, best test top-1 {r.result.best_top1:.2f} (epoch {r.result.best_epoch}); "
                  f"student: {r.member.out_dir / 'best.safetensors'}")
    if any(r.state == "failed" for r in results):
        raise typer.Exit(EXIT_TRAINING_FAILED)


@app.command()
def models() -> None:
    """List the architectures a spec may name."""
    from ttm.registry import CIFAR_ARCHS, IMAGENET_ARCHS

    for name in CIFAR_ARCHS + IMAGENET_ARCHS:
        print(name)
    print("torchvision/<name>   any torchvision classification model, e.g. torchvision/resnet18")
    print("timm/<name>          any timm model, e.g. timm/mobilenetv3_small_100 (pip install 'ttm[timm]')")


@app.command()
def presets(prefix: Annotated[str, typer.Argument(help="show only presets starting with this")] = "") -> None:
    """List the paper's presets (γ, β from Tables 8–10; recipes from NOTES.md)."""
    from ttm.presets import PRESETS

    for name, p in PRESETS.items():
        if name.startswith(prefix):
            loss = p["loss"]
            params = ", ".join(f"{k}={v}" for k, v in loss.items() if k != "kind")
            print(f"{name:48s} {loss['kind']:5s} {params}  lr={p['train']['lr']} epochs={p['train']['epochs']}")


@app.command()
def zoo(as_json: Annotated[bool, typer.Option("--json", help="the manifests, as JSON")] = False) -> None:
    """List the teacher zoo: teachers this project trained, for `teacher: {zoo: NAME}` in a spec."""
    import json

    from ttm import zoo as teacher_zoo

    entries = teacher_zoo.teachers()
    if as_json:
        print(json.dumps({name: t.manifest for name, t in entries.items()}, indent=2))
        return
    print(f"{'name':28s} {'arch':10s} {'test top-1 %':>12s} {'params':>9s} {'MB':>5s}  made by")
    for name, t in entries.items():
        m = t.manifest
        print(f"{name:28s} {t.arch:10s} {m['top1']:12.2f} {m['params']:9,d} {t.path.stat().st_size / 1e6:5.1f}  "
              f"{m['command']}")


@app.command()
def predict(
    student: Annotated[Path, typer.Argument(help="a student file (.safetensors as `ttm download` gives it)")],
    images: Annotated[list[Path], typer.Argument(help="image files (PNG, JPEG), or folders of them")],
    top: Annotated[int, typer.Option(min=1, help="classes to print per image")] = 1,
) -> None:
    """Classify images with a student: one line per image, its top classes and their probabilities."""
    require_trainer("predict")
    from ttm.student import load_student
    from ttm.teacher import WeightsError

    try:
        model = load_student(student)
    except (ValueError, WeightsError, FileNotFoundError) as e:
        err.print(f"[bold red]cannot load {student}[/]: {escape(str(e))}")  # e.g. pip install 'ttm[timm]'
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    files = [f for p in images for f in (sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p])]
    for f in files:
        try:
            (classes,) = model.ranked([f], top)
        except (RuntimeError, OSError) as e:
            err.print(f"{f}: not an image this can read ({str(e).splitlines()[0][:200]})")
            continue
        print(f"{f}\t" + "\t".join(f"{name} {p:.3f}" for name, p in classes))


@app.command("validate")
def validate(spec_path: Annotated[Path, typer.Argument(metavar="SPEC")]) -> None:
    """Check a spec without training; prints the full spec with the preset applied."""
    from ttm.spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as e:
        print_spec_error(e)
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    print(spec.model_dump_json(indent=2, exclude_none=True))


def _mount_client() -> None:
    """The client commands (upload, submit, jobs, status, watch, logs, cancel, download) talk to a job server."""
    from ttm.client_cli import register

    register(app)


def _mount_plugins(command: str | None = None) -> None:
    """Sub-commands that live outside ttm/ (server, worker, client) register as `ttm.cli` entry points. One whose
    dependencies are missing (the base install has no server parts) becomes a command that says what to install,
    and never breaks the others. With `command` (the word the user typed), only that one is loaded, if it is one
    of them: `ttm status` does not import the server (half a second of every client command's start)."""
    for ep in entry_points(group="ttm.cli"):
        if command is not None and ep.name != command:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001  (a partial install: the trainer and the client still work)
            logging.getLogger("ttm").debug("ttm %s unavailable: %r", ep.name, e)
            _mount_missing(ep.name, e)
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=ep.name)
        else:
            app.command(ep.name)(obj)


def _mount_missing(name: str, error: Exception) -> None:
    reason = f"{error.name} is not installed" if isinstance(error, ImportError) and error.name else repr(error)

    def unavailable(ctx: typer.Context) -> None:
        err.print(f"[bold red]ttm {name} needs the server's parts[/] ({reason}): pip install 'ttm\\[server]'")
        raise typer.Exit(EXIT_TRAINING_FAILED) from None

    app.command(name, help=f"(needs `pip install 'ttm[server]'`: {reason})", add_help_option=False,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(unavailable)


def main() -> None:
    _mount_client()
    word = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None
    plugins = {ep.name for ep in entry_points(group="ttm.cli")}
    ours = {c.name or typer.main.get_command_name(c.callback.__name__) for c in app.registered_commands
            if c.callback is not None} | {g.name for g in app.registered_groups}
    # all of them for `ttm`, `ttm --help` or a mistyped command (whose error lists every command)
    _mount_plugins(word if word in plugins | ours else None)
    app(prog_name="ttm")


if __name__ == "__main__":
    main()  # typer exits with the command's code
