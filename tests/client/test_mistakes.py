"""The thirty mistakes new users make most, as they make them (a spec file and `ttm submit`, or a command line), and
the exact message each gets: what is wrong, named by its field, and what to do. A message that drifts, or a mistake
that starts to pass, fails here.

The commands run in this process (typer's runner) against one real API server on the embedded defaults; a spec
mistake is caught on this side (exit 2, `invalid_spec`) or by the server (422), and both answer in one shape."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ttm.client_cli import app

from client_helpers import Stack, api_server, digits_spec, save_teacher

ZOO = {"zoo": "digits/resnet20"}


def _with(**parts: Any) -> dict[str, Any]:
    """The digits job of client_helpers with some of its mappings changed (train and dataset merged, others set)."""
    spec = digits_spec("mistake")
    for key, value in parts.items():
        spec[key] = {**spec[key], **value} if key in ("train", "dataset") else value
    return spec


# (the mistake, the spec, the field named, the exact message)
SPEC_MISTAKES = [
    ("a loss kind misspelt", _with(teacher=ZOO, loss={"kind": "wtm", "gamma": 0.3, "beta": 1}), "loss.kind",
     "unknown loss kind 'wtm'; did you mean 'wttm'? kinds: ce, kd, ttm, wttm, dkd, dist"),
    ("a temperature given as γ", _with(teacher=ZOO, loss={"kind": "wttm", "gamma": 4, "beta": 1}), "loss.gamma",
     "γ = 1/T must be in (0, 1], not 4; a temperature T = 4 is γ = 0.25"),
    ("a negative β", _with(teacher=ZOO, loss={"kind": "wttm", "gamma": 0.3, "beta": -1}), "loss.beta",
     "must be ≥ 0, not -1"),
    ("WTTM without β", _with(teacher=ZOO, loss={"kind": "wttm", "gamma": 0.3}), "loss.beta",
     "missing: a wttm loss needs beta"),
    ("β on a KD loss", _with(teacher=ZOO, loss={"kind": "kd", "beta": 1}), "loss.beta",
     "unknown field 'beta' (a kd loss has: temperature, kd_weight, ce_weight, features)"),
    ("a KD temperature of 0", _with(teacher=ZOO, loss={"kind": "kd", "temperature": 0}), "loss.temperature",
     "must be > 0, not 0"),
    ("distillation without a teacher", _with(loss={"kind": "kd"}), "teacher",
     "loss kd distills from a teacher: add teacher"),
    ("a field misspelt", _with(train={"epoch": 3}), "train.epoch",
     "unknown field 'epoch'; did you mean 'epochs'? (train has: epochs, batch_size, optimizer, lr, momentum, "
     "nesterov, weight_decay, schedule, seed, device, precision, fast_path, compile, num_workers, drop_last)"),
    ("a section misspelt", {**_with(), "teachr": ZOO}, "teachr",
     "unknown field 'teachr'; did you mean 'teacher'? (the spec has: name, preset, teacher, student, dataset, loss, "
     "train, resources, output, notify)"),
    ("torchvision's model without its prefix", _with(student={"arch": "resnet18"}), "student.arch",
     "unknown architecture 'resnet18'; did you mean resnet8 or resnet14 or resnet8x4? (torchvision's is "
     "torchvision/resnet18)"),
    ("an architecture that does not exist", _with(student={"arch": "resnet9000"}), "student.arch",
     "unknown architecture 'resnet9000'; did you mean resnet20 or resnet110 or resnet8? (torchvision's is "
     "torchvision/resnet9000)"),
    ("a torchvision model that does not exist", _with(student={"arch": "torchvision/resnet999"}), "student.arch",
     "unknown architecture 'torchvision/resnet999'; did you mean torchvision/resnet50 or torchvision/resnet34 or "
     "torchvision/resnet18?"),
    ("a data set's name with a dash", _with(dataset={"name": "fashion-mnist"}), "dataset.name",
     "'fashion-mnist' is not one of cifar10, cifar100, mnist, fashion_mnist, svhn, digits, imagefolder, synthetic; "
     "did you mean 'fashion_mnist'?"),
    ("a subset larger than the data set", _with(dataset={"name": "digits", "subset": {"train": 5000}}),
     "dataset.subset.train", "5000 samples asked, but digits's train split has 1500"),
    ("zero epochs", _with(train={"epochs": 0}), "train.epochs", "must be > 0, not 0"),
    ("a fractional epoch count", _with(train={"epochs": 2.5}), "train.epochs", "must be a whole number, not 2.5"),
    ("a learning rate that is not a number", _with(train={"lr": "fast"}), "train.lr",
     "must be a number, not 'fast'"),
    ("a schedule misspelt", _with(train={"schedule": {"kind": "cosin"}}), "train.schedule.kind",
     "unknown schedule kind 'cosin'; did you mean 'cosine'? kinds: step, cosine, constant"),
    ("milestones past the last epoch", _with(train={"epochs": 5, "schedule": {"kind": "step", "milestones": [10]}}),
     "train.schedule.milestones", "milestone 10 is past epochs=5: write milestones up to epochs, or leave them out "
                                  "to scale the paper's 150/180/210 of 240 to epochs"),
    ("a batch over the server's limit", _with(train={"batch_size": 5000}), "train.batch_size",
     "5000 is over this server's limit of 4096 (TTM_LIMITS_MAX_BATCH_SIZE)"),
    ("a zoo teacher misspelt", _with(teacher={"zoo": "digits/resnet2"}, loss={"kind": "kd"}), "teacher.zoo",
     "no teacher 'digits/resnet2' in the zoo; did you mean digits/resnet20? known: digits/resnet20, "
     "fashion_mnist/resnet20, fashion_mnist/resnet56 (see `ttm zoo`)"),
    ("teacher weights without their architecture", _with(teacher={"weights": "teacher.pth"}, loss={"kind": "kd"}),
     "teacher", "weights need an arch (e.g. arch: resnet56)"),
    ("a teacher file that is not there", _with(teacher={"arch": "resnet8", "weights": "missing.pth"},
                                               loss={"kind": "kd"}),
     "teacher.weights", "{dir}/missing.pth is neither an artifact id (art_...) nor a file"),
    ("a teacher file of another architecture", _with(teacher={"arch": "resnet20", "weights": "teacher.pth"},
                                                     loss={"kind": "kd"}),
     "teacher.weights", "teacher weights teacher.pth do not fit the architecture: keys 72 missing (first: "
                        "'layer1.1.conv1.weight')"),
    ("a teacher job that does not exist", _with(teacher={"job": "job_nope"}, loss={"kind": "kd"}), "teacher.job",
     "unknown job job_nope"),
    ("a queue misspelt", _with(resources={"queue": "gpus"}), "resources.queue",
     "'gpus' is not one of gpu, cpu, auto; did you mean 'gpu'?"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("mistakes")
    with api_server(home / "home") as stack:
        yield stack


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("specs")
    save_teacher(path)  # teacher.pth: resnet8 weights for digits
    return path


def _ttm(server: Stack, *args: str, token: bool = True) -> Any:
    env = {"TTM_SERVER": server.url, "TTM_TOKEN": server.alice if token else "", "COLUMNS": "400"}
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize("spec, field, message", [case[1:] for case in SPEC_MISTAKES],
                         ids=[case[0] for case in SPEC_MISTAKES])
def test_a_spec_mistake_gets_its_message(server, folder, spec, field, message):
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _ttm(server, "submit", str(path), "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert (error["code"] in ("invalid_spec", "invalid_teacher", "over_limit")
            and error["field"] == field), error  # the same shape whichever side caught it
    assert error["message"] == f"{field}: {message.format(dir=folder)}"


def _usage(result: Any) -> str:
    """A usage error's words, out of the box typer draws around them."""
    return " ".join(line.strip(" │╭╮╰╯─") for line in result.stderr.splitlines()).replace("  ", " ")


