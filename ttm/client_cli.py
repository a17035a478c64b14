"""The client commands of `ttm`: upload, submit, jobs, status, watch, logs, cancel, tag, note, metrics, download,
tensorboard, reproduce.

They talk to a job server (`--server`/TTM_SERVER, `--token`/TTM_TOKEN) through `ttm.client`. What a script reads
goes to stdout (a job id, a file path, or with `--json` exactly one JSON object); progress and messages go to
stderr. Exit codes are `Exit` below (docs/CLI.md has the table). `register(app)` adds the commands to a Typer app;
`python -m ttm.client_cli` runs them alone. Only typer is imported up front, so `ttm train` starts as fast as before.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from ttm.client import Client, Event


class Exit(IntEnum):
    """The exit status of every client command (the table in docs/CLI.md)."""

    SUCCEEDED = 0  # the job succeeded (and passed --min-accuracy); or the command did what it was asked
    FAILED = 1  # the job failed
    BAD_SPEC = 2  # the spec is invalid (locally or 422 from the server), or the command line is
    CANCELLED = 3  # the job was cancelled
    TIMED_OUT = 4  # --timeout passed before the job finished (the job goes on unless --cancel-on-timeout), or before
    # the export a download waits for was made (it goes on)
    BELOW_MIN_ACCURACY = 5  # the job succeeded with a best test top-1 under --min-accuracy
    UNREACHABLE = 6  # no answer from the server, after retries
    AUTH = 7  # the token is missing, unknown (401) or not allowed (403)
    API_ERROR = 8  # any other error answer (404 no such job, 409 idempotency conflict, ...)
    ALREADY_FINISHED = 9  # `ttm cancel` of a job that had ended already: nothing to do (harmless in a clean-up step)


RESULTS = {Exit.SUCCEEDED: "succeeded", Exit.FAILED: "failed", Exit.CANCELLED: "cancelled",
           Exit.TIMED_OUT: "timed_out", Exit.BELOW_MIN_ACCURACY: "below_min_accuracy"}


# ---------------------------------------------------------------------------------------------- options
def parse_duration(value: str | None) -> float | None:
    """'2h', '90m', '1h30m', '45s', '1.5h' or plain seconds → seconds."""
    if value is None:
        return None
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", text)
    if not parts or re.sub(r"\s", "", "".join(n + u for n, u in parts)) != re.sub(r"\s", "", text):
        raise typer.BadParameter(f"{value!r} is not a duration: write e.g. 2h, 90m, 1h30m, 45s or seconds")
    scale = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(float(n) * scale[u] for n, u in parts)


Server = Annotated[str | None, typer.Option(
    "--server", envvar="TTM_SERVER", show_envvar=True, help="job server URL [default: http://127.0.0.1:8000]")]
Token = Annotated[str | None, typer.Option(
    "--token", envvar="TTM_TOKEN", show_envvar=True, show_default=False,
    help="API token (`ttm admin user create NAME` prints one)")]
Json = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout (progress stays on stderr)")]
Retries = Annotated[int, typer.Option(min=0, help="retries after connection errors and 5xx answers")]
JobId = Annotated[str, typer.Argument(metavar="ID", help="a job id (job_...)")]
Timeout = Annotated[str | None, typer.Option(
    help="stop waiting after this long (2h, 90m, 45s): exit 4", show_default=False)]
def _percent(value: float | None) -> float | None:
    if value is None:
        return None
    if not 1 <= value <= 100:
        hint = f"; is it a fraction? as a percentage that is {value * 100:g}" if 0 < value < 1 else ""
        raise typer.BadParameter(f"{value:g} is not a top-1 percentage between 1 and 100{hint}")
    return value


MinAccuracy = Annotated[float | None, typer.Option(
    "--min-accuracy", help="exit 5 when the best test top-1 (a percentage, 1-100) is below this", show_default=False,
    callback=_percent)]
Output = Annotated[Path | None, typer.Option(
    "--output", "-o", help="download the student here when the job succeeds (the format follows the suffix: "
                           ".safetensors, .onnx, .pt2, .ts, else pt)", show_default=False)]
Which = Annotated[str, typer.Option(help="best | last checkpoint")]
Format = Annotated[str | None, typer.Option(
    "--format", help="pt | safetensors | onnx | pt2 | torchscript (the last three: exports of the best student; "
                     "one the job did not make is made by the server on this request) [default: from -o's suffix, "
                     "else pt]", show_default=False)]
CancelOnTimeout = Annotated[bool, typer.Option("--cancel-on-timeout", help="cancel the job when --timeout passes")]
Overrides = Annotated[list[str] | None, typer.Option(
    "--set", metavar="FIELD=VALUE", help="change the spec: a dotted field and a YAML value (train.lr=0.1, "
                                         "loss.kind=kd, 'loss={kind: kd, temperature: 4}'; null removes); repeat",
    show_default=False)]
Tags = Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeat for more)", show_default=False)]


# ---------------------------------------------------------------------------------------------- output
def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def _client(server: str | None, token: str | None, retries: int) -> Client:
    import logging

    class _StderrHandler(logging.StreamHandler):
        """Writes to sys.stderr as it is at each record (a test runner swaps it per command)."""

        @property
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, _: Any) -> None:
            pass

    from ttm.client import Client

    logger = logging.getLogger("ttm.client")
    if not logger.handlers:  # retries and uploads are worth a line on stderr
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("ttm: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return Client(server, token, retries=retries)


def _code_for(status: int) -> Exit:
    if status in (401, 403):
        return Exit.AUTH
    if status in (400, 422):
        return Exit.BAD_SPEC
    return Exit.API_ERROR


@contextmanager
def _errors(json_out: bool) -> Iterator[None]:
    """Every failure becomes a message (stderr, or a JSON object on stdout with --json) and its exit code."""
    from ttm.client import ApiError, ChecksumMismatch, ServerUnreachable, UnsafeArchive, WaitTimeout
    from ttm.spec import SpecError

    err = _stderr()
    try:
        yield
    except SpecError as e:
        problems = [{"field": f, "message": m} for f, m in e.problems]

        def human_problems() -> None:
            err.print("[bold red]invalid spec[/]")
            for p in problems:
                err.print(f"  [bold]{p['field'] or '<spec>'}[/]: {p['message']}")

        first = problems[0] if problems else {"field": "", "message": str(e)}
        error = {"code": "invalid_spec", "message": f"{first['field'] or 'spec'}: {first['message']}",
                 "errors": problems}  # the shape of the server's 422 (service/errors.py spec_error)
        if first["field"]:
            error["field"] = first["field"]
        _fail(json_out, Exit.BAD_SPEC, error, human_problems)
    except ApiError as e:
        api_error, code = e, _code_for(e.status)
        hint = ""
        if code is Exit.AUTH:
            hint = "\n  give a token with --token or TTM_TOKEN (`ttm admin user create NAME` prints one)"

        def human() -> None:
            err.print(f"[bold red]error[/] ({api_error.status} {api_error.code}): {api_error.message}{hint}",
                      markup=True)
            for p in api_error.errors if len(api_error.errors) > 1 else []:
                err.print(f"  [bold]{p.get('field') or '<spec>'}[/]: {p.get('message')}")

        _fail(json_out, code, e.as_dict(), human)
    except ServerUnreachable as e:
        text = str(e)
        _fail(json_out, Exit.UNREACHABLE, {"code": "unreachable", "message": text},
              lambda: err.print(f"[bold red]server unreachable:[/] {text}"))
    except WaitTimeout as e:  # a download's wait for an export made on request (a job's wait is _follow's)
        text = str(e)
        _fail(json_out, Exit.TIMED_OUT, {"code": "timed_out", "message": text},
              lambda: err.print(f"[bold red]timed out:[/] {text}", markup=True))
    except ChecksumMismatch as e:
        text = str(e)
        _fail(json_out, Exit.API_ERROR, {"code": "checksum_mismatch", "message": text},
              lambda: err.print(f"[bold red]checksum mismatch:[/] {text}"))
    except UnsafeArchive as e:
        text = str(e)
        _fail(json_out, Exit.API_ERROR, {"code": "unsafe_archive", "message": text},
              lambda: err.print(f"[bold red]refused:[/] {text}"))
    except (FileNotFoundError, IsADirectoryError, ValueError) as e:
        text = str(e)
        _fail(json_out, Exit.BAD_SPEC, {"code": "bad_usage", "message": text},
              lambda: err.print(f"[bold red]error:[/] {text}"))
    except KeyboardInterrupt:
        err.print("interrupted (the job goes on; `ttm cancel ID` stops it)")
        raise typer.Exit(130) from None


def export_progress(console: Console) -> Callable[[dict[str, Any]], None]:
    """What a download waiting for an export made on request says on stderr: a line each time its state changes."""
    said: set[str] = set()

    def on_pending(body: dict[str, Any]) -> None:
        state = str((body.get("export") or {}).get("state") or "requested")
        if state not in said:
            said.add(state)
            console.print(f"ttm: {body.get('message') or f'the export is being made ({state})'}", markup=False)

    return on_pending


def _fail(json_out: bool, code: Exit, error: dict[str, Any], human: Any) -> None:
    if json_out:
        _print_json({"error": error, "exit_code": int(code)})
    else:
        human()
    raise typer.Exit(int(code))


# ---------------------------------------------------------------------------------------------- following a job
class JobProgress:
    """A job's events on stderr: a live bar (epoch, loss, test top-1, ETA) where stderr is a terminal, and one
    line per state change and per epoch everywhere (a CI log keeps them)."""

    def __init__(self, job: dict[str, Any], console: Console):
        self.job, self.console = job, console
        self.total = int(job.get("spec", {}).get("train", {}).get("epochs") or 0) or None
        self.epochs: dict[int, dict[str, float]] = {}
        self.printed: set[int] = set()
        self.progress: Any = None

    def __enter__(self) -> JobProgress:
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("epoch {task.fields[epoch]}/{task.total}"),
            TextColumn("{task.fields[step]}"), TextColumn("loss {task.fields[loss]}"),
            TextColumn("top-1 {task.fields[top1]}"), TextColumn("ETA {task.fields[eta]}"), console=self.console,
            transient=True, disable=not self.console.is_terminal)
        self.progress.__enter__()
        self.task = self.progress.add_task(self.job.get("name") or self.job["id"], total=self.total, loss="-",
                                           top1="-", eta="-", epoch=0, step="")
        return self

    def __exit__(self, *exc: object) -> None:
        self._flush()
        self.progress.__exit__(*exc)

    def on_event(self, event: Event) -> None:
        if event.type == "state":
            self._flush()
            d = event.data
            reason = f" ({d['reason']})" if d.get("reason") else ""
            self.console.print(f"{self.job['id']}: [bold]{d.get('state')}[/]{reason}")
        elif event.type == "metric":
            epoch, name, value = int(event.data["epoch"]), event.data["name"], float(event.data["value"])
            if epoch == 0:  # before the first epoch: the teacher's accuracy on the test split, said at once
                if name == "teacher/top1":
                    self.console.print(f"teacher: test top-1 {value:.2f}%")
                    self.progress.update(self.task, top1=f"teacher {value:.2f}")
                return
            if any(e < epoch and e not in self.printed for e in self.epochs):
                self._flush()
            self.epochs.setdefault(epoch, {})[name] = value
            m = self.epochs[epoch]
            fields: dict[str, Any] = {}
            if "train/loss" in m:
                fields["loss"] = f"{m['train/loss']:.4f}"
            if "test/top1" in m:
                fields["top1"] = f"{m['test/top1']:.2f}"
            if "eta_s" in m:
                fields["eta"] = _hms(m["eta_s"])
            self.progress.update(self.task, completed=epoch, epoch=epoch, step="", **fields)
            if name == "eta_s":  # the trainer's last metric of an epoch
                self._print_epoch(epoch)
        elif event.type == "progress":  # within an epoch: the bar moves (a CI log keeps the epoch lines only)
            d = event.data
            epoch, step, steps = int(d["epoch"]), int(d["step"]), max(1, int(d["steps"]))
            self.progress.update(self.task, completed=epoch - 1 + step / steps,
                                 step=f"(epoch {epoch}: step {step}/{steps})")

    def _flush(self) -> None:
        for epoch in sorted(self.epochs):
            self._print_epoch(epoch)

    def _print_epoch(self, epoch: int) -> None:
        if epoch in self.printed:
            return
        self.printed.add(epoch)
        m = self.epochs[epoch]
        parts = [f"epoch {epoch}/{self.total or '?'}"]
        for key, label, fmt in (("train/loss", "loss", ".4f"), ("test/top1", "top-1", ".2f"),
                                ("test/entropy", "H(q)", ".3f"), ("test/kl", "KL", ".4f")):
            if key in m:
                parts.append(f"{label} {m[key]:{fmt}}")
        if "eta_s" in m:
            parts.append(f"ETA {_hms(m['eta_s'])}")
        self.console.print("  ".join(parts))


def _hms(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def follow(client: Client, job: dict[str, Any], *, timeout: float | None, min_accuracy: float | None,
           output: Path | None, which: str, fmt: str | None, cancel_on_timeout: bool, json_out: bool) -> Exit:
    """Watch a job to its end and turn the end into an exit code; download the student when it is accepted."""
    code, result = _follow(client, job, timeout=timeout, min_accuracy=min_accuracy, output=output, which=which,
                           fmt=fmt, cancel_on_timeout=cancel_on_timeout)
    if json_out:
        _print_json(result)
    return code


def _follow(client: Client, job: dict[str, Any], *, timeout: float | None, min_accuracy: float | None,
            output: Path | None, which: str, fmt: str | None, cancel_on_timeout: bool
            ) -> tuple[Exit, dict[str, Any]]:
    from ttm.client import WaitTimeout

    err = _stderr()
    final: dict[str, Any]
    file: Path | None = None
    with JobProgress(job, err) as progress:
        try:
            final = client.wait(job["id"], timeout=timeout, on_event=progress.on_event)
            code = {"succeeded": Exit.SUCCEEDED, "failed": Exit.FAILED}.get(final["state"], Exit.CANCELLED)
        except WaitTimeout as e:
            final, code = e.job or client.job(job["id"]), Exit.TIMED_OUT
            if cancel_on_timeout:
                final = client.cancel(job["id"])
    best = final.get("best_top1")
    if code is Exit.SUCCEEDED and min_accuracy is not None and (best is None or best < min_accuracy):
        code = Exit.BELOW_MIN_ACCURACY
    if code is Exit.SUCCEEDED and output is not None:
        file = client.download(final["id"], which, fmt, output, on_pending=export_progress(err))
    messages = {
        Exit.SUCCEEDED: f"succeeded: best test top-1 {_pct(best)}" + (f"; student saved to {file}" if file else ""),
        Exit.FAILED: f"failed: {final.get('reason') or 'no reason given'}",
        Exit.CANCELLED: f"cancelled: {final.get('reason') or ''}",
        Exit.TIMED_OUT: f"timed out after {_hms(timeout or 0)}; the job is {final['state']}"
                        + ("" if cancel_on_timeout or final["state"] != "running" else
                           f" and goes on (`ttm cancel {final['id']}` stops it)"),
        Exit.BELOW_MIN_ACCURACY: f"best test top-1 {_pct(best)} is below --min-accuracy {min_accuracy:g}"
        if min_accuracy is not None else "",
    }
    style = "green" if code is Exit.SUCCEEDED else "red"
    err.print(f"{final['id']} [bold {style}]{messages[code]}[/]")
    return code, {"job": final, "file": str(file) if file else None, "result": RESULTS[code],
                  "exit_code": int(code)}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


# ---------------------------------------------------------------------------------------------- commands
def upload(
    file: Annotated[Path, typer.Argument(help="teacher weights: a state_dict (.pt/.pth), safetensors or TorchScript")],
    project: Annotated[str | None, typer.Option(help="share it with a project of yours: its members may name it as "
                                                     "a teacher", show_default=False)] = None,
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """Upload teacher weights; prints the artifact id.

    The sha256 goes first: a file the server already has from you is not sent again."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            artifact = client.upload(file, project=project)
        if json_out:
            _print_json(artifact)
            return
        note = f"uploaded {artifact['size']} bytes" if artifact["uploaded"] else "already on the server"
        _stderr().print(f"{file}: {note}; format {artifact['format']}; sha256 {artifact['sha256']}")
        print(artifact["id"])


