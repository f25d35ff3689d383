r"""One active-learning round: score the target train set, select, annotate, store.

RIPU (Xie et al., CVPR 2022) and CBDA (Schachtsiek et al., arXiv 2311.14146); docs/active.md.

:func:`acquire_round` runs the model image by image over the target train set (``dataset.load(i) ->
(image, label)``, images as raw RGB pixels), upsamples the logits to the label resolution, computes
the scores of :mod:`balda.active.scores`, sets already-acquired pixels to ``-inf`` and selects:

* ``selection="ripu"``: a fixed budget per image. Region mode (``mode="region"``, ``k = cfg.radius``):
  ``n_i = ceil(H_i W_i * budget / rounds / (2k+1)^2)`` windows with scores ``A = P * U``, greedy
  suppression radius ``2k``. Pixel mode: scores ``H * P`` over a ``cfg.pixel_radius`` window,
  suppression radius ``cfg.pixel_radius``, single pixels; ``n_i = ceil(budget / rounds)`` if
  ``budget >= 1`` (pixels per image in total) else ``ceil(H_i W_i * budget / rounds)``. RIPU's
  "40 pixels per image at 1280x640" is ``budget = 40 / (1280 * 640) = 4.8828125e-05`` at any label
  resolution (about 21 per round at 2048x1024).
* ``selection="cbda"``: the same scores re-weighted by class weights (``cfg.cbda.class_balance``) and
  chosen globally (``cfg.cbda.dynamic``), see :mod:`balda.active.cbda`. The class frequencies are the
  labelled-set histogram of the store; before the first round the predicted-class frequencies on
  ``prior_images`` evenly spaced target images (one extra forward pass each; 0 = uniform weights).
  Only per-image candidate lists are kept, never the score maps.

The selection is written to the store before any mask (``rounds/round_XX.npz``), then each image's
new pixels are annotated and its masks written, then the round is committed to the manifest. The
round is resumable: if the manifest says it is done its statistics are returned as they are; if only
the selection was written (a crash while annotating) the same selection is re-applied, which is
idempotent, so the masks are identical to an uninterrupted run.

:func:`plot_round` draws the acquired pixels over a few target images and the labelled-set class
histogram of every round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from balda.active.annotator import Annotator, LabelStore, OracleAnnotator
from balda.active.cbda import class_weights, dynamic_select, kl_to_uniform, reweight_scores
from balda.active.scores import ripu_pixel_scores, ripu_region_scores
from balda.active.select import greedy_select_parallel, regions_to_mask
from balda.config import ActiveConfig
from balda.core.progress import progress_bar
from balda.data.labels import CLASS_NAMES, PALETTE
from balda.models.inference import normalize_images, predict_whole

__all__ = ["acquire_round", "plot_round", "per_image_budget", "round_budget", "score_image"]


# ------------------------------------------------------------------------------------ budgets
def per_image_budget(cfg: ActiveConfig, num_rounds: int, height: int, width: int) -> int:
    """RIPU's per-image, per-round number of regions (region mode) or pixels (pixel mode)."""
    pixels = height * width
    if cfg.mode == "region":
        area = (2 * cfg.radius + 1) ** 2
        return int(math.ceil(pixels * cfg.budget / num_rounds / area))
    if cfg.budget >= 1:
        return int(math.ceil(cfg.budget / num_rounds))
    return int(math.ceil(pixels * cfg.budget / num_rounds))


def round_budget(cfg: ActiveConfig, num_rounds: int, total_pixels: int, num_images: int) -> int:
    """CBDA's global per-round budget ``ceil(budget/rounds * sum pixels / region size)``."""
    if cfg.mode == "region":
        area = (2 * cfg.radius + 1) ** 2
        return int(math.ceil(total_pixels * cfg.budget / num_rounds / area))
    if cfg.budget >= 1:
        return int(math.ceil(cfg.budget * num_images / num_rounds))
    return int(math.ceil(total_pixels * cfg.budget / num_rounds))


def _radii(cfg: ActiveConfig) -> tuple[int, int]:
    """(label radius, suppression radius) of the selection."""
    if cfg.mode == "region":
        return cfg.radius, 2 * cfg.radius
    return 0, cfg.pixel_radius


# ---------------------------------------------------------------------------------- inference
def _image_hw(image) -> tuple[int, int]:
    if isinstance(image, torch.Tensor) and image.dim() >= 3 and image.shape[-3] == 3 and image.shape[-1] != 3:
        return int(image.shape[-2]), int(image.shape[-1])
    shape = tuple(image.shape)
    return int(shape[0]), int(shape[1])


def _label_hw(image, label) -> tuple[int, int]:
    if label is not None:
        return int(label.shape[-2]), int(label.shape[-1])
    return _image_hw(image)