# (the mistake, the command line, the exit code, the exact message, where it is)
COMMAND_MISTAKES = [
    ("--min-accuracy as a fraction", ("submit", "{spec}", "--min-accuracy", "0.7"), 2,
     "Invalid value for '--min-accuracy': 0.7 is not a top-1 percentage between 1 and 100; is it a fraction? as a "
     "percentage that is 70"),
    ("--min-accuracy over 100", ("submit", "{spec}", "--min-accuracy", "170"), 2,
     "Invalid value for '--min-accuracy': 170 is not a top-1 percentage between 1 and 100"),
    ("a timeout in words", ("submit", "{spec}", "--wait", "--timeout", "soon"), 2,
     "Invalid value: 'soon' is not a duration: write e.g. 2h, 90m, 1h30m, 45s or seconds"),
    ("a spec file that is not there", ("submit", "nothere.yaml"), 2,
     "<spec>: no such spec file: nothere.yaml"),
    ("a tab in the YAML", ("submit", "{tabs}"), 2,
     "<spec>: {tabs} is not valid YAML/JSON at line 2, column 1: found character '\\t' that cannot start any "
     "token (while scanning for the next token); YAML indents with spaces, not tabs"),
    ("--set without a value", ("submit", "{spec}", "--set", "train.lr"), 2,
     "<spec>: --set 'train.lr': expected FIELD=VALUE, e.g. train.lr=0.1 or loss.kind=wttm"),
    ("no token", ("jobs",), 7,
     "error (401 unauthorized): missing bearer token: send `Authorization: Bearer <token>`\n  give a token with "
     "--token or TTM_TOKEN (`ttm admin user create NAME` prints one)"),
    ("a job id that does not exist", ("status", "job_nope"), 8, "error (404 not_found): no job job_nope"),
]


