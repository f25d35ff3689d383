"""Exporting predictions as Cityscapes ``labelIds`` (and colour) PNGs, and scoring them with the
official ``cityscapesscripts`` evaluation (balda's mIoU must agree with it).

The labelIds files (``<export_dir>/labelIds/<name>_pred.png``) match the official pixel-level
evaluation's pattern for ``<city>_<seq>_<frame>_gtFine_labelIds.png``; the official score averages the
IoUs of its 19 evaluated (non-``ignoreInEval``) classes that are not NaN, which is exactly ``nanmean``
over the 19-class view of :class:`~balda.engine.metrics.Metrics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from balda.data.labels import TRAINID_TO_LABELID_LUT, colorize

__all__ = ["export_prediction", "cityscapes_official_eval"]


def export_prediction(pred: np.ndarray, name: str, export_dir: str | Path) -> tuple[Path, Path]:
    """Write one (H, W) trainId prediction as Cityscapes labelIds and colour PNGs.

    Files: ``<export_dir>/labelIds/<name>_pred.png`` (trainId -> labelId through
    ``TRAINID_TO_LABELID_LUT``; 255 -> 0 "unlabeled") and ``<export_dir>/color/<name>_pred_color.png``.
    For a Cityscapes stem ``<city>_<seq>_<frame>`` the labelIds file matches the official
    evaluation's pattern ``<city>_<seq>_<frame>*.png``; point it at the ``labelIds`` folder only.
    """
    from PIL import Image

    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"prediction must be (H, W), got shape {pred.shape}")
    pred = pred.astype(np.uint8)
    root = Path(export_dir)
    lab_path = root / "labelIds" / f"{name}_pred.png"
    col_path = root / "color" / f"{name}_pred_color.png"
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    col_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(TRAINID_TO_LABELID_LUT[pred]).save(lab_path)
    Image.fromarray(colorize(pred)).save(col_path)
    return lab_path, col_path


def cityscapes_official_eval(
    pred_dir: str | Path, gt_search: str | Path, json_path: Optional[str | Path] = None, quiet: bool = True
) -> dict:
    """Score exported labelIds PNGs with the official ``cityscapesscripts`` pixel-level evaluation.

    ``pred_dir`` is the ``labelIds`` folder written by :func:`export_prediction`; ``gt_search`` a glob
    such as ``<cityscapes>/gtFine/val/*/*_gtFine_labelIds.png``. Instance-level scores and its pixel
    accuracy are switched off (they need ``_instanceIds`` files). Returns the official result dict;
    ``["averageScoreClasses"]`` is its mIoU (mean of the non-NaN IoUs of its 19 evaluated classes).
    Needs the optional ``cityscapesscripts`` package.
    """
    import copy
    import glob

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    args = copy.copy(cs_eval.args)
    args.groundTruthSearch = str(gt_search)
    args.predictionPath = str(pred_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.quiet = quiet
    args.colorized = False
    args.bold = args.nocol = ""
    args.JSONOutput = json_path is not None
    if json_path is not None:
        args.exportFile = str(json_path)
    gts = sorted(glob.glob(args.groundTruthSearch))
    if not gts:
        raise FileNotFoundError(f"no ground truth matches {args.groundTruthSearch}")
    preds = [cs_eval.getPrediction(args, gt) for gt in gts]
    return cs_eval.evaluateImgLists(preds, gts, args)