def upload_dataset(
    file: Annotated[Path, typer.Argument(help="an ImageFolder tree (train/<class>/<image>, val/<class>/<image>) as "
                                              ".tar, .tar.gz or .zip")],
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """Send a data set; prints its id, for `dataset: {name: imagefolder, id: ds_...}` in a spec.

    The server unpacks it and checks every entry (no links, no paths out of the tree, images that decode)."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            dataset = client.upload_dataset(file)
        if json_out:
            _print_json(dataset)
            return
        counts = ", ".join(f"{split} {sum(c.values())}" for split, c in dataset["counts"].items())
        _stderr().print(f"{file}: {len(dataset['classes'])} classes, {counts} images")
        print(dataset["id"])


def submit(
    spec: Annotated[Path | None, typer.Argument(metavar="[SPEC]", help="job spec (YAML or JSON); a local teacher "
                                                                       "file in it is uploaded for you",
                                                show_default=False)] = None,
    from_job: Annotated[str | None, typer.Option(
        "--from", metavar="JOB", help="instead of SPEC: the spec job JOB ran, changed by --set", show_default=False)]
    = None,
    overrides: Overrides = None, tags: Tags = None,
    note: Annotated[str | None, typer.Option(help="a note on the job", show_default=False)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job to its end; the exit code says how it "
                                                      "ended")] = False,
    timeout: Timeout = None, min_accuracy: MinAccuracy = None, output: Output = None, which: Which = "best",
    fmt: Format = None,
    idempotency_key: Annotated[str | None, typer.Option(
        help="a retried submit with the same key returns the first job instead of a second one; name one "
             "attempt of one CI job (e.g. \"$CI_PIPELINE_ID-$CI_JOB_ID\"); 1-200 printable ASCII characters",
        show_default=False)] = None,
    cancel_on_timeout: CancelOnTimeout = False,
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """Submit a job; prints its id. With --wait, follow it to its end with a live progress bar.

    A file of several specs (YAML documents separated by `---`, as `ttm train` runs them) is one pipeline: a student
    may name an earlier spec as `teacher: {job: NAME}`, and waits for it on the server. Its ids are printed in
    order; --wait follows each job in turn, --min-accuracy gates every one of them and -o downloads the last one's
    student.

    `--from JOB --set train.lr=0.1` runs JOB again with a change (the new job is a job of its own).

    --min-accuracy and -o imply --wait. Exit codes: 0 succeeded, 1 failed, 2 bad spec, 3 cancelled, 4 timed out,
    5 below --min-accuracy, 6 server unreachable, 7 auth, 8 other API error."""
    from ttm.spec import SpecError, load_specs

    seconds = parse_duration(timeout)
    with _errors(json_out):
        if (spec is None) == (from_job is None):
            raise SpecError([("", "give a spec file, or --from JOB to run a job's spec again (not both)")])
        if from_job is not None:
            with _client(server, token, retries) as client:
                specs: list[Any] = [client.clone_spec(from_job, overrides or [])]
        else:
            assert spec is not None
            specs = list(load_specs(spec, overrides or []))
        if len(specs) > 1:
            with _client(server, token, retries) as client:
                code = _submit_pipeline(client, specs, idempotency_key, wait=wait, timeout=seconds,
                                        min_accuracy=min_accuracy, output=output, which=which, fmt=fmt,
                                        cancel_on_timeout=cancel_on_timeout, json_out=json_out)
            raise typer.Exit(int(code))
        with _client(server, token, retries) as client:
            job = client.submit(specs[0], idempotency_key=idempotency_key, tags=tags or [], note=note)
            where = f", position {job['queue_position']} in the {job['queue']} queue" if job.get("queue_position") \
                else ""
            _stderr().print(f"{job['id']}: [bold]{job['state']}[/]{where}")
            if not (wait or min_accuracy is not None or output is not None):
                _print_json(job) if json_out else print(job["id"])
                return
            if not json_out:
                print(job["id"])
            code = follow(client, job, timeout=seconds, min_accuracy=min_accuracy, output=output, which=which,
                          fmt=fmt, cancel_on_timeout=cancel_on_timeout, json_out=json_out)
    raise typer.Exit(int(code))


def _submit_pipeline(client: Client, specs: list, key: str | None, *, wait: bool, timeout: float | None,
                     min_accuracy: float | None, output: Path | None, which: str, fmt: str | None,
                     cancel_on_timeout: bool, json_out: bool) -> Exit:
    jobs = client.submit_pipeline(specs, idempotency_key=key)
    err = _stderr()
    for job in jobs:
        why = f", waits for {job['waits_for']}" if job.get("waits_for") else ""
        err.print(f"{job['id']} ({job['name']}): [bold]{job['state']}[/]{why}")
    if not (wait or min_accuracy is not None or output is not None):
        _print_json({"jobs": jobs}) if json_out else print("\n".join(job["id"] for job in jobs))
        return Exit.SUCCEEDED
    if not json_out:
        print("\n".join(job["id"] for job in jobs))
    code, results = Exit.SUCCEEDED, []
    for job in jobs:
        this, result = _follow(client, job, timeout=timeout, min_accuracy=min_accuracy,
                               output=output if job is jobs[-1] else None, which=which, fmt=fmt,
                               cancel_on_timeout=cancel_on_timeout)
        results.append(result)
        code = this if code is Exit.SUCCEEDED else code  # the first job that did not succeed says how it ended
    if json_out:
        _print_json({"jobs": results, "result": RESULTS[code], "exit_code": int(code)})
    return code


def watch(
    job_id: JobId, timeout: Timeout = None, min_accuracy: MinAccuracy = None, output: Output = None,
    which: Which = "best", fmt: Format = None, cancel_on_timeout: CancelOnTimeout = False,
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """Follow a job live until it ends; the exit code says how it ended (as for submit --wait).

    The progress bar is fed by Server-Sent Events; a dropped connection is resumed where it broke off."""
    seconds = parse_duration(timeout)
    with _errors(json_out):
        with _client(server, token, retries) as client:
            code = follow(client, client.job(job_id), timeout=seconds, min_accuracy=min_accuracy, output=output,
                          which=which, fmt=fmt, cancel_on_timeout=cancel_on_timeout, json_out=json_out)
    raise typer.Exit(int(code))


def jobs(
    state: Annotated[list[str] | None, typer.Option(
        help="only these states (repeat, or comma-separate): waiting, queued, running, cancelling, succeeded, "
             "failed, cancelled", show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 50,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="only jobs with this tag (repeat: with all of "
                                                                 "them)", show_default=False)] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="only jobs with this text in their name or "
                                                                      "note (ignoring case)", show_default=False)]
    = None,
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """List your jobs (an admin: everyone's), newest first; filter by state, tag and text."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            items = client.jobs(state=",".join(state) if state else None, limit=limit, tags=tags or [],
                                search=search)
        if json_out:
            _print_json({"items": items})
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for column in ("ID", "NAME", "STATE", "QUEUE", "POS", "OWNER", "LOSS", "TOP-1", "CREATED", "TAGS"):
            table.add_column(column, no_wrap=column in ("ID", "CREATED"))
        for j in items:
            table.add_row(j["id"], j["name"], j["state"], j["queue"], str(j.get("queue_position") or ""),
                          j["owner"], j.get("spec", {}).get("loss", {}).get("kind", ""), _pct(j.get("best_top1")),
                          str(j["created_at"])[:19].replace("T", " "), ",".join(j.get("tags", [])))
        out = Console(highlight=False)
        if not out.is_terminal:  # piped: full lines, whatever the width
            out = Console(highlight=False, width=240)
        out.print(table)


def queue(
    name: Annotated[str, typer.Argument(help="gpu or cpu", show_default=True)] = "gpu",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="the first this many")] = 50,
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """The queue in the order its jobs will start, why (class, the owner's usage over share), and when."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            shown, me = client.queue(name, limit), client.me()
        if json_out:
            _print_json(shown)
            return
        from rich.console import Console
        from rich.table import Table

        out = Console(highlight=False)
        if not out.is_terminal:
            out = Console(highlight=False, width=240)
        out.print(f"queue {shown['queue']}: {shown['queued']} queued, {shown['running']} running on "
                  f"{shown['workers']} worker{'s' if shown['workers'] != 1 else ''}; you: {me['usage_hours']:.2f} "
                  f"slot-hours lately, share {me['weight']:g}, classes {','.join(me['priorities'])}")
        table = Table(box=None, header_style="bold")
        for column in ("POS", "CLASS", "ID", "NAME", "OWNER", "OWNER USAGE/SHARE", "ETA"):
            table.add_column(column, no_wrap=True)
        for e in shown["items"]:
            eta = "-" if e["eta_seconds"] is None else _hms(e["eta_seconds"])
            usage = f"{e['owner_usage_hours']:.2f} h / {e['owner_share']:g}" + (" (at max-running)"
                                                                                 if e["held_back"] else "")
            table.add_row(str(e["position"]), e["priority"], e["id"] or "", e["name"] or "", e["owner"] or "(other)",
                          usage, eta)
        out.print(table)


def status(job_id: JobId, server: Server = None, token: Token = None, json_out: Json = False,
           retries: Retries = 5) -> None:
    """Show one job: state, queue position, times, best accuracy, reason."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            job = client.job(job_id)
            client_metrics = client.metrics(job_id) if not json_out and job["state"] != "waiting" else []
            mlflow = None if json_out else _mlflow_line(client, job_id)
        if json_out:
            _print_json(job)
            return
        loss = job.get("spec", {}).get("loss", {})
        progress = _progress(client_metrics, job)
        rows = [("id", job["id"]), ("name", job["name"]), ("state", job["state"]), ("owner", job["owner"]),
                ("queue", job["queue"] + (f" (position {job['queue_position']})" if job.get("queue_position")
                                          else "")),
                ("loss", ", ".join(f"{k}={v}" for k, v in loss.items())), ("attempts", job.get("attempts")),
                ("created", job.get("created_at")), ("started", job.get("started_at")),
                ("finished", job.get("finished_at")), ("progress", progress),
                ("best top-1", _pct(job.get("best_top1"))), ("waits for", job.get("waits_for")),
                ("reason", job.get("reason")), ("tags", ", ".join(job.get("tags", []))), ("note", job.get("note")),
                ("mlflow", mlflow)]
        for key, value in rows:
            if value not in (None, ""):
                print(f"{key + ':':12s}{value}")