@torch.no_grad()
def _predict(model, image, out_hw, mean, std, device, infer_size=None) -> torch.Tensor:
    """Logits (1, K, H, W) float32 at the label resolution ``out_hw``."""
    x = normalize_images(image, mean, std, device)
    return predict_whole(model, x, tuple(out_hw), size=infer_size).float()


def score_image(
    logits: torch.Tensor, cfg: ActiveConfig, weights: Optional[torch.Tensor] = None, variant: str = "center"
) -> torch.Tensor:
    """Acquisition score map (H, W) of one image's logits (1, K, H, W), optionally class-re-weighted."""
    pred = logits.max(dim=1).indices
    if cfg.mode == "region":
        score = ripu_region_scores(logits, cfg.radius, pred)
        wr = cfg.radius
    else:
        score = ripu_pixel_scores(logits, cfg.pixel_radius, pred)
        wr = 0
    if weights is not None:
        score = reweight_scores(score, pred, weights, variant, wr)
    return score[0]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    def __init__(self, device):
        self.device = device
        self.total = 0.0

    def __enter__(self):
        _sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.total += time.perf_counter() - self.t0


# ------------------------------------------------------------------------------------ rounds
def _prior_counts(model, dataset, num_classes, n_images, mean, std, device, infer_size) -> np.ndarray:
    """Predicted-class pixel counts over ``n_images`` evenly spaced target images."""
    N = len(dataset)
    idx = np.unique(np.linspace(0, N - 1, num=min(n_images, N)).round().astype(np.int64))
    counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
    for i in idx:
        image, label = dataset.load(int(i))
        logits = _predict(model, image, _label_hw(image, label), mean, std, device, infer_size)
        counts += torch.bincount(logits.max(dim=1).indices.reshape(-1), minlength=num_classes)[:num_classes]
    return counts.cpu().numpy()


def _select(
    model,
    dataset,
    store: LabelStore,
    cfg: ActiveConfig,
    num_rounds: int,
    mean,
    std,
    device,
    progress: bool,
    infer_size,
    weight_variant: str,
    prior_images: int,
    max_passes: int,
) -> tuple[dict, dict, dict]:
    names = list(dataset.names)
    N = len(names)
    label_r, supp_r = _radii(cfg)
    cbda = cfg.selection == "cbda"
    dynamic = cbda and cfg.cbda.dynamic
    t_inf, t_sel = _Timer(device), _Timer(device)
    info: dict = {"weights_from": None, "class_weights": None}

    weights = None
    if cbda and cfg.cbda.class_balance:
        hist = store.class_histogram()
        if hist.sum() > 0:
            counts, info["weights_from"] = hist, "labelled"
        elif prior_images > 0:
            with t_inf:
                counts = _prior_counts(model, dataset, store.num_classes, prior_images, mean, std, device, infer_size)
            info["weights_from"] = "predicted"
        else:
            counts, info["weights_from"] = np.ones(store.num_classes), "uniform"
        weights = class_weights(counts, cfg.cbda.weights, cfg.cbda.alpha, cfg.cbda.clip).to(device)
        info["class_weights"] = [round(float(w), 6) for w in weights.cpu()]

    shapes: dict[int, tuple[int, int]] = {}

    def candidates(i: int, n: int):
        image, label = dataset.load(i)
        hw = _label_hw(image, label)
        shapes[i] = hw
        with t_inf:
            logits = _predict(model, image, hw, mean, std, device, infer_size)
        with t_sel:
            score = score_image(logits, cfg, weights, weight_variant)
            labelled = store.acquired_mask(names[i], hw)
            lm = None if labelled is None else torch.from_numpy(labelled).to(device)
            nb = per_image_budget(cfg, num_rounds, *hw)
            if n is not None:
                m = n
            elif dynamic:  # first-pass quota: a multiple of the uniform share
                m = max(1, int(math.ceil(cfg.cbda.candidates_factor * nb)))
            else:
                m = nb
            ys, xs, sc = greedy_select_parallel(score, supp_r, m, lm, return_scores=True)
            out = (ys.cpu().numpy(), xs.cpu().numpy(), sc.cpu())
        return out, nb, m

    picks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    first, quota = [], []
    budget = 0
    with progress_bar(f"active round: scoring {N} images", N, progress) as bar:
        for i in range(N):
            (ys, xs, sc), nb, m = candidates(i, None)
            budget += nb
            if dynamic:
                first.append((ys, xs, sc))
                quota.append(m)
            elif len(ys):
                picks[i] = (ys, xs)
            bar.advance()
    total_pixels = int(sum(h * w for h, w in shapes.values()))
    info.update(passes=1, reextracted=0, saturated=0)
    if dynamic:
        budget = round_budget(cfg, num_rounds, total_pixels, N)
        res = dynamic_select(lambda i, m: candidates(i, m)[0], N, budget, quota, max_passes, first)
        picks = dict(res.picks)
        info.update(passes=res.passes, reextracted=res.reextracted, saturated=res.saturated)
    n_picks = int(sum(len(p[0]) for p in picks.values()))
    info.update(
        budget=int(budget),
        picks=n_picks,
        shortfall=int(budget - n_picks),
        total_pixels=total_pixels,
        inference_s=round(t_inf.total, 4),
        selection_s=round(t_sel.total, 4),
        label_radius=label_r,
    )
    return picks, {i: shapes[i] for i in picks}, info


