#!/usr/bin/env python
"""Why the recipe check's stand-in ResNet scales its residual branches: activation and logit scale at
initialisation of DeepLabV2 on the stand-in weights, version 1 (unit scales) against version 2
(``1/sqrt(blocks)``, :func:`recipes.standin_backbone`).

For each version: the RMS of the four stage outputs, the standard deviation of the DeepLabV2 head's
logits (its own initialisation, seed 0) and their cross-entropy against uniformly random labels (ln 19
= 2.94 for logits near 0), on a 256-pixel crop of a full-size GTA5 stand-in image that the BatchNorm
statistics did not see. Trains nothing; the data are the recipe check's (``data/recipes/full``,
generated when missing)::

    python benchmarks/standin_scale.py                 # -> benchmarks/results/standin_scale.md
    python benchmarks/standin_scale.py --backbone resnet18
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def measure(backbone: str, source: Path) -> list[dict]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import recipes
    from balda.data.io import read_image
    from balda.models.deeplabv2 import ASPPClassifier

    image = read_image(sorted((source / "images").glob("*.png"))[0])[300:556, 300:556]
    x = (image.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    x = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
    rows = []
    for version, scale in ((1, 1.0), (2, None)):
        net = recipes.standin_backbone(backbone, source, MEAN, STD, branch_scale=scale)
        torch.manual_seed(0)
        head = ASPPClassifier(net.out_channels[-1], 19).eval()
        with torch.no_grad():
            feats = net(x)
            out = head(feats[-1])
            logits = getattr(out, "logits", out)
            labels = torch.randint(0, 19, logits[:, 0].shape, generator=torch.Generator().manual_seed(0))
            ce = F.cross_entropy(logits, labels)
        rows.append(
            {
                "version": version,
                "rms": [float(f.pow(2).mean().sqrt()) for f in feats],
                "logit_std": float(logits.std()),
                "ce": float(ce),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet101")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "recipes" / "full")
    p.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "results" / "standin_scale.md")
    args = p.parse_args(argv)
    import torch

    import recipes

    torch.set_num_threads(1)
    roots = recipes.ensure_data(args.data, "full")
    rows = measure(args.backbone, roots["gta5"])
    lines = [
        f"# Stand-in {args.backbone} at initialisation",
        "",
        f"`python benchmarks/standin_scale.py --backbone {args.backbone}` at commit {recipes._commit()}: "
        "one 256-pixel crop of a full-size GTA5 stand-in image, DeepLabV2 head at its initialisation.",
        "",
        "| stand-in | residual branch scale | RMS layer1 / 2 / 3 / 4 | logit std | CE (random labels) |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        scale = "1" if r["version"] == 1 else "1/sqrt(blocks)"
        rms = " / ".join(f"{v:.2f}" for v in r["rms"])
        lines.append(f"| v{r['version']} | {scale} | {rms} | {r['logit_std']:.2f} | {r['ce']:.2f} |")
    text = "\n".join(lines) + "\n"
    args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