def _mlflow_line(client: Client, job_id: str) -> str | None:
    """Where the job's export to the server's MLflow stands, or None (no MLflow, nothing to export yet, or a server
    from before experiment tracking)."""
    from ttm.client import ApiError

    try:
        t = client.tracking(job_id)
    except ApiError:
        return None
    if t.get("state") == "exported":
        return f"exported, run {t.get('run_url') or t.get('run_id')}"
    if t.get("state") == "pending" and t.get("attempts"):
        return f"not exported yet (attempt {t['attempts']}: {t.get('last_error')}); tried again {t['next_attempt_at']}"
    if t.get("state") in ("pending", "failed"):
        return "export pending" if t["state"] == "pending" else f"export failed: {t.get('last_error')}"
    return None


def _progress(rows: list[dict[str, Any]], job: dict[str, Any]) -> str | None:
    """"epoch 3/10, test top-1 71.20 %, ETA 0:04:10" from the job's metric rows (the latest epoch's), or None."""
    epochs = [r["epoch"] for r in rows if r["epoch"] > 0]
    now = job.get("progress")  # where the running epoch is
    if not epochs:
        teacher = next((r["value"] for r in rows if r["name"] == "teacher/top1"), None)
        where = f"step {now['step']}/{now['steps']} of epoch 1" if now else "before epoch 1"
        return None if teacher is None and not now else where + (
            f"; the teacher's test top-1 {teacher:.2f} %" if teacher is not None else "")
    last = max(epochs)
    m = {r["name"]: r["value"] for r in rows if r["epoch"] == last}
    total = job.get("spec", {}).get("train", {}).get("epochs") or "?"
    parts = [f"epoch {last}/{total}"]
    if now and now.get("epoch") == last + 1 and job["state"] in ("running", "cancelling"):
        parts = [f"epoch {last}/{total} done, step {now['step']}/{now['steps']} of epoch {now['epoch']}"]
    if "test/top1" in m:
        parts.append(f"test top-1 {m['test/top1']:.2f} %")
    if "eta_s" in m and job["state"] in ("running", "cancelling"):
        parts.append(f"ETA {_hms(m['eta_s'])}")
    return ", ".join(parts)


