"""Exports of the best student for deployment: ONNX, torch.export (pt2) and TorchScript, each checked before it is
offered.

An export is written to a temporary file beside the checkpoints, loaded in its own runtime (onnxruntime,
`torch.export.load`, `torch.jit.load`) and run on real test images of the job's data set, once as one batch and once
as a single image (the batch axis is dynamic). Only when its logits match the PyTorch student's within the tolerance
does the file take its name (`best.onnx`, ...) and its entry in the manifest's "files", which is what the worker
registers as a checkpoint. Whatever happens, the manifest's "exports" says, per format, whether it was offered and
why not, with the check's numbers and the input the file expects; a refused export has no file, so it can never
be downloaded, and the job still succeeds.
"""
from __future__ import annotations

import copy
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ttm.checkpoint import atomic_write, file_info, write_json
from ttm.registry import checkpoint_name

log = logging.getLogger("ttm.train.export")  # under ttm.train: what it says goes to the job's log

# torch's ONNX exporter (the torch.export-based one; it needs onnxscript) translates to opset 18 natively, so no
# version-conversion pass runs after it; onnxruntime runs opset 18 since 1.14 and the IR version 10 torch writes
# since 1.18, so runtimes of 2024 on load the file too.
ONNX_OPSET = 18
# An export computes the same fp32 arithmetic with other kernels (another convolution algorithm and summation order;
# ONNX's optimizer folds batch norm into the convolution), so its logits differ from eager PyTorch's by rounding:
# float32 ulps that grow with the logits' size, at most about 1e-6 for the CIFAR networks of the registry. 1e-4,
# scaled by the largest |logit| when that is over 1, leaves that two orders of magnitude, while a real translation
# error (a wrong op or constant, a branch baked in by a trace) moves the logits by far more.
TOLERANCE = 1e-4
CHECK_IMAGES = 64  # test images in the check: a batch, and the first of them alone
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ExportRefused(RuntimeError):
    """The export could not be made or did not pass its check; the message says why."""


@dataclass(frozen=True)
class Exporter:
    write: Callable[[nn.Module, torch.Tensor, Path], None]  # (student, example batch, file)
    load: Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]  # the file in its own runtime: batch → logits
    runtime: Callable[[], str]  # what ran the check, with its version
    facts: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest beside the check


@contextmanager
def _deliberate_torchscript() -> Iterator[None]:
    # TorchScript is deprecated in this torch and says so at every trace, save and load. Here it is the format a
    # user asked for, so those warnings would only clutter their log; any other warning still shows.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1)


# ---------------------------------------------------------------------------------------------- onnx
def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  # what the exporter writes with
        import onnxscript  # noqa: F401  # what it translates with
    except ImportError as e:
        raise ExportRefused(f"the ONNX exporter needs onnx and onnxscript, which this trainer lacks ({e.name}): "
                            "pip install 'ttm[export]'") from None
    with _quiet("onnxscript", "onnx_ir"):  # each optimizer pass logs a line at INFO
        program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=ONNX_OPSET, dynamo=True, dynamic_shapes=({0: _batch_dim()},),
                                    verbose=False)
    assert program is not None  # the torch.export-based exporter returns its program
    program.save(str(path), external_data=False)  # the weights inside: one file to download and deploy


def _load_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the trainer's share of the cores, not all of them
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def _onnxruntime() -> str:
    try:
        import onnxruntime
    except ImportError:
        raise ExportRefused("onnxruntime, which checks an ONNX export before it is offered, is not installed in "
                            "this trainer: pip install 'ttm[export]'") from None
    return f"onnxruntime {onnxruntime.__version__}"


# ---------------------------------------------------------------------------------------------- pt2, torchscript
def _write_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(path))


def _load_pt2(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.export.load(str(path)).module()


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _deliberate_torchscript():
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))


def _load_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with _deliberate_torchscript():
        return torch.jit.load(str(path), map_location="cpu")


def _torch() -> str:
    return f"torch {torch.__version__}"


EXPORTERS: dict[str, Exporter] = {
    "onnx": Exporter(_write_onnx, _load_onnx, _onnxruntime, {"opset": ONNX_OPSET}),
    "pt2": Exporter(_write_pt2, _load_pt2, _torch),
    "torchscript": Exporter(_write_torchscript, _load_torchscript, _torch),
}


# ---------------------------------------------------------------------------------------------- the check
def check_images(batches: Iterable[tuple[torch.Tensor, ...]], n: int = CHECK_IMAGES) -> torch.Tensor:
    """The first `n` images of a split's batches (normalized, as the student sees them), fp32 on the CPU."""
    taken: list[torch.Tensor] = []
    count = 0
    for x, *_ in batches:
        taken.append(x[:n - count].to("cpu", torch.float32).contiguous())
        count += len(taken[-1])
        if count >= n:
            break
    if not taken:
        raise ValueError("no test images to check the exports on")
    return torch.cat(taken)


def input_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """What an exported file takes and gives, from the student's manifest."""
    channels, height, width = manifest["input_shape"]
    norm = manifest["normalization"]
    return {"name": INPUT_NAME, "shape": ["batch", channels, height, width], "dtype": "float32", "layout": "NCHW",
            "normalization": {"mean": norm["mean"], "std": norm["std"],
                              "formula": "(pixel / 255 - mean) / std, per channel, pixels 0-255"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", manifest["num_classes"]], "dtype": "float32",
                       "meaning": "logits (softmax for probabilities)"}}


