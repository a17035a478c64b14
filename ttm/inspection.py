"""What a weights file holds, and what an architecture expects, printed as JSON by a short-lived process.

The server never imports torch and never opens an uploaded file itself (DESIGN decision 8): it runs

    python -m ttm.inspection [--memory BYTES --cpu SECONDS] file PATH --max-bytes N
    python -m ttm.inspection [--memory BYTES --cpu SECONDS] arch ARCH NUM_CLASSES IN_CHANNELS IMAGE_SIZE

in a subprocess with memory and CPU limits, a timeout and no credentials (service/inspection.py), and keeps what
it prints: {"format", "tensors": {key: shape}} for a file, {"tensors", "params", "output"} for an architecture, or
{"error": why} (the process's exit status is 0 either way; anything else means it was killed or crashed).

Nothing from a file runs here: safetensors headers are parsed as JSON, a zip's members are checked by their
declared sizes before anything is inflated, pickles load with weights_only=True, and a TorchScript archive (a
program) is recognised by its members and never loaded.
"""
from __future__ import annotations

import json
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

SAFETENSORS_HEADER_MAX = 64 * 1024 * 1024
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                           "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# A member of a torch.save zip is stored, not compressed: one that inflates past this ratio is a bomb, not weights.
ZIP_MAX_RATIO = 4


class Refused(ValueError):
    """The file cannot become a teacher; the message says why (it names no path)."""


def _is_torchscript(names: list[str]) -> bool:
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def sniff_format(path: Path) -> str:
    """safetensors | torchscript | state_dict (a torch.save zip or a legacy pickle), from the bytes alone."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if _is_torchscript(z.namelist()):
                return "torchscript"
    return "state_dict"


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """The tensors a safetensors file declares, checked against the file's size, from its JSON header only."""
    size = path.stat().st_size
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(SAFETENSORS_HEADER_MAX, size - 8):
            raise Refused(f"not a valid safetensors file: its header claims {length} bytes")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise Refused("not a valid safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise Refused("not a valid safetensors file: its header is not a JSON object")
    data_bytes = size - 8 - length
    shapes: dict[str, list[int]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = 1
            for dim in shape:
                if not isinstance(dim, int) or dim < 0:
                    raise TypeError
                count *= dim
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_bytes):
                raise TypeError
            if end - start != count * SAFETENSORS_DTYPE_BYTES[dtype]:
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise Refused(f"not a valid safetensors file: tensor {key!r} is malformed or lies outside the "
                          "file") from None
        shapes[key] = list(shape)
    if not shapes:
        raise Refused("the safetensors file holds no tensors")
    return shapes


def check_zip_sizes(path: Path, max_bytes: int) -> None:
    """Refuse a zip whose members would inflate past `max_bytes` in all, or past ZIP_MAX_RATIO × their stored size
    (torch.save stores its members uncompressed), before anything is inflated."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise Refused(f"the archive's members would inflate to {total} bytes, more than the {max_bytes} allowed")
    for info in infos:
        if info.file_size > 1024 * 1024 and info.file_size > ZIP_MAX_RATIO * max(info.compress_size, 1):
            raise Refused(f"the archive's member {info.filename.rsplit('/', 1)[-1]!r} inflates "
                          f"{info.file_size // max(info.compress_size, 1)}-fold; torch.save stores weights "
                          "uncompressed: save them again with torch.save or as safetensors")


def state_dict_shapes(path: Path, max_bytes: int) -> dict[str, list[int]]:
    zipped = zipfile.is_zipfile(path)
    with path.open("rb") as f:
        first = f.read(1)
    if not zipped and first != b"\x80":  # neither a zip nor a pickle of protocol 2+ (what torch.save writes)
        raise Refused("not a PyTorch weights file (neither a pickle, a torch.save zip, safetensors nor "
                      "TorchScript)")  # said without importing torch: junk costs no second of start-up
    import torch

    from ttm.teacher import WeightsError, load_state_dict_file

    if zipped:
        check_zip_sizes(path, max_bytes)
    try:
        state = load_state_dict_file(path, "state_dict", mmap=zipped)
    except WeightsError as err:
        raise Refused(str(err)) from None
    return {k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def describe_file(path: Path, max_bytes: int) -> dict[str, Any]:
    fmt = sniff_format(path)
    if fmt == "torchscript":
        return {"format": "torchscript", "tensors": None}
    if fmt == "safetensors":
        return {"format": fmt, "tensors": safetensors_shapes(path)}
    return {"format": fmt, "tensors": state_dict_shapes(path, max_bytes)}


def describe_arch(arch: str, num_classes: int, in_channels: int, image_size: int) -> dict[str, Any]:
    """The architecture's state_dict shapes, parameter count and output shape for a batch of 2, on torch's meta
    device: no memory for weights, no arithmetic, so a huge model or input costs nothing to check."""
    import torch

    from ttm.models import build_model, count_params

    try:
        with torch.device("meta"):
            model = build_model(arch, num_classes=num_classes, in_channels=in_channels)
    except ValueError as err:
        raise Refused(str(err).splitlines()[0][:400]) from None
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty(2, in_channels, image_size, image_size, device="meta"))
    except Exception as err:  # noqa: BLE001 - any failure to run means this input does not fit
        why, hint = str(err).splitlines()[0][:300], made_for(model)
        raise Refused(f"{arch} cannot take a {in_channels}×{image_size}×{image_size} input: "
                      f"{why.rstrip('.') + hint if hint else why}") from None
    output = list(out.shape) if isinstance(out, torch.Tensor) else None
    return {"tensors": shapes, "params": count_params(model), "output": output}


def made_for(model: Any) -> str:
    """The input size a timm model was made for, which its config records (a ViT's position embeddings, or a CNN
    whose stem shrinks 28×28 to nothing), as a hint; "" for other models."""
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if not (isinstance(size, tuple | list) and len(size) == 3):
        return ""
    return (f"; timm made it for {size[1]}×{size[2]} inputs (dataset.image_size sets the size for an image folder "
            "or synthetic data)")


def limit_self(memory_bytes: int, cpu_seconds: int) -> None:
    """Limits for this process, set before anything is read: address space, CPU time, no file past 1 MiB (torch
    probes its temporary directory), no core."""
    import resource

    for which, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                         (resource.RLIMIT_FSIZE, 1 << 20), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 1024)):
        resource.setrlimit(which, (value, value))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--memory"] and len(argv) > 4 and argv[2] == "--cpu":
        limit_self(int(argv[1]), int(argv[3]))
        argv = argv[4:]
    try:
        if argv[:1] == ["file"] and len(argv) == 4 and argv[2] == "--max-bytes":
            result = describe_file(Path(argv[1]), int(argv[3]))
        elif argv[:1] == ["arch"] and len(argv) == 5:
            result = describe_arch(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        else:
            print("usage: python -m ttm.inspection file PATH --max-bytes N | arch ARCH CLASSES CHANNELS SIZE",
                  file=sys.stderr)
            return 2
    except Refused as err:
        result = {"error": str(err)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