def logs(job_id: JobId,
         follow_: Annotated[bool, typer.Option("--follow", "-f", help="keep printing as the log grows, until the "
                                                                     "job ends")] = False,
         server: Server = None, token: Token = None, retries: Retries = 5) -> None:
    """Print the trainer's log of a job."""
    with _errors(False):
        with _client(server, token, retries) as client:
            chunks = client.follow_log(job_id) if follow_ else iter([client.log(job_id)])
            for text in chunks:
                sys.stdout.write(text)
                sys.stdout.flush()


def cancel(job_id: JobId, server: Server = None, token: Token = None, json_out: Json = False,
           retries: Retries = 5) -> None:
    """Cancel a job: a waiting or queued one at once, a running one once its trainer has stopped.

    A job that had ended already is left as it is: exit 9 (not an error: a CI clean-up step may cancel blindly and
    treat 0 and 9 alike)."""
    from ttm.client import ApiError

    with _errors(json_out):
        with _client(server, token, retries) as client:
            try:
                job = client.cancel(job_id)
            except ApiError as err:
                if err.code != "job_finished":
                    raise
                job = client.job(job_id)
                _stderr().print(f"{job_id} had already {job['state']}: nothing to cancel")
                _print_json(job) if json_out else print(f"{job['id']}: {job['state']}")
                raise typer.Exit(int(Exit.ALREADY_FINISHED)) from None
        if json_out:
            _print_json(job)
        else:
            print(f"{job['id']}: {job['state']}")