@pytest.mark.parametrize("args, code, message", [case[1:] for case in COMMAND_MISTAKES],
                         ids=[case[0] for case in COMMAND_MISTAKES])
def test_a_command_line_mistake_gets_its_message(server, folder, args, code, message):
    (folder / "ok.yaml").write_text(yaml.safe_dump(digits_spec("ok")))
    (folder / "tabs.yaml").write_text("name: tabs\n\tstudent: {arch: resnet8}\n")
    paths = {"spec": str(folder / "ok.yaml"), "tabs": str(folder / "tabs.yaml")}
    result = _ttm(server, *(a.format(**paths) for a in args), token=args != ("jobs",))
    assert result.exit_code == code, result.output
    said = _usage(result) if code == 2 and args[-2].startswith("--") and "--set" not in args else result.stderr
    assert message.format(**paths) in said, said


def test_thirty_of_them():
    assert len(SPEC_MISTAKES) + len(COMMAND_MISTAKES) >= 30


def _sweep(**parts: Any) -> dict[str, Any]:
    return {"name": "beta", "job": _with(teacher=ZOO, loss={"kind": "wttm", "gamma": 0.3, "beta": 1}),
            "space": {"loss.beta": [0.5, 1, 2]}, **parts}


# (the mistake, the sweep, the field named, the exact message): checked by the client, and again by the server
SWEEP_MISTAKES = [
    ("a range on a grid", _sweep(strategy="grid", space={"loss.beta": {"log_uniform": [0.5, 100]}}), "strategy",
     "grid takes lists of values, and loss.beta is a range: list its values, or use random or tpe"),
    ("a value no trial could run", _sweep(space={"loss.beta": [1, -2]}), "space.loss.beta",
     "with loss.beta = -2: must be ≥ 0, not -2"),
    ("a field the job does not have", _sweep(space={"loss.gama": {"uniform": [0.1, 0.8]}}), "space.loss.gama",
     "with loss.gama = 0.1: unknown field 'gama'; did you mean 'gamma'? (a wttm loss has: gamma, beta, ce_weight, "
     "features)"),
    ("a range of one number", _sweep(space={"loss.beta": {"uniform": [2]}}), "space.loss.beta",
     "uniform takes [low, high], two finite numbers, not [2]"),
    ("a student group of none", _sweep(group=0), "group", "must be ≥ 1, not 0"),
    ("the test set as the metric", _sweep(metric="test/top1"), "metric",
     "'test/top1' is not one of val/top1, val/top5"),
    ("a sweep over the teacher", _sweep(space={"teacher.zoo": ["digits/resnet20"]}), "space.teacher.zoo",
     "a sweep searches the recipe, not where a trial runs or what teaches it: set it in job"),
    ("a NUL in the job's name (which a trial's name replaces)", _sweep(job={**_sweep()["job"], "name": "a\x00b"}),
     "job.name", "contains a NUL character (\\x00), which cannot be stored: remove it"),
]


@pytest.mark.parametrize("sweep, field, message", [case[1:] for case in SWEEP_MISTAKES],
                         ids=[case[0] for case in SWEEP_MISTAKES])
def test_a_sweep_mistake_gets_its_message(server, folder, sweep, field, message):
    import httpx

    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    result = _ttm(server, "sweep", str(path), "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["field"] == field and error["message"] == f"{field}: {message}", error
    r = httpx.post(f"{server.url}/v1/sweeps", json=sweep, headers={"Authorization": f"Bearer {server.alice}"})
    assert r.status_code == 422 and r.json()["error"]["message"] == f"{field}: {message}", r.text
