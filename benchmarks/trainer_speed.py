"""Trainer speed: resnet56 → resnet20 with WTTM on CIFAR-100-shaped random data, three loops side by side.

(a) the reference loop of the paper's code: fp32, batch 64, per-sample PIL transforms in DataLoader workers,
    teacher forward under no_grad;
(b) a hand-written tight loop: device-resident uint8 data, on-device crop/flip, bf16 autocast + channels_last on
    CUDA (fp32 on CPU, as the trainer does), batch --batch;
(c) the project's trainer (`ttm.train.train`) on the same job, its steady-state images/s (the second epoch's).

Every loop runs the same models and --batches optimizer steps of --batch images ((a) runs the same number of
images in batches of 64). Random images are fine for speed; nothing here says anything about accuracy.

    python -m benchmarks.trainer_speed                       # full size (use on a GPU)
    python -m benchmarks.trainer_speed --reduced             # this 2-core CPU: fewer steps, fewer workers
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from ttm.losses import wttm_loss
from ttm.models import build_model
from ttm.spec import WTTMLoss, parse_spec

LOSS = WTTMLoss(kind="wttm", gamma=0.3, beta=1.5)
MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def random_cifar(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 100, (n,), generator=g))


def models(device, memory_format=torch.contiguous_format):
    torch.manual_seed(0)
    teacher = build_model("resnet56", 100).to(device, memory_format=memory_format).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_model("resnet20", 100).to(device, memory_format=memory_format)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return teacher, student, opt


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- (a) reference
class PILDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        import torchvision.transforms as T

        self.images = x.permute(0, 2, 3, 1).numpy()  # HWC uint8, as CIFAR's .data
        self.labels = y.numpy()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_loop(x, y, device, steps: int, warmup: int, workers: int) -> float:
    teacher, student, opt = models(device)
    loader = torch.utils.data.DataLoader(PILDataset(x, y), batch_size=64, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    n = 0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        z = student(xb)
        with torch.no_grad():
            v = teacher(xb)
        loss = wttm_loss(z, v, yb, LOSS)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the reference code reads the loss every step (its AverageMeter)
        if i >= warmup:
            n += yb.shape[0]
    sync(device)
    return n / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- (b) tight loop
def crop_flip(xb: torch.Tensor, pad: int = 4) -> torch.Tensor:
    b, c, h, w = xb.shape
    xp = F.pad(xb, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=xb.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=xb.device)
    flip = torch.rand(b, 1, device=xb.device) < 0.5
    ar = torch.arange(w, device=xb.device)
    rows = oy + torch.arange(h, device=xb.device)
    cols = ox + torch.where(flip, ar.flip(0), ar)
    bi = torch.arange(b, device=xb.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def tight_loop(x, y, device, batch: int, steps: int, warmup: int) -> float:
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    teacher, student, opt = models(device, fmt)
    x, y = x.to(device), y.to(device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    total = torch.zeros((), device=device)
    n = 0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        idx = torch.randint(0, len(y), (batch,), device=device)
        xb = ((crop_flip(x[idx]).float() - mean) / std).contiguous(memory_format=fmt)
        yb = y[idx]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            z = student(xb)
            with torch.no_grad():
                v = teacher(xb)
        loss = wttm_loss(z, v, yb, LOSS)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()  # on the device: no host sync inside the step
        if i >= warmup:
            n += batch
    sync(device)
    elapsed = time.perf_counter() - start
    assert torch.isfinite(total)
    return n / elapsed


# ---------------------------------------------------------------------------------------------- (c) the trainer
def project_trainer(device, batch: int, steps: int, teacher_path: str, compile_: bool) -> float:
    from ttm.train import train

    spec = parse_spec({
        "name": "speed", "teacher": {"arch": "resnet56", "weights": teacher_path}, "student": {"arch": "resnet20"},
        "dataset": {"name": "synthetic", "num_classes": 100, "subset": {"train": batch * steps, "test": batch}},
        "loss": LOSS.model_dump(), "train": {"epochs": 2, "batch_size": batch, "lr": 0.05, "compile": compile_,
                                             "device": device.type, "schedule": {"kind": "constant"}}})
    with tempfile.TemporaryDirectory() as out:
        seen = {}
        train(spec, out, on_metrics=lambda e, m: seen.__setitem__(e, m), resume=False)
    return seen[2]["images_per_s"]  # epoch 1 holds the warm-up (cudnn autotuning, compilation)


def main() -> None:
    from benchmarks.common import write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="CPU size: 6 steps of 64 images, 2 loader workers")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40, help="timed optimizer steps per loop (of --batch images)")
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers of the reference loop")
    ap.add_argument("--compile", action="store_true", help="also time the trainer with train.compile")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.reduced:
        args.batch, args.steps, args.workers = 64, 6, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, y = random_cifar(max(args.batch * args.steps, 5000))
    warm = 2 if args.reduced else 10

    ref_steps = args.steps * args.batch // 64
    figures = {"device": str(device), "batch": args.batch, "steps": args.steps}
    figures["a_reference_img_s"] = reference_loop(x, y, device, ref_steps, warm, args.workers)
    figures["b_tight_img_s"] = tight_loop(x, y, device, args.batch, args.steps, warm)
    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        torch.save(build_model("resnet56", 100).state_dict(), f.name)
        figures["c_trainer_img_s"] = project_trainer(device, args.batch, args.steps, f.name, False)
        if args.compile:
            figures["c_trainer_compiled_img_s"] = project_trainer(device, args.batch, args.steps, f.name, True)
    figures["c_over_a"] = figures["c_trainer_img_s"] / figures["a_reference_img_s"]
    figures["c_over_b"] = figures["c_trainer_img_s"] / figures["b_tight_img_s"]
    figures["trainer_overhead_vs_b_pct"] = 100 * (figures["b_tight_img_s"] / figures["c_trainer_img_s"] - 1)
    write_result("trainer_speed" + ("-reduced" if args.reduced else ""), figures, args.out)


if __name__ == "__main__":
    np.random.seed(0)
    main()