def acquire_round(
    model: torch.nn.Module,
    dataset,
    store: LabelStore,
    cfg: ActiveConfig,
    round_idx: int,
    num_rounds: int,
    mean: Sequence[float],
    std: Sequence[float],
    device,
    annotator: Optional[Annotator] = None,
    progress: bool = True,
    *,
    infer_size: Optional[Sequence[int]] = None,
    weight_variant: str = "center",
    prior_images: int = 64,
    max_passes: int = 3,
    main_process_only: bool = True,
) -> dict:
    """Run acquisition round ``round_idx`` (0-based) of ``num_rounds`` and return its statistics.

    Args:
        model: the segmentor to score with (put in eval mode for the round, then restored).
        dataset: target train set with labels (``len``, ``names``, ``load(i) -> (image, label)``).
        store: where masks and the manifest live.
        cfg: ``ActiveConfig`` (selection, mode, budget, radius, pixel_radius, cbda).
        mean, std: image normalisation (0-255 scale, as ``DataConfig``).
        annotator: defaults to :class:`OracleAnnotator` over ``dataset``.
        infer_size: resize the image to ``(h, w)`` for the forward pass (logits still go to label size).
        weight_variant: CBDA re-weighting by the centre's class (``center``) or the region's (``region``).
        prior_images: images used for the first-round predicted-class frequencies (0 = uniform).
        max_passes: CBDA dynamic selection passes (redistribution, :func:`~balda.active.cbda.dynamic_select`).
        main_process_only: under ``torch.distributed`` only rank 0 acquires; other ranks return
            ``{"round": r, "skipped": True}`` at once (the caller must barrier).

    Returns a dict: ``round``, ``picks`` (regions or pixels selected), ``budget``, ``shortfall``,
    ``acquired_pixels`` (void included), ``labelled_pixels``, ``pixels_per_class``, ``kl_uniform`` and
    ``min_class_share`` of the labelled set so far, ``budget_used`` (fraction of target pixels
    acquired so far), ``class_weights``, timings (``inference_s``, ``selection_s``, ``annotate_s``,
    ``time_s``) and ``resumed`` (True when the round had already been committed).
    """
    if cfg.mode not in ("region", "pixel"):
        raise ValueError(f"active.mode: unknown mode {cfg.mode!r}")
    if not 0 <= round_idx < max(num_rounds, 1):
        raise ValueError(f"round {round_idx} out of range for {num_rounds} rounds")
    if (
        main_process_only
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_rank() != 0
    ):
        return {"round": int(round_idx), "skipped": True}
    t0 = time.perf_counter()
    store.set_names(list(dataset.names))
    if store.is_done(round_idx):
        stats = dict(store.round_stats(round_idx))
        stats["resumed"] = True
        return stats
    annotator = annotator if annotator is not None else OracleAnnotator(dataset)
    device = torch.device(device)

    selection = store.load_selection(round_idx)
    if selection is None:
        was_training = model.training
        model.eval()
        try:
            picks, shapes, info = _select(
                model,
                dataset,
                store,
                cfg,
                num_rounds,
                mean,
                std,
                device,
                progress,
                infer_size,
                weight_variant,
                prior_images,
                max_passes,
            )
        finally:
            model.train(was_training)
        label_r = info["label_radius"]
        store.save_selection(round_idx, picks, shapes, label_r, info)
    else:
        picks, shapes, label_r, info = (selection["picks"], selection["shapes"], selection["radius"], selection["info"])

    names = store.names
    K = store.num_classes
    counts = np.zeros(K, dtype=np.int64)
    acquired = 0
    t_ann = time.perf_counter()
    with progress_bar(f"active round: annotating {len(picks)} images", len(picks), progress) as bar:
        for i in sorted(picks):
            ys, xs = picks[i]
            mask = regions_to_mask(ys, xs, label_r, shapes[i]).numpy()
            c, a = store.apply(i, names[i], mask, annotator, round_idx)
            counts += c
            acquired += a
            bar.advance()
    t_ann = time.perf_counter() - t_ann

    hist = store.class_histogram() + counts
    share = hist / max(hist.sum(), 1)
    prev_used = int(store.manifest().get("budget_used", 0))
    stats = {
        "round": int(round_idx),
        "selection": cfg.selection,
        "mode": cfg.mode,
        "class_balance": bool(cfg.selection == "cbda" and cfg.cbda.class_balance),
        "dynamic": bool(cfg.selection == "cbda" and cfg.cbda.dynamic),
        "images": len(names),
        "images_labelled": len(picks),
        "picks": int(info["picks"]),
        "budget": int(info["budget"]),
        "shortfall": int(info["shortfall"]),
        "passes": int(info.get("passes", 1)),
        "reextracted": int(info.get("reextracted", 0)),
        "acquired_pixels": int(acquired),
        "labelled_pixels": int(counts.sum()),
        "pixels_per_class": counts.tolist(),
        "kl_uniform": kl_to_uniform(hist) if hist.sum() else float("nan"),
        "min_class_share": float(share.min()),
        "budget_used": (prev_used + acquired) / max(int(info.get("total_pixels", 0)), 1),
        "class_weights": info.get("class_weights"),
        "weights_from": info.get("weights_from"),
        "inference_s": float(info.get("inference_s", 0.0)),
        "selection_s": float(info.get("selection_s", 0.0)),
        "annotate_s": round(t_ann, 4),
        "time_s": round(time.perf_counter() - t0, 4),
        "resumed": False,
    }
    store.commit_round(round_idx, stats)
    return stats


