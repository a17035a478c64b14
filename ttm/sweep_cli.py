"""`ttm sweep`, `ttm sweeps`, `ttm sweep-status`, `ttm sweep-cancel`: a γ/β search as one request (ttm.sweeps).
Torch-free, like the other client commands (ttm/client_cli.py), whose options and exit codes these share."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ttm.client_cli import (
    Exit,
    Json,
    MinAccuracy,
    Output,
    Retries,
    Server,
    Timeout,
    Token,
    _client,
    _errors,
    _print_json,
    _stderr,
    parse_duration,
)

SweepId = Annotated[str, typer.Argument(metavar="SWEEP", help="a sweep id (swp_...)", show_default=False)]
ENDS = {"succeeded": Exit.SUCCEEDED, "failed": Exit.FAILED, "cancelled": Exit.CANCELLED}


def trial_table(sweep: dict[str, Any]) -> Any:
    """The trials as a rich table: number, each searched field, state, the selected metric, the job."""
    from rich.table import Table

    keys = list(sweep["spec"]["space"])
    best = (sweep.get("best") or {}).get("number")
    table = Table(title=f"{sweep['id']} {sweep['name']}: {sweep['state']} "
                        f"({len([t for t in sweep['trials'] if t['state'] != 'running'])}/{sweep['budget']} trials "
                        f"ended)", title_justify="left")
    for column in ["trial", *keys, "state", sweep["metric"], "epochs", "job"]:
        table.add_column(column, justify="right" if column not in ("state", "job") else "left")
    for t in sweep["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.2f}"
        params = [f"{t['params'][k]:.4g}" if isinstance(t["params"].get(k), float) else str(t["params"].get(k, ""))
                  for k in keys]
        mark = " *" if t["number"] == best else ""
        table.add_row(f"t{t['number']}{mark}", *params, t["state"], value, str(len(t["epochs"])), t["job_id"] or "")
    return table


def _result_line(sweep: dict[str, Any]) -> str:
    best = sweep.get("best")
    if not best:
        return f"{sweep['id']}: {sweep['state']}" + (f" ({sweep['reason']})" if sweep.get("reason") else "")
    top1 = "" if best["test_top1"] is None else f"; its test top-1 {best['test_top1']:.2f} %"
    return (f"{sweep['id']}: {sweep['state']}: best trial t{best['number']} (job {best['job_id']}), "
            f"{sweep['metric']} {best['value']:.2f}{top1}")


def sweep(
    file: Annotated[Path, typer.Argument(metavar="SWEEP_FILE", help="a sweep (YAML or JSON): job, space, strategy, "
                                                                    "trials, max_running, metric, pruning",
                                         show_default=False)],
    wait: Annotated[bool, typer.Option("--wait", help="follow it to its end with a live table of its trials")]
    = False,
    timeout: Timeout = None, min_accuracy: MinAccuracy = None, output: Output = None,
    idempotency_key: Annotated[str | None, typer.Option(help="a retried submit with the same key returns the first "
                                                             "sweep", show_default=False)] = None,
    server: Server = None, token: Token = None, json_out: Json = False, retries: Retries = 5,
) -> None:
    """Start a sweep over a job spec's fields (γ, β, the loss, the learning rate, ...); prints its id. Its trials are
    ordinary jobs of yours, queued under your share; the best is chosen on the validation split, and only its test
    accuracy is shown.

    --wait follows it with a live table; -o downloads the chosen trial's student; --min-accuracy gates its test
    top-1. Exit codes as for submit: 0 succeeded, 1 failed, 2 bad sweep, 3 cancelled, 4 timed out, 5 below
    --min-accuracy."""
    seconds = parse_duration(timeout)
    with _errors(json_out):
        with _client(server, token, retries) as client:
            started = client.submit_sweep(file, idempotency_key=idempotency_key)
            if not (wait or min_accuracy is not None or output is not None):
                _print_json(started) if json_out else print(started["id"])
                return
            if not json_out:
                print(started["id"])
            done = _follow(client, started["id"], seconds, live=not json_out)
            code = ENDS.get(done["state"], Exit.FAILED)
            best = done.get("best") or {}
            if code == Exit.SUCCEEDED and min_accuracy is not None and (best.get("test_top1") or 0) < min_accuracy:
                code = Exit.BELOW_MIN_ACCURACY
            if code == Exit.SUCCEEDED and output is not None:
                path = client.download(best["job_id"], "best", dest=output)
                _stderr().print(f"saved the chosen student to {path}")
            _print_json({**done, "exit": int(code)}) if json_out else _stderr().print(_result_line(done))
    raise typer.Exit(int(code))


def _follow(client: Any, sweep_id: str, timeout: float | None, live: bool) -> dict[str, Any]:
    if not live:
        return client.wait_sweep(sweep_id, timeout=timeout)
    from rich.live import Live

    with Live(console=_stderr(), refresh_per_second=2, transient=False) as screen:
        return client.wait_sweep(sweep_id, timeout=timeout, on_update=lambda s: screen.update(trial_table(s)))


def sweeps(limit: Annotated[int, typer.Option(help="how many, newest first")] = 20, server: Server = None,
           token: Token = None, json_out: Json = False, retries: Retries = 5) -> None:
    """List your sweeps, newest first."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            items = client.sweeps(limit=limit)
        if json_out:
            _print_json(items)
            return
        for s in items:
            print(_result_line(s))


def sweep_status(sweep_id: SweepId, server: Server = None, token: Token = None, json_out: Json = False,
                 retries: Retries = 5) -> None:
    """Show a sweep: its trials (parameters, state, metric, job) and its best trial once it has ended."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            found = client.sweep(sweep_id)
        if json_out:
            _print_json(found)
            return
        _stderr().print(trial_table(found))
        print(_result_line(found))


def sweep_cancel(sweep_id: SweepId, server: Server = None, token: Token = None, json_out: Json = False,
                 retries: Retries = 5) -> None:
    """Cancel a sweep and its trials that have not ended."""
    with _errors(json_out):
        with _client(server, token, retries) as client:
            found = client.cancel_sweep(sweep_id)
        _print_json(found) if json_out else print(_result_line(found))


COMMANDS: dict[str, Callable[..., Any]] = {"sweep": sweep, "sweeps": sweeps, "sweep-status": sweep_status,
                                          "sweep-cancel": sweep_cancel}
