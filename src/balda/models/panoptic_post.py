"""Panoptic-DeepLab inference post-processing (Cheng et al., "Panoptic-DeepLab", CVPR 2020, Sec. 3.3),
as used by EDAPS (Saha et al., ICCV 2023); docs/panoptic.md.

From a semantic prediction ``S`` (C, H, W logits or (H, W) labels), a centre heatmap ``Z`` (H, W)
and offsets ``O`` (2, H, W) (dy, dx, pointing from a pixel to its instance centre):

1. centres: peaks of ``Z`` that equal their ``k x k`` max-pool (``k = 7``) and exceed ``0.1``; the
   ``top_k = 200`` highest are kept, in decreasing score order;
2. grouping: each thing pixel ``p`` (``argmax S`` in the things) joins the centre nearest to its
   predicted centre: ``k(p) = argmin_j ||c_j - (p + O(p))||_2`` (instance ids ``1..K``);
3. instance class: majority vote of ``argmax S`` over the instance's pixels (ties -> lower trainId);
4. stuff: each stuff class ``c`` gives one segment ``{p : S(p) = c}`` if its area is
   ``>= stuff_area`` (2048 px at Cityscapes' 1024 x 2048, scaled with :func:`scale_area`); thing
   instances smaller than ``thing_area`` are dropped too (0 = off, the paper's setting).

The output uses the panoptic id encoding of :mod:`balda.data.panoptic`: ``trainId * 1000 + k``
(``k >= 1`` thing instance, ``k = 0`` stuff), :data:`~balda.data.panoptic.VOID_ID` (-1) for pixels
left unassigned (small stuff, small or centre-less things). Everything is tensor ops on the input's
device; the only Python loops run over images of a batch and over the segments of the listing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from balda.data.panoptic import LABEL_DIVISOR, THING_TRAINIDS, VOID_ID

__all__ = [
    "CITYSCAPES_STUFF_AREA",
    "CITYSCAPES_FULL_SIZE",
    "scale_area",
    "find_instance_centers",
    "group_pixels",
    "panoptic_post_process",
    "PanopticPostProcess",
    "panoptic_postprocess_from_config",
]

#: Minimum stuff-segment area at Cityscapes full resolution (Panoptic-DeepLab's Cityscapes setting).
CITYSCAPES_STUFF_AREA = 2048
#: Cityscapes full resolution (H, W).
CITYSCAPES_FULL_SIZE = (1024, 2048)


def scale_area(area: int, size: tuple[int, int], reference: tuple[int, int] = CITYSCAPES_FULL_SIZE) -> int:
    """An area threshold set at ``reference`` resolution, scaled to ``size`` (H, W):
    ``round(area * H * W / (H_ref * W_ref))`` (e.g. 2048 px at 1024 x 2048 -> 512 px at 512 x 1024)."""
    return int(round(area * size[0] * size[1] / (reference[0] * reference[1])))


def find_instance_centers(
    center: torch.Tensor, threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre NMS: pixels ``p`` with ``Z(p) = maxpool_k(Z)(p)`` and ``Z(p) > threshold``.

    ``center`` is (H, W) or (1, H, W). Returns ``(yx, scores)``: (K, 2) long coordinates and (K,)
    scores, sorted by decreasing score (stable), at most ``top_k`` of them. Pixels of a flat
    plateau of the maximum are all kept (as in the reference implementation).
    """
    z = center.reshape(center.shape[-2:]).float()
    pooled = F.max_pool2d(z[None, None], kernel_size=nms_kernel, stride=1, padding=nms_kernel // 2)[0, 0]
    keep = (z == pooled) & (z > threshold)
    yx = torch.nonzero(keep)
    scores = z[keep]
    order = torch.sort(scores, descending=True, stable=True).indices[:top_k]
    return yx[order], scores[order]


def group_pixels(
    thing_mask: torch.Tensor, offset: torch.Tensor, centers: torch.Tensor, chunk: int = 1 << 22
) -> torch.Tensor:
    """Instance map (H, W) long: ``k(p) = 1 + argmin_j ||c_j - (p + O(p))||^2`` on ``thing_mask``, 0 elsewhere.

    ``offset`` is (2, H, W) (dy, dx); ``centers`` (K, 2) (y, x). Distances are computed for the
    thing pixels only, in chunks of about ``chunk`` (pixel, centre) pairs to bound memory.
    """
    h, w = thing_mask.shape
    out = torch.zeros(h, w, dtype=torch.long, device=thing_mask.device)
    k = len(centers)
    if k == 0 or not bool(thing_mask.any()):
        return out
    yx = torch.nonzero(thing_mask)
    pred = yx.to(offset.dtype) + offset[:, yx[:, 0], yx[:, 1]].T  # (N, 2) predicted centres
    c = centers.to(offset.dtype)
    ids = torch.empty(len(yx), dtype=torch.long, device=thing_mask.device)
    step = max(1, chunk // k)
    for s in range(0, len(yx), step):
        d = ((pred[s : s + step, None, :] - c[None]) ** 2).sum(-1)
        ids[s : s + step] = d.argmin(1) + 1
    out[thing_mask] = ids
    return out


def _single(
    sem: torch.Tensor,
    center: torch.Tensor,
    offset: torch.Tensor,
    things,
    num_classes: int,
    threshold: float,
    nms_kernel: int,
    top_k: int,
    stuff_area: int,
    thing_area: int,
) -> tuple[torch.Tensor, list[dict]]:
    dev = sem.device
    c = max(num_classes, int(sem.max()) + 1 if sem.numel() else 1)
    lut = torch.zeros(c, dtype=torch.bool, device=dev)
    lut[[t for t in things if t < c]] = True
    is_thing = lut[sem]
    yx, scores = find_instance_centers(center, threshold, nms_kernel, top_k)
    ins = group_pixels(is_thing, offset.float(), yx)
    k = len(yx)
    pan = torch.full(sem.shape, VOID_ID, dtype=torch.long, device=dev)
    segments: list[dict] = []
    # things: majority vote and area of every instance, from one bincount each
    fg = ins > 0
    votes = torch.bincount(ins[fg] * c + sem[fg], minlength=(k + 1) * c).reshape(k + 1, c)
    area = votes.sum(1)
    cls = votes.argmax(1)
    keep = (area > 0) & (area >= thing_area)
    keep[0] = False
    pan_ins = torch.where(keep, cls * LABEL_DIVISOR + torch.arange(k + 1, device=dev), VOID_ID)
    pan[fg] = pan_ins[ins[fg]]
    # stuff: one segment per stuff class with enough pixels
    stuff = ~is_thing
    s_area = torch.bincount(sem[stuff], minlength=c)
    s_keep = (s_area >= max(stuff_area, 1)) & ~lut & (torch.arange(c, device=dev) < num_classes)
    pan[stuff] = torch.where(s_keep[sem[stuff]], sem[stuff] * LABEL_DIVISOR, VOID_ID)
    for j in torch.nonzero(keep).reshape(-1).tolist():
        segments.append(
            {
                "id": int(pan_ins[j]),
                "category_id": int(cls[j]),
                "isthing": True,
                "area": int(area[j]),
                "center": [int(v) for v in yx[j - 1].tolist()],
                "score": float(scores[j - 1]),
            }
        )
    for s in torch.nonzero(s_keep).reshape(-1).tolist():
        segments.append({"id": s * LABEL_DIVISOR, "category_id": s, "isthing": False, "area": int(s_area[s])})
    return pan, segments


def panoptic_post_process(
    semantic: torch.Tensor,
    center: torch.Tensor,
    offset: torch.Tensor,
    things=THING_TRAINIDS,
    num_classes: int = 19,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int = 200,
    stuff_area: int = CITYSCAPES_STUFF_AREA,
    thing_area: int = 0,
):
    """Panoptic segmentation from semantic, centre and offset predictions (module docstring).

    Shapes, single image: ``semantic`` (C, H, W) floating logits/probabilities or (H, W) integer
    labels, ``center`` (H, W) or (1, H, W), ``offset`` (2, H, W). Batched: (B, C, H, W) or (B, H, W),
    (B, 1, H, W), (B, 2, H, W). ``stuff_area`` / ``thing_area`` are in pixels at the given
    resolution (use :func:`scale_area` for a resized input).

    Returns ``(pan, segments)``: ``pan`` (H, W) or (B, H, W) int64 panoptic ids and, per image, a
    list of segment dicts ``{"id", "category_id" (trainId), "isthing", "area"}`` (things also carry
    ``"center"`` (y, x) and ``"score"``, the centre heatmap value); batched: a list of such lists.
    """
    if not 0 < top_k < LABEL_DIVISOR:
        raise ValueError(f"top_k must be in 1..{LABEL_DIVISOR - 1} (the panoptic id encoding), got {top_k}")
    batched = offset.ndim == 4
    if not batched:
        semantic, center, offset = semantic[None], center.reshape((1, 1) + tuple(center.shape[-2:])), offset[None]
    if offset.ndim != 4 or offset.shape[1] != 2:
        raise ValueError(f"offset must be (2, H, W) or (B, 2, H, W), got {tuple(offset.shape)}")
    sem = semantic.argmax(1) if semantic.is_floating_point() else semantic
    sem = sem.long()
    b, _, h, w = offset.shape
    if sem.shape != (b, h, w) or center.reshape(b, -1).shape[1] != h * w:
        raise ValueError(
            f"semantic {tuple(semantic.shape)}, center {tuple(center.shape)} and offset {tuple(offset.shape)} "
            "do not describe the same images"
        )
    center = center.reshape(b, h, w)
    out, segs = [], []
    for i in range(b):
        p, s = _single(
            sem[i], center[i], offset[i], things, num_classes, threshold, nms_kernel, top_k, stuff_area, thing_area
        )
        out.append(p)
        segs.append(s)
    if not batched:
        return out[0], segs[0]
    return torch.stack(out), segs


@dataclass
class PanopticPostProcess:
    """:func:`panoptic_post_process` with its settings bound; ``for_size`` scales the area thresholds.

    ``stuff_area`` and ``thing_area`` are given at ``reference_size`` (Cityscapes full resolution).
    """

    things: tuple[int, ...] = THING_TRAINIDS
    num_classes: int = 19
    threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    stuff_area: int = CITYSCAPES_STUFF_AREA
    thing_area: int = 0
    reference_size: tuple[int, int] = CITYSCAPES_FULL_SIZE

    def areas_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(stuff_area, thing_area)`` scaled to an (H, W) input (:func:`scale_area`)."""
        return scale_area(self.stuff_area, size, self.reference_size), scale_area(
            self.thing_area, size, self.reference_size
        )

    def __call__(self, semantic: torch.Tensor, center: torch.Tensor, offset: torch.Tensor):
        stuff_area, thing_area = self.areas_for(tuple(offset.shape[-2:]))
        return panoptic_post_process(
            semantic,
            center,
            offset,
            things=self.things,
            num_classes=self.num_classes,
            threshold=self.threshold,
            nms_kernel=self.nms_kernel,
            top_k=self.top_k,
            stuff_area=stuff_area,
            thing_area=thing_area,
        )


def panoptic_postprocess_from_config(cfg):
    """``post(semantic, center, offset) -> (pan, segments)`` with the run config's settings: the thing
    classes of ``cfg.eval.view`` (:func:`balda.data.panoptic.thing_ids`), ``model.num_classes`` and
    ``cfg.panoptic`` (``center_threshold``, ``nms_kernel``, ``top_k``; ``stuff_area`` in pixels at the
    evaluated size, or null for Cityscapes' 2048 px scaled to it by :func:`scale_area`; ``thing_area``
    in pixels at the evaluated size)."""
    from balda.data.panoptic import thing_ids

    pc = cfg.panoptic
    things = tuple(thing_ids(cfg.eval.view))
    num_classes = int(cfg.model.num_classes)

    def post(semantic: torch.Tensor, center: torch.Tensor, offset: torch.Tensor):
        size = tuple(offset.shape[-2:])
        stuff = scale_area(CITYSCAPES_STUFF_AREA, size) if pc.stuff_area is None else int(pc.stuff_area)
        return panoptic_post_process(
            semantic,
            center,
            offset,
            things=things,
            num_classes=num_classes,
            threshold=pc.center_threshold,
            nms_kernel=pc.nms_kernel,
            top_k=pc.top_k,
            stuff_area=stuff,
            thing_area=int(pc.thing_area),
        )

    return post