def _check(exporter: Exporter, path: Path, x: torch.Tensor, expected: torch.Tensor) -> dict[str, Any]:
    """Run the file on the batch and on its first image alone; refuse it unless every logit is within tolerance."""
    tolerance = TOLERANCE * max(1.0, float(expected.abs().max()))
    run = exporter.load(path)
    outputs = []
    for batch, want in ((x, expected), (x[:1], expected[:1])):
        with torch.no_grad():
            got = run(batch).float()
        if got.shape != want.shape:
            raise ExportRefused(f"its output on {len(batch)} images has shape {list(got.shape)}, PyTorch's "
                                f"{list(want.shape)}")
        diff = float((got - want).abs().max())
        if not diff <= tolerance:  # NaN fails too
            raise ExportRefused(f"its logits differ from PyTorch's by up to {diff:.3g} on {len(batch)} test "
                                f"image(s), over the tolerance {tolerance:.3g}")
        outputs.append((got, diff))
    (got, diff), (_, diff_one) = outputs
    return {"runtime": exporter.runtime(), "images": len(x), "batch_sizes": [len(x), 1],
            "max_abs_diff": max(diff, diff_one), "tolerance": tolerance,
            "tolerance_rule": f"{TOLERANCE:g} × max(1, max |PyTorch logit|)",
            "argmax_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean())}


def _first_cause(err: BaseException) -> str:
    """The exporter's own failure in a line: the innermost error (the ONNX exporter wraps torch.export's in one that
    says only which step failed), without terminal colours."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no message'}"


def export_one(fmt: str, model: nn.Module, images: torch.Tensor, path: Path) -> dict[str, Any]:
    """Write `model` (CPU, fp32, eval) as `fmt` at `path` if it passes its check on `images`; returns the check."""
    exporter = EXPORTERS[fmt]
    exporter.runtime()  # a runtime that is missing refuses before any work
    with torch.no_grad():
        expected = model(images).float()
    example = images[:2] if len(images) >= 2 else images.expand(2, *images.shape[1:])  # a batch of 1 would be fixed
    result: dict[str, Any] = {}

    def write_and_check(tmp: Path) -> None:
        try:
            exporter.write(model, example, tmp)
            result.update(_check(exporter, tmp, images, expected))
        except ExportRefused:
            raise
        except Exception as e:  # the exporter or the runtime failed: a refusal too, never a failed job
            raise ExportRefused(_first_cause(e)) from e

    atomic_write(path, write_and_check)  # checked under its temporary name; renamed only when it passed
    return result


def export_student(model: nn.Module, formats: Iterable[str], images: torch.Tensor, manifest_path: Path
                   ) -> dict[str, dict[str, Any]]:
    """Export the student of `manifest_path` (e.g. run/best.json) in each of `formats` beside it, checked on
    `images`; records each in the manifest ("files" for those offered, "exports" for all) and returns "exports"."""
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    images = images.to("cpu", torch.float32).contiguous()
    manifest = json.loads(manifest_path.read_text())
    which, spec = manifest_path.stem, input_spec(manifest)
    exports = dict(manifest.get("exports", {}))
    for fmt in formats:
        path = manifest_path.parent / checkpoint_name(which, fmt)
        facts = {**EXPORTERS[fmt].facts, "input": spec}
        try:
            check = export_one(fmt, model, images, path)
        except ExportRefused as e:
            path.unlink(missing_ok=True)  # an earlier run's file must not be offered for this student
            manifest["files"].pop(fmt, None)
            exports[fmt] = {"offered": False, "reason": str(e), **facts}
            log.warning("%s export of the %s student refused: %s", fmt, which, e, exc_info=e.__cause__)
            continue
        manifest["files"][fmt] = file_info(path)
        exports[fmt] = {"offered": True, "file": path.name, "check": check, **facts}
        log.info("%s export: %s (%s on %d test images: max |Δ logit| %.2g ≤ %.2g)", fmt, path.name,
                 check["runtime"], check["images"], check["max_abs_diff"], check["tolerance"])
    manifest["exports"] = exports
    write_json(manifest_path, manifest)
    return exports


def export_best(run_dir: Path, formats: Iterable[str], test_batches: Iterable[tuple[torch.Tensor, ...]]
                ) -> dict[str, dict[str, Any]]:
    """Export the best student of `run_dir` (best.pt, as best.json describes it) in each of `formats`, checked on
    the first test images of `test_batches`. The one path of both kinds of export: at the end of a job whose spec
    asks for them (ttm.train), and on request after it (worker/export_child.py)."""
    from ttm.models import build_model

    manifest_path = run_dir / "best.json"
    manifest = json.loads(manifest_path.read_text())
    best = build_model(manifest["arch"], num_classes=manifest["num_classes"], in_channels=manifest["input_shape"][0])
    best.load_state_dict(torch.load(run_dir / checkpoint_name("best", "pt"), map_location="cpu", weights_only=True))
    return export_student(best, formats, check_images(test_batches), manifest_path)
