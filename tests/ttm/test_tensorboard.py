"""The trainer's TensorBoard events, read back with TensorBoard's own reader: every metric row at step = epoch, and a
run killed after an epoch's metrics but before its resume state, then resumed, shows that epoch once (the
restart event of the resumed run hides the first try), with the values its metrics.jsonl kept last."""
from __future__ import annotations

import json
import time

import pytest

from ttm.spec import parse_spec
from ttm.train import train


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_resumed_run_shows_each_epoch_once(tmp_path):
    spec = parse_spec({"name": "tb", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"},
                       "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "schedule": {"kind": "constant"},
                                 "num_workers": 0, "device": "cpu"}})
    train(spec, tmp_path, stop_after_epoch=1)
    state_after_1 = (tmp_path / "state.pt").read_bytes()
    train(spec, tmp_path, stop_after_epoch=2)
    (tmp_path / "state.pt").write_bytes(state_after_1)  # as if killed after epoch 2's metrics, before its state
    time.sleep(1.1)  # an event file's name begins with the second it was opened: that orders them for the reader
    train(spec, tmp_path)  # runs epoch 2 again, then 3

    kept: dict[int, dict[str, float]] = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        kept[entry["epoch"]] = entry["metrics"]  # a re-run epoch's later line wins, as in the database
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4  # epoch 2 twice
    shown = scalars(tmp_path / "tensorboard")
    assert set(shown) == set(kept[1]) and "test/top1" in shown and "train/loss" in shown
    for name, points in shown.items():
        assert [step for step, _ in points] == [1, 2, 3], name
        assert [v for _, v in points] == pytest.approx([kept[e][name] for e in (1, 2, 3)], rel=1e-6), name
