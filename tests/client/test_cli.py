"""The client commands in their own processes against the API (jobs moved by svc_helpers.run_job): outputs, --json,
and every exit code that needs no real training (those are in test_live.py)."""
from __future__ import annotations

import json

import yaml

from ttm.client import Client
from ttm.client_cli import Exit

from client_helpers import add_metrics, digits_spec, run_cli, run_job
from svc_helpers import free_port


def _json(result) -> dict:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr  # exactly one object on stdout
    return json.loads(lines[0])


def test_exit_codes_are_distinct_and_documented():
    assert len({int(e) for e in Exit}) == len(Exit) == 10
    from pathlib import Path

    table = (Path(__file__).parents[2] / "docs" / "CLI.md").read_text()
    for e in Exit:
        assert f"| {int(e)} |" in table and e.name in table


def test_upload_and_submit_with_a_local_teacher(api, teacher_pth, tmp_path):
    r = run_cli("upload", str(teacher_pth), server=api.url, token=api.alice)
    assert r.returncode == 0, r.stderr
    art = r.stdout.strip()
    assert art.startswith("art_") and "uploaded" in r.stderr
    r = run_cli("upload", str(teacher_pth), "--json", server=api.url, token=api.alice)
    assert r.returncode == 0 and _json(r)["id"] == art and _json(r)["uploaded"] is False

    (tmp_path / "teacher.pth").write_bytes(teacher_pth.read_bytes())
    spec = {**digits_spec("wttm"), "teacher": {"arch": "resnet8", "weights": "teacher.pth"},
            "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}}
    (tmp_path / "wttm.yaml").write_text(yaml.safe_dump(spec))
    r = run_cli("submit", "wttm.yaml", server=api.url, token=api.alice, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert job_id.startswith("job_") and "queued" in r.stderr
    job = Client(api.url, api.alice).job(job_id)
    assert job["spec"]["teacher"]["weights"] == art  # the same bytes: the artifact uploaded above

    r = run_cli("status", job_id, "--json", server=api.url, token=api.alice)
    assert r.returncode == 0 and _json(r)["id"] == job_id and _json(r)["queue_position"] == 1
    r = run_cli("status", job_id, server=api.url, token=api.alice)
    assert "state:      queued" in r.stdout and "position 1" in r.stdout and "progress" not in r.stdout
    # running: where it is, from its metric rows (the teacher's accuracy first, then the latest epoch)
    run_job(api.settings, job_id)
    add_metrics(api.settings, job_id, 0, {"teacher/top1": 91.5})
    r = run_cli("status", job_id, server=api.url, token=api.alice)
    assert "progress:   before epoch 1; the teacher's test top-1 91.50 %" in r.stdout, r.stdout
    add_metrics(api.settings, job_id, 1, {"train/loss": 1.2, "test/top1": 60.25, "eta_s": 125.0})
    add_metrics(api.settings, job_id, 2, {"train/loss": 0.9, "test/top1": 71.5, "eta_s": 62.0})
    r = run_cli("status", job_id, server=api.url, token=api.alice)
    assert "progress:   epoch 2/3, test top-1 71.50 %, ETA 0:01:02" in r.stdout, r.stdout
    from service.db import session_scope
    from service.models import Job

    with session_scope(api.settings) as session:  # the worker copies this from the trainer every few seconds
        session.get(Job, job_id).progress = {"epoch": 3, "step": 7, "steps": 24}
    r = run_cli("status", job_id, server=api.url, token=api.alice)
    assert "progress:   epoch 2/3 done, step 7/24 of epoch 3, test top-1 71.50 %, ETA 0:01:02" in r.stdout, r.stdout
    r = run_cli("jobs", server=api.url, token=api.alice)
    assert r.returncode == 0 and job_id in r.stdout and "WTTM" in r.stdout.upper()


def test_bad_specs_exit_2(api, tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**digits_spec(), "student": {"arch": "resnet9000"}}))
    r = run_cli("submit", "bad.yaml", "--json", server=api.url, token=api.alice, cwd=tmp_path)
    assert r.returncode == Exit.BAD_SPEC
    err = _json(r)["error"]
    assert err["code"] == "invalid_spec" and err["errors"][0]["field"] == "student.arch"
    # valid here, refused by the server (no such artifact): 422, also exit 2
    spec = {**digits_spec(), "teacher": {"arch": "resnet8", "weights": "art_nope"}, "loss": {"kind": "kd"}}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(spec))
    r = run_cli("submit", "kd.yaml", server=api.url, token=api.alice, cwd=tmp_path)
    assert r.returncode == Exit.BAD_SPEC and "teacher.weights" in r.stderr, r.stderr
    r = run_cli("submit", "missing.yaml", server=api.url, token=api.alice, cwd=tmp_path)
    assert r.returncode == Exit.BAD_SPEC and "no such spec file" in r.stderr
    r = run_cli("submit", "kd.yaml", "--wait", "--timeout", "soon", server=api.url, token=api.alice, cwd=tmp_path)
    assert r.returncode == 2 and "not a duration" in r.stderr