def tag(job_id: JobId,
        add: Annotated[list[str] | None, typer.Argument(metavar="[TAG]...", help="tags to add",
                                                        show_default=False)] = None,
        remove: Annotated[list[str] | None, typer.Option("--remove", "-r", help="a tag to remove (repeat)",
                                                         show_default=False)] = None,
        server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5) -> None:
    """Add or remove tags of a job (in any state); prints its tags. `ttm jobs --tag T` finds them again."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            job = client.tag_job(job_id, add or [], remove or [])
        _print_json(job) if json_out else print(" ".join(job["tags"]))


def note(job_id: JobId,
         text: Annotated[str, typer.Argument(metavar="TEXT", help='the note ("" removes it)')],
         server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5) -> None:
    """Write a note on a job (in any state), replacing its note; `ttm jobs -q` searches notes too."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            job = client.note_job(job_id, text)
        if json_out:
            _print_json(job)


def metrics(job_id: JobId,
            output: Annotated[Path | None, typer.Option("--output", "-o", help="write the CSV here instead of to "
                                                                              "stdout", show_default=False)] = None,
            server: Server = None, token: Token = None, retries: Retries = 5) -> None:
    """A job's metrics as CSV: one row per epoch (0: before training), one column per metric."""
    with _errors(False):
        with _client(server, token, retries) as client:
            text = client.metrics_csv(job_id)
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text)
            print(output)


