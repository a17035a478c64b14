"""Loading teacher weights safely (DESIGN decision 5: untrusted files stay data).

Accepted: a plain state_dict, a `{"model": state_dict, ...}` checkpoint (CRD/RepDistiller, mdistiller releases),
safetensors, and TorchScript archives (an explicit format that carries its architecture: a program, which only a
job's trainer child loads, and only where an admin allows it). Pickles always load with `weights_only=True`: one
that needs code to load is refused and none of its code runs. The server inspects uploads with ttm.inspection.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ttm.shapes import shape_mismatch

Format = Literal["state_dict", "safetensors", "torchscript"]
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net", "student")


class WeightsError(ValueError):
    """A weights file that cannot become a teacher; the message says why and what to do."""


def detect_format(path: str | Path) -> Format:
    from ttm.inspection import sniff_format

    return sniff_format(Path(path))  # type: ignore[return-value]


def load_state_dict_file(path: str | Path, fmt: str = "auto", *, mmap: bool = False,
                         label: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file as a flat state_dict on the CPU, never running code from the file. `mmap`: map
    a torch.save zip's storages instead of reading them (memory stays bounded); `label`: what messages call the
    file (default: its name)."""
    path = Path(path)
    label = label or path.name
    if not path.is_file():
        raise WeightsError(f"weights file not found: {label}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "torchscript":
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"{label} is not a valid safetensors file: {err}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle.UnpicklingError for code or odd opcodes; RuntimeError/EOFError for junk
        needs = _pickled_globals(path)
        if needs is None:
            raise WeightsError(f"{label} is not a PyTorch weights file (neither a pickle, a torch.save zip, "
                               "safetensors nor TorchScript)") from None
        detail = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
        raise WeightsError(
            f"{label} is a pickle that needs code to load, refused (weights_only=True); it references "
            f"{', '.join(needs[:3]) or 'objects beyond tensors and containers'} ({detail}). Nothing in it ran. "
            "Save a state_dict (torch.save(model.state_dict(), f)) or safetensors instead.") from None
    return _unwrap(obj, label)


def _pickled_globals(path: Path) -> list[str] | None:
    """The globals a pickle names (read with pickletools, never executed); None if the file is no pickle."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(member)
        else:
            data = path.read_bytes()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # StopIteration, ValueError from genops, zip errors: not a pickle
        return None
    torch_own = ("torch.", "collections.OrderedDict", "_codecs.encode")
    return [g for g in dict.fromkeys(found) if not g.startswith(torch_own)]


def _unwrap(obj: object, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(t, torch.Tensor) for t in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(t, torch.Tensor) for t in obj.values()):
        raise WeightsError(f"{name} holds no state_dict: expected a mapping of names to tensors, or "
                           f"{{'model': state_dict, ...}}")
    # checkpoints saved from DataParallel / DDP / torch.compile carry a prefix on every key
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k.removeprefix(prefix): v for k, v in obj.items()}
    return obj


def load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str = "weights") -> None:
    """Strict load whose error names the first mismatching key and both shapes."""
    problem = shape_mismatch({k: tuple(t.shape) for k, t in model.state_dict().items()},
                             {k: tuple(t.shape) for k, t in state.items()}, what)
    if problem is not None:
        raise WeightsError(problem)
    model.load_state_dict(state, strict=True)


def load_teacher(*, arch: str | None, weights: str | None = None, torchscript: str | None = None,
                 num_classes: int, in_channels: int, fmt: str = "auto") -> nn.Module:
    """The teacher in eval mode on the CPU, its output checked to have `num_classes` logits."""
    from ttm.models import build_model

    if torchscript is not None:
        model = torch.jit.load(str(torchscript), map_location="cpu")
    else:
        if arch is None or weights is None:
            raise WeightsError("a teacher needs arch + weights, or torchscript")
        model = build_model(arch, num_classes=num_classes, in_channels=in_channels)
        load_into(model, load_state_dict_file(weights, fmt), what=f"teacher weights {Path(weights).name}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