def test_auth_unreachable_and_api_errors(api):
    r = run_cli("jobs", server=api.url, token="wrong")
    assert r.returncode == Exit.AUTH and "TTM_TOKEN" in r.stderr
    r = run_cli("jobs", "--json", server=api.url, token=None)
    assert r.returncode == Exit.AUTH and _json(r)["error"]["status"] == 401
    r = run_cli("jobs", "--retries", "1", "--json", server=f"http://127.0.0.1:{free_port()}", token=api.alice)
    assert r.returncode == Exit.UNREACHABLE and _json(r)["error"]["code"] == "unreachable"
    r = run_cli("status", "job_nope", server=api.url, token=api.alice)
    assert r.returncode == Exit.API_ERROR and "404" in r.stderr


def test_watch_exit_codes_follow_the_final_state(api):
    with Client(api.url, api.alice) as c:
        failed, cancelled, done = (c.submit(digits_spec(n)) for n in ("f", "c", "s"))
    run_job(api.settings, failed["id"], epochs=1)
    run_job(api.settings, failed["id"], to="failed")
    r = run_cli("watch", failed["id"], "--json", server=api.url, token=api.alice)
    assert r.returncode == Exit.FAILED and _json(r)["result"] == "failed"
    assert "epoch 1/3" in r.stderr  # the progress went to stderr

    r = run_cli("cancel", cancelled["id"], server=api.url, token=api.alice)
    assert r.returncode == 0 and r.stdout.strip() == f"{cancelled['id']}: cancelled"
    r = run_cli("watch", cancelled["id"], server=api.url, token=api.alice)
    assert r.returncode == Exit.CANCELLED
    r = run_cli("cancel", cancelled["id"], server=api.url, token=api.alice)  # a clean-up step, cancelling blindly
    assert r.returncode == Exit.ALREADY_FINISHED == 9 and "had already cancelled: nothing to cancel" in r.stderr
    assert r.stdout.strip() == f"{cancelled['id']}: cancelled"

    run_job(api.settings, done["id"], epochs=2, checkpoint=True, log="epoch 1\nepoch 2\n")
    run_job(api.settings, done["id"], to="succeeded")
    r = run_cli("watch", done["id"], "--min-accuracy", "99", "--json", server=api.url, token=api.alice)
    assert r.returncode == Exit.BELOW_MIN_ACCURACY and _json(r)["file"] is None
    r = run_cli("watch", done["id"], "--min-accuracy", "10", "-o", str(api.home / "s.pt"), "--json",
                server=api.url, token=api.alice)
    assert r.returncode == 0 and _json(r)["file"] == str(api.home / "s.pt")
    assert (api.home / "s.pt").read_bytes() == f"best weights of {done['id']}".encode()

    r = run_cli("logs", done["id"], server=api.url, token=api.alice)
    assert r.returncode == 0 and r.stdout == "epoch 1\nepoch 2\n"
    r = run_cli("logs", done["id"], "-f", server=api.url, token=api.alice)
    assert r.returncode == 0 and r.stdout == "epoch 1\nepoch 2\n"
    r = run_cli("download", done["id"], "--which", "last", "-o", str(api.home / "l.pt"), server=api.url,
                token=api.alice)
    assert r.returncode == 0 and r.stdout.strip() == str(api.home / "l.pt")

    # another user sees none of it
    r = run_cli("jobs", "--json", server=api.url, token=api.bob)
    assert r.returncode == 0 and _json(r) == {"items": []}
    r = run_cli("watch", done["id"], server=api.url, token=api.bob)
    assert r.returncode == Exit.API_ERROR


def test_queue_shows_the_dispatch_order_and_hides_others_jobs(api):
    with Client(api.url, api.alice) as c:
        first = c.submit(digits_spec("a1"))
    with Client(api.url, api.bob) as c:
        c.submit(digits_spec("b1"))
    r = run_cli("queue", "cpu", server=api.url, token=api.alice)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("queue cpu: 2 queued, 0 running on 0 workers; you:")
    rows = [line.split() for line in lines[2:]]
    assert rows[0][:4] == ["1", "normal", first["id"], "a1"] and rows[1][:3] == ["2", "normal", "(other)"]
    r = run_cli("queue", "cpu", "--json", server=api.url, token=api.alice)
    shown = _json(r)
    assert [e["id"] for e in shown["items"]] == [first["id"], None]