def download(job_id: JobId, which: Which = "best", fmt: Format = None, output: Output = None,
             timeout: Annotated[str, typer.Option(
                 help="how long to wait for an export the server makes on request (2h, 90m, 45s): exit 4 after "
                      "it (the export goes on)")] = "10m",
             server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5) -> None:
    """Download a job's student checkpoint (its sha256 is checked); prints the file's path. An export the job did
    not make (onnx, pt2, torchscript of a succeeded job) is made by the server first: this waits for it."""
    wait = parse_duration(timeout)
    with _errors(json_out):
        with _client(server, token, retries) as client:
            path = client.download(job_id, which, fmt, output, timeout=wait, on_pending=export_progress(_stderr()))
        if json_out:
            _print_json({"file": str(path), "job": job_id, "which": which, "size": path.stat().st_size})
        else:
            print(path)


def tensorboard(job_id: JobId,
                output: Annotated[Path, typer.Option("--output", "-o", help="unpack into DIR/<job id>/; "
                                                     "`tensorboard --logdir DIR` shows each job there as a run",
                                                     metavar="DIR")] = Path("tensorboard"),
                server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5) -> None:
    """Download a job's TensorBoard event files (one scalar per metric, step = epoch) and unpack them into
    DIR/<job id>/; prints that folder. A running job's are there up to its last epoch."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            folder = client.download_tensorboard(job_id, output)
        if json_out:
            _print_json({"job": job_id, "folder": str(folder),
                         "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())})
        else:
            print(folder)
            _stderr().print(f"view them: tensorboard --logdir {output}")


def reproduce(
    pair: Annotated[str, typer.Argument(metavar="PAIR", help="paper/cifar100/<teacher>-<student>, e.g. "
                                                             "paper/cifar100/resnet56-resnet20 (`ttm presets`)")],
    teacher: Annotated[Path, typer.Option(
        "--teacher", help="the pair's teacher weights, e.g. RepDistiller's <teacher>_vanilla/ckpt_epoch_240.pth",
        show_default=False)],
    methods: Annotated[str, typer.Option(
        help="the students, comma-separated: ce, kd, ttm, wttm, wttm_noce, wttm_crd, wttm_itrd")] = "ce,kd,ttm,wttm",
    seeds: Annotated[int, typer.Option(min=1, max=10, help="seeds 0..N-1 of each student (the paper: 5)")] = 1,
    gpus: Annotated[int, typer.Option(min=0, help="resources.gpus of each job")] = 1,
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """Submit the paper's CIFAR-100 students of one teacher-student pair; prints their job ids.

    The teacher file is uploaded once; each student is the pair's preset (γ, β, recipe of the paper) with that
    teacher, and CE is the student alone with the same recipe. The jobs' idempotency keys name the pair, method,
    seed and teacher, so running the command again returns the same jobs. What the paper reports for the pair is
    printed beside them (docs/REPRODUCE.md)."""
    from ttm.presets import PAPER_CIFAR100_TOP1, pair_jobs

    with _errors(json_out):  # an unknown pair or method: ValueError, exit 2 naming what exists
        specs = pair_jobs(pair, [m.strip() for m in methods.split(",") if m.strip()])
        t_arch, s_arch = pair.rstrip("/").rsplit("/", 1)[1].split("-", 1)
        paper = PAPER_CIFAR100_TOP1.get((t_arch, s_arch), {})
        submitted = []
        with _client(server, token, retries) as client:
            artifact = client.upload(teacher)
            for seed in range(seeds):
                for method, spec in specs.items():
                    body = {**spec, "name": f"{t_arch}-{s_arch}-{method}-s{seed}",
                            "train": {**spec.get("train", {}), "seed": seed}, "resources": {"gpus": gpus}}
                    if method != "ce":
                        body["teacher"] = {"arch": t_arch, "weights": artifact["id"]}
                    key = f"reproduce-{t_arch}-{s_arch}-{method}-s{seed}-{artifact['sha256'][:16]}"
                    job = client.submit(body, idempotency_key=key)
                    submitted.append({"method": method, "seed": seed, "id": job["id"], "state": job["state"],
                                      "paper_top1": paper.get(method)})
        if json_out:
            _print_json({"pair": pair, "teacher_artifact": artifact["id"], "paper": paper, "jobs": submitted})
            return
        err = _stderr()
        err.print(f"teacher {teacher} is artifact {artifact['id']}; the paper's teacher: {paper.get('teacher')} %")
        for row in submitted:
            target = f"the paper: {row['paper_top1']} %" if row["paper_top1"] is not None else "not in Tables 1/3"
            err.print(f"  {row['method']:9s} seed {row['seed']}  {row['id']}  {row['state']:9s} ({target})")
            print(row["id"])


COMMANDS: dict[str, Callable[..., Any]] = {
    "upload": upload, "upload-dataset": upload_dataset, "submit": submit, "jobs": jobs, "queue": queue,
    "status": status, "watch": watch,
    "logs": logs, "cancel": cancel, "tag": tag, "note": note, "metrics": metrics, "download": download,
    "tensorboard": tensorboard, "reproduce": reproduce}


def register(app: typer.Typer) -> None:
    """Add the client commands to `app` (ttm/cli.py's)."""
    from ttm.sweep_cli import COMMANDS as SWEEP_COMMANDS

    for name, command in {**COMMANDS, **SWEEP_COMMANDS}.items():
        app.command(name, rich_help_panel="Job server client")(command)


app = typer.Typer(no_args_is_help=True, add_completion=False, help="Use a ttm job server.")

if __name__ == "__main__":
    # Run as `python -m ttm.client_cli`, this file is __main__, and ttm.sweep_cli (which register adds) imports
    # ttm.client_cli: a second copy, whose own register would find ttm.sweep_cli half-imported. Run that copy's app.
    from ttm.client_cli import app as client_app

    client_app(prog_name="ttm")
else:
    register(app)
