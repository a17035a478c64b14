"""The main job of the README (`./dev demo`): a real distillation on Fashion-MNIST with the embedded defaults.

For now it runs the trainer locally on examples/fashion_mnist_wttm.yaml (a resnet20 teacher trained with CE, then
a resnet8 student distilled with WTTM); the server issues turn it into a run through `ttm serve` and the HTTP API.
"""
from __future__ import annotations

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fashion_mnist_wttm.yaml"


def main(argv: list[str] | None = None) -> None:
    from ttm.cli import app

    args = ["train", str(EXAMPLE), "--out", "runs/demo", *(argv if argv is not None else sys.argv[1:])]
    app(args=args, prog_name="ttm")


if __name__ == "__main__":
    main()