def test_reproduce_submits_the_papers_students_of_a_pair_once(api, tmp_path):
    import torch

    from ttm.models import build_model

    teacher = tmp_path / "ckpt_epoch_240.pth"  # RepDistiller's layout: {"model": state_dict}
    torch.save({"model": build_model("resnet56", num_classes=100, in_channels=3).state_dict()}, teacher)
    args = ("reproduce", "paper/cifar100/resnet56-resnet20", "--teacher", str(teacher), "--seeds", "2", "--json")
    r = run_cli(*args, server=api.url, token=api.alice)
    assert r.returncode == 0, r.stderr
    out = _json(r)
    assert [(j["method"], j["seed"]) for j in out["jobs"]] == [(m, s) for s in (0, 1) for m in ("ce", "kd", "ttm",
                                                                                                 "wttm")]
    assert out["paper"]["wttm"] == 71.92 and out["jobs"][3]["paper_top1"] == 71.92
    client = Client(api.url, api.alice)
    by_method = {j["method"]: client.job(j["id"])["spec"] for j in out["jobs"] if j["seed"] == 1}
    assert by_method["ce"]["loss"]["kind"] == "ce" and by_method["ce"]["teacher"] is None
    assert by_method["ttm"]["loss"] == {"kind": "ttm", "gamma": 0.3, "beta": 7.0, "ce_weight": 1.0,  # Table 8
                                        "features": None}
    assert by_method["wttm"]["teacher"]["weights"] == out["teacher_artifact"]
    assert by_method["wttm"]["train"]["epochs"] == 240 and by_method["wttm"]["train"]["seed"] == 1
    assert by_method["kd"]["dataset"]["name"] == "cifar100" and by_method["kd"]["student"]["arch"] == "resnet20"
    again = _json(run_cli(*args, server=api.url, token=api.alice))  # the same jobs, not eight more
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in out["jobs"]]
    r = run_cli("reproduce", "paper/cifar100/resnet56-resnet2", "--teacher", str(teacher), server=api.url,
                token=api.alice)
    assert r.returncode == 2 and "did you mean paper/cifar100/resnet56-resnet20" in r.stderr


def test_reproduce_md_lists_the_figures_and_parameters_the_command_uses():
    from pathlib import Path

    from ttm.presets import CIFAR100_PAIRS, PAPER_CIFAR100_TOP1

    text = (Path(__file__).parents[2] / "docs" / "REPRODUCE.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| `")}
    for t, s, (tg, tb), (wg, wb), _, (cg, cb), (ig, ib), _ in CIFAR100_PAIRS:
        paper = PAPER_CIFAR100_TOP1[(t, s)]
        row = rows[f"{t}-{s}"]
        assert [float(x) for x in row[:7]] == [paper[k] for k in ("teacher", "ce", "kd", "ttm", "wttm", "wttm_crd",
                                                                  "wttm_itrd")]
        assert row[7:] == [f"{tg:g}, {tb:g}", f"{wg:g}, {wb:g}", f"{cg:g}, {cb:g}", f"{ig:g}, {ib:g}"]


def test_progress_says_the_teachers_accuracy_before_the_first_epoch():
    import io

    from rich.console import Console

    from ttm.client import Event
    from ttm.client_cli import JobProgress

    out = io.StringIO()
    job = {"id": "job_x", "name": "wttm", "spec": {"train": {"epochs": 2}}}
    with JobProgress(job, Console(file=out, width=200)) as progress:
        for epoch, name, value in [(0, "teacher/top1", 92.15), (0, "teacher/top5", 99.8), (0, "teacher/entropy", 0.2),
                                   (1, "train/loss", 1.1), (1, "test/top1", 70.5), (1, "eta_s", 30.0)]:
            progress.on_event(Event("metric", {"epoch": epoch, "name": name, "value": value}))
    lines = out.getvalue().splitlines()
    assert lines[0] == "teacher: test top-1 92.15%"  # at once, not after the first epoch
    assert lines[1].startswith("epoch 1/2  loss 1.1000  top-1 70.50") and not any("epoch 0" in l for l in lines)


class _Ran:
    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def _here(*args: str, server: str, token: str) -> _Ran:
    """A client command in this process (typer's runner): as a process would run it, in a fraction of the time."""
    from typer.testing import CliRunner

    from ttm.client_cli import app

    return _Ran(CliRunner().invoke(app, list(args), env={"TTM_SERVER": server, "TTM_TOKEN": token,
                                                         "COLUMNS": "200"}))