# -------------------------------------------------------------------------------------- plot
def _as_rgb(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        image = t.numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def plot_round(store: LabelStore, dataset, path, n: int = 4, round_idx: Optional[int] = None) -> Path:
    """Save a figure: acquired pixels over ``n`` target images (the images with most picks in the
    round; this round's pixels opaque, earlier rounds faded, void in white) and the labelled-set class
    histogram of every round (log scale). Uses the Agg canvas (no display, no global backend change)."""
    import cv2
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = store.rounds_done()
    r = done[-1] if round_idx is None and done else round_idx
    sel = store.load_selection(r) if r is not None else None
    order = []
    if sel is not None:
        order = sorted(sel["picks"], key=lambda i: (-len(sel["picks"][i][0]), i))[:n]
    names = store.names or list(dataset.names)
    K = store.num_classes
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: min(K, len(PALETTE))] = PALETTE[:K]
    pal[255] = 255

    cols = max(len(order), 1)
    fig = Figure(figsize=(4 * cols, 6.5))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, cols, height_ratios=[1.2, 1.0])
    for j, i in enumerate(order):
        ax = fig.add_subplot(gs[0, j])
        image, _ = dataset.load(i)
        img = _as_rgb(image)
        labels, acq = store.read(names[i])
        if labels is None:
            labels = np.full(img.shape[:2], 255, np.uint8)
            acq = np.zeros(img.shape[:2], np.uint8)
        if img.shape[:2] != labels.shape:
            img = cv2.resize(img, (labels.shape[1], labels.shape[0]), interpolation=cv2.INTER_LINEAR)
        # Thicken tiny regions so they are visible at figure size.
        ksize = max(1, labels.shape[1] // 256) * 2 + 1
        kernel = np.ones((ksize, ksize), np.uint8)
        cur = cv2.dilate((acq == r + 1).astype(np.uint8), kernel) > 0
        old = (cv2.dilate((acq > 0).astype(np.uint8), kernel) > 0) & ~cur
        code = np.where(acq > 0, labels.astype(np.uint16) + 1, 0).astype(np.uint16)  # 0 = not acquired
        colour = pal[(cv2.dilate(code, kernel).astype(np.int64) - 1).clip(0, 255)]
        out = img.astype(np.float32)
        out[old] = 0.5 * out[old] + 0.5 * colour[old]
        out[cur] = 0.1 * out[cur] + 0.9 * colour[cur]
        ax.imshow(out.astype(np.uint8))
        ax.set_title(f"{names[i]}\n{len(sel['picks'][i][0])} picks in round {r}", fontsize=8)
        ax.axis("off")
    if not order:
        ax = fig.add_subplot(gs[0, 0])
        ax.text(0.5, 0.5, "no acquisition round yet", ha="center", va="center")
        ax.axis("off")

    ax = fig.add_subplot(gs[1, :])
    hists = store.round_histograms()
    cls_names = list(CLASS_NAMES) if K == len(CLASS_NAMES) else [str(c) for c in range(K)]
    x = np.arange(K)
    width = 0.8 / max(len(hists), 1)
    for j, (rr, h) in enumerate(sorted(hists.items())):
        ax.bar(x + j * width - 0.4 + width / 2, np.maximum(h, 0.5), width, label=f"round {rr}")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(cls_names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("labelled pixels")
    total = store.class_histogram()
    if total.sum():
        ax.set_title(
            f"labelled set: {int(total.sum())} px, KL to uniform {kl_to_uniform(total):.3f}, "
            f"min class share {total.min() / total.sum():.2e}",
            fontsize=9,
        )
    if hists:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