def test_jobs_people_can_manage_clone_tag_note_search_csv(api, tmp_path):
    """A researcher runs a job again with a change, labels the runs, finds them again and takes the curves away."""
    base_yaml = str(tmp_path / "base.yaml")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(digits_spec("base")))
    r = _here("submit", base_yaml, "--set", "train.lr=1e-3", "--set", "train.seed=7", "--tag", "sweep",
                "--note", "lr probe", server=api.url, token=api.alice)
    assert r.returncode == 0, r.stderr
    base = Client(api.url, api.alice).job(r.stdout.strip())
    assert base["spec"]["train"]["lr"] == 0.001 and base["spec"]["train"]["seed"] == 7  # 1e-3: a number, not text
    assert base["tags"] == ["sweep"] and base["note"] == "lr probe"
    # --from: the spec that job ran, with changes; the copy is a job of its own
    r = _here("submit", "--from", base["id"], "--set", "train.lr=0.05", "--set", "name=base-lr05",
                "--set", "train.seed=null", server=api.url, token=api.alice)
    assert r.returncode == 0, r.stderr
    clone = Client(api.url, api.alice).job(r.stdout.strip())
    assert clone["id"] != base["id"] and clone["name"] == "base-lr05"
    assert clone["spec"]["train"]["lr"] == 0.05 and clone["spec"]["train"]["seed"] == 0  # null: back to default
    assert {k: v for k, v in clone["spec"].items() if k not in ("name", "train")} == \
        {k: v for k, v in base["spec"].items() if k not in ("name", "train")}
    for args, words in [(("--from", base["id"], "--set", "train.lr"), "expected FIELD=VALUE"),
                        (("--from", base["id"], "--set", "name.first=x"), "name is 'base', not a mapping"),
                        (("--from", base["id"], "--set", "train.lr=-1"), "train.lr"),
                        ((base_yaml, "--from", base["id"]), "not both"), ((), "give a spec file")]:
        r = _here("submit", *args, server=api.url, token=api.alice)
        assert r.returncode == Exit.BAD_SPEC and words in r.stderr, (args, r.stderr)
    r = _here("submit", "--from", "job_nope", server=api.url, token=api.alice)
    assert r.returncode == Exit.API_ERROR and "404" in r.stderr
    # tags and a note, later
    r = _here("tag", clone["id"], "sweep", "lr:0.05", server=api.url, token=api.alice)
    assert r.returncode == 0 and r.stdout.split() == ["lr:0.05", "sweep"], r.stderr
    r = _here("tag", clone["id"], "--remove", "lr:0.05", server=api.url, token=api.alice)
    assert r.stdout.split() == ["sweep"]
    r = _here("tag", clone["id"], "bad tag", server=api.url, token=api.alice)
    assert r.returncode == Exit.BAD_SPEC and "is not a tag" in r.stderr, r.stderr
    assert _here("note", clone["id"], "the faster one", server=api.url, token=api.alice).returncode == 0
    r = _here("status", clone["id"], server=api.url, token=api.alice)
    assert "tags:       sweep" in r.stdout and "note:       the faster one" in r.stdout, r.stdout
    # search
    r = _here("jobs", "--tag", "sweep", "--json", server=api.url, token=api.alice)
    assert [j["id"] for j in _json(r)["items"]] == [clone["id"], base["id"]]
    r = _here("jobs", "-q", "FASTER", "--json", server=api.url, token=api.alice)
    assert [j["id"] for j in _json(r)["items"]] == [clone["id"]]
    r = _here("jobs", "--tag", "sweep", "--state", "succeeded", "--json", server=api.url, token=api.alice)
    assert _json(r)["items"] == []
    # the curves as CSV
    run_job(api.settings, base["id"])
    add_metrics(api.settings, base["id"], 0, {"teacher/top1": 91.5})
    add_metrics(api.settings, base["id"], 1, {"train/loss": 1.25, "test/top1": 60.5})
    r = _here("metrics", base["id"], server=api.url, token=api.alice)
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "epoch,teacher/top1,test/top1,train/loss", "0,91.5,,", "1,,60.5,1.25"], r.stdout
    r = _here("metrics", base["id"], "-o", str(tmp_path / "m.csv"), server=api.url, token=api.alice)
    assert r.stdout.strip() == str(tmp_path / "m.csv") and (tmp_path / "m.csv").read_text().startswith("epoch,")
