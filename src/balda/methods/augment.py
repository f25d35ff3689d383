"""Batch augmentations of the self-training strategies: ClassMix, colour jitter, Gaussian blur, affine
warps (CPSL's strong view) and CutMix boxes.

All functions are vectorised tensor operations on whole batches, run on the batch's device and
draw their randomness from an explicit :class:`torch.Generator` (see :func:`step_generator`), so a
training step is a deterministic function of ``(seed, step, batch)`` and a resumed run repeats it.
No function synchronises with the host.

Per-image random numbers come from :func:`batch_rand`: under data parallelism (inside
:func:`balda.core.dist.sharded_step`, where this process holds items ``rank::W`` of the global
batch) the numbers are drawn for the whole global batch and each rank keeps its rows, so image
``j`` of the global batch is augmented identically whatever the number of processes (and two ranks
never share their draws).

Images are the *normalised* network inputs ``x = (rgb - mean) / std`` with ``rgb`` in 0..255 and
``mean``/``std`` per channel in 0..255 units (the data pipeline's normalisation). Photometric
operations denormalise, work on ``rgb / 255`` in [0, 1], and renormalise.

References
----------
* DACS: Tranheden, Olsson, Pinto, Svensson, "DACS: Domain Adaptation via Cross-domain Mixed
  Sampling", WACV 2021 (ClassMix across domains, colour jitter + Gaussian blur on the mixed image).
* ClassMix: Olsson et al., WACV 2021.
* DAFormer: Hoyer, Dai, Van Gool, CVPR 2022 (same augmentations, strength 0.2).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from balda.core import dist
from balda.data.labels import IGNORE_INDEX

__all__ = [
    "step_generator",
    "batch_rand",
    "classmix_masks",
    "mix",
    "color_jitter",
    "gaussian_blur",
    "denormalize",
    "renormalize",
    "random_affine",
    "crop_theta",
    "affine_grid",
    "warp_images",
    "warp_labels",
    "warp_maps",
    "random_boxes",
    "box_masks",
]

_MASK64 = (1 << 63) - 1


def step_generator(seed: int, step: int, device: torch.device | str = "cpu", salt: int = 0) -> torch.Generator:
    """A generator on ``device`` seeded by a hash of ``(seed, step, salt)`` (pure Python, no sync).

    Different steps (and salts, for independent streams inside one step) get decorrelated seeds;
    the same triple always gives the same stream on a given device type.
    """
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + int(salt) * 0x94D049BB133111EB) & _MASK64
    # splitmix64 finaliser
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(x & _MASK64)
    return g


def batch_rand(rows: int, cols: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``U[0, 1)`` numbers ``(rows, cols)``, row ``b`` for image ``b`` of this process's batch.

    Inside a sharded data-parallel step the ``(rows * W, cols)`` draw of the global batch is made and
    rows ``rank::W`` are returned (see the module docstring); otherwise one ``(rows, cols)`` draw."""
    return dist.shard_rows(torch.rand(dist.global_rows(rows), cols, generator=generator, device=device))


def _stats(t, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """``rgb/255`` in [0, 1] from normalised images ``(rgb - mean) / std``."""
    return (images * _stats(std, images) + _stats(mean, images)) / 255.0


def renormalize(rgb01: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`denormalize`."""
    return (rgb01 * 255.0 - _stats(mean, rgb01)) / _stats(std, rgb01)


# ------------------------------------------------------------------------------------------ ClassMix
def classmix_masks(
    source_labels: torch.Tensor, generator: torch.Generator | None = None, ignore: int = IGNORE_INDEX
) -> torch.Tensor:
    """ClassMix masks, one per source image (Olsson et al. 2021; cross-domain in DACS).

    For image ``b`` let ``C_b`` be the set of classes present in ``source_labels[b]`` (``ignore``
    excluded). ``n_b = (|C_b| + |C_b| mod 2) / 2`` of them (half, rounded up, as DACS) are drawn
    uniformly without replacement, and the mask is ``M_b = [y_b in chosen_b]``: the union of the
    pixels of exactly the chosen classes. An image with no labelled pixel gets an empty mask.

    Vectorised: presence ``(B, 256)`` by scatter, random keys for present classes, a class is
    chosen when its rank among the image's present classes is ``< n_b``.

    Returns a ``(B, H, W)`` bool tensor (True = take the source pixel).
    """
    if source_labels.dim() != 3:
        raise ValueError(f"classmix_masks: expected (B,H,W) labels, got shape {tuple(source_labels.shape)}")
    B = source_labels.shape[0]
    device = source_labels.device
    n_slots = max(256, int(ignore) + 1)
    flat = source_labels.reshape(B, -1).long().clamp(0, n_slots - 1)
    present = torch.zeros(B, n_slots, dtype=torch.bool, device=device)
    present.scatter_(1, flat, True)
    if 0 <= ignore < n_slots:
        present[:, ignore] = False
    n_present = present.sum(dim=1)
    n_choose = (n_present + n_present % 2) // 2
    keys = batch_rand(B, n_slots, generator, device)
    keys = torch.where(present, keys, torch.full_like(keys, 2.0))  # absent classes sort last
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_slots, device=device).expand(B, n_slots))
    chosen = present & (rank < n_choose[:, None])
    return chosen.gather(1, flat).reshape(source_labels.shape)


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``M * a + (1 - M) * b`` with a (B,H,W) bool mask, broadcast over a channel dimension of
    (B,C,H,W) inputs: ``a`` (source) inside the mask, ``b`` (target) outside."""
    m = mask
    if a.dim() == 4 and m.dim() == 3:
        m = m[:, None]
    return torch.where(m, a, b)


# --------------------------------------------------------------------------------------- photometric
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)  # computed once on the host: no per-step inverse / sync


def _gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def color_jitter(
    images: torch.Tensor, strength: float, p: float, generator: torch.Generator | None, mean, std
) -> torch.Tensor:
    """Random colour jitter of each image with probability ``p`` (independently per image).

    With ``s = strength``, factors are drawn per image: brightness ``b ~ U[1-s, 1+s]``, contrast
    ``c ~ U[1-s, 1+s]``, saturation ``a ~ U[1-s, 1+s]``, hue shift ``h ~ U[-s, s]`` (fraction of
    a full turn), applied in this fixed order on ``x = rgb/255`` with clamping to [0, 1] after each:

    * brightness ``x <- b x``;
    * contrast ``x <- c (x - m) + m``, ``m`` = the image's mean grey level;
    * saturation ``x <- a (x - g) + g``, ``g`` = per-pixel grey (ITU-R 601 luma);
    * hue: rotation by ``2 pi h`` of the chroma plane (I, Q) in YIQ space (luma kept).

    This is the torchvision/kornia ``ColorJitter(s, s, s, s)`` family used by DACS/DAFormer
    (with a fixed order and a YIQ hue rotation instead of an HSV round trip). Images not selected
    are returned bit-identical.
    """
    if strength <= 0 or p <= 0:
        return images
    B = images.shape[0]
    dev, dt = images.device, images.dtype
    s = float(strength)
    u = batch_rand(B, 5, generator, dev).to(dt)
    apply = u[:, 0] < p
    bri, con, sat = (1 - s + 2 * s * u[:, 1:4]).unbind(1)
    hue = (2 * u[:, 4] - 1) * s

    x = denormalize(images, mean, std).clamp(0, 1)
    x = (x * bri.view(B, 1, 1, 1)).clamp(0, 1)
    m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - m) * con.view(B, 1, 1, 1) + m).clamp(0, 1)
    g = _gray(x)
    x = ((x - g) * sat.view(B, 1, 1, 1) + g).clamp(0, 1)
    # hue: YIQ rotation, all images at once (einsum over the channel axis)
    yiq = torch.einsum("ij,bjhw->bihw", _RGB2YIQ.to(device=dev, dtype=dt), x)
    theta = 2 * math.pi * hue
    cos, sin = torch.cos(theta).view(B, 1, 1), torch.sin(theta).view(B, 1, 1)
    i_, q_ = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i_ - sin * q_, sin * i_ + cos * q_], dim=1)
    x = torch.einsum("ij,bjhw->bihw", _YIQ2RGB.to(device=dev, dtype=dt), yiq).clamp(0, 1)
    return torch.where(apply.view(B, 1, 1, 1), renormalize(x, mean, std), images)


def _odd_kernel_size(n: int) -> int:
    """DACS kernel size: ``ceil(0.1 * n)`` made odd by rounding down (52 -> 51, 51 -> 51), >= 1."""
    k = math.ceil(0.1 * n)
    if k % 2 == 0:
        k -= 1
    return max(k, 1)


def _gauss_kernels(sigma: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) normalised 1-D Gaussian kernels, one per sigma."""
    r = torch.arange(k, device=sigma.device, dtype=sigma.dtype) - (k - 1) / 2
    w = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    return w / w.sum(dim=1, keepdim=True)


def gaussian_blur(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    p: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, 1.15),
    reference: int | None = 512,
) -> torch.Tensor:
    """Gaussian blur of each image with probability ``p`` (DACS: ``p = 0.5``).

    Per image ``sigma ~ U[0.15, 1.15] * s``; the separable kernel has ``ceil(0.1 H)`` x ``ceil(0.1 W)``
    taps made odd (as DACS), reflect padding. ``s = sqrt(H W) / reference`` sizes the blur to the
    crop: DACS/DAFormer draw sigma in [0.15, 1.15] pixels for 512 x 512 crops, and the same
    absolute sigma on a 64 x 128 crop would blur ~5x more of the scene (a network-independent cost,
    measured on the embedded benchmark); ``reference=None`` keeps the absolute range (``s = 1``).
    Blurring is linear with unit-sum kernels, so it is applied directly to the normalised images
    (identical to blurring the 0..255 image and renormalising). Images not selected are returned
    unchanged.
    """
    B, C, H, W = images.shape
    kh, kw = _odd_kernel_size(H), _odd_kernel_size(W)
    if p <= 0 or (kh == 1 and kw == 1):
        return images
    dev, dt = images.device, images.dtype
    u = batch_rand(B, 2, generator, dev)
    apply = u[:, 0] < p
    scale = 1.0 if reference is None else math.sqrt(H * W) / float(reference)
    lo, hi = sigma_range[0] * scale, sigma_range[1] * scale
    sigma = (lo + (hi - lo) * u[:, 1]).to(torch.float32)
    x = images.reshape(1, B * C, H, W)
    if kh > 1:
        wy = _gauss_kernels(sigma, kh).to(dt).repeat_interleave(C, dim=0).view(B * C, 1, kh, 1)
        x = F.conv2d(F.pad(x, (0, 0, kh // 2, kh // 2), mode="reflect"), wy, groups=B * C)
    if kw > 1:
        wx = _gauss_kernels(sigma, kw).to(dt).repeat_interleave(C, dim=0).view(B * C, 1, 1, kw)
        x = F.conv2d(F.pad(x, (kw // 2, kw // 2, 0, 0), mode="reflect"), wx, groups=B * C)
    return torch.where(apply.view(B, 1, 1, 1), x.reshape(B, C, H, W), images)


# ----------------------------------------------------------------------------------- geometry
def random_affine(
    batch: int,
    generator: Optional[torch.Generator],
    device,
    aspect: float = 1.0,
    scale: tuple[float, float] = (0.75, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate: float = 10.0,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Random affine warps ``theta`` (B, 2, 3) mapping output to input normalised coordinates
    (``F.affine_grid`` convention, align_corners=False).

    Per image: side fraction ``s ~ U(scale)``, aspect ``a = exp(U(log ratio))``, crop size
    ``(s_x, s_y) = (min(s sqrt a, 1), min(s / sqrt a, 1))``, centre ``t ~ U(+-(1 - s))`` (crop inside
    the image), rotation ``phi ~ U(+-max_rotate)`` degrees (a rotation in *pixel* space for an image
    of width/height ``aspect``), horizontal flip ``f = -1`` with probability ``flip_p``:
    ``x_in = t + D^-1 R(phi) D diag(f s_x, s_y) x_out`` with ``D = diag(aspect, 1)``.
    """
    u = batch_rand(batch, 6, generator, device)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    a = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    sx = (s * a.sqrt()).clamp(max=1.0)
    sy = (s / a.sqrt()).clamp(max=1.0)
    tx = (2 * u[:, 2] - 1) * (1 - sx)
    ty = (2 * u[:, 3] - 1) * (1 - sy)
    phi = (2 * u[:, 4] - 1) * (max_rotate * math.pi / 180.0)
    f = torch.where(u[:, 5] < flip_p, -torch.ones_like(sx), torch.ones_like(sx))
    c, sn = torch.cos(phi), torch.sin(phi)
    theta = torch.stack(
        [
            torch.stack([c * f * sx, -sn / aspect * sy, tx], dim=1),
            torch.stack([sn * aspect * f * sx, c * sy, ty], dim=1),
        ],
        dim=1,
    )
    return theta


def crop_theta(boxes: Optional[torch.Tensor], flip: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
    """``theta`` (B,2,3) sampling a crop ``(y0, x0, y1, x1)`` (fractions of the full image) then an
    optional horizontal flip, from the full map; identity where ``boxes`` is None."""
    if boxes is None:
        boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).expand(batch, 4)
    b = boxes.to(device=device, dtype=torch.float32)
    y0, x0, y1, x1 = b.unbind(1)
    fx = torch.ones_like(x0) if flip is None else 1.0 - 2.0 * flip.to(device=device, dtype=torch.float32)
    zero = torch.zeros_like(x0)
    return torch.stack(
        [
            torch.stack([(x1 - x0) * fx, zero, x0 + x1 - 1], dim=1),
            torch.stack([zero, y1 - y0, y0 + y1 - 1], dim=1),
        ],
        dim=1,
    )


def affine_grid(theta: torch.Tensor, size, dtype) -> torch.Tensor:
    """Sampling grid (B, H, W, 2) of the affine maps ``theta`` (B, 2, 3) for an output of ``size``."""
    B = theta.shape[0]
    return F.affine_grid(theta.to(dtype), [B, 1, int(size[0]), int(size[1])], align_corners=False)


def warp_images(images: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``out(x) = images(theta x)`` by ``grid_sample`` (zero padding: the mean colour for normalised
    images)."""
    grid = affine_grid(theta, images.shape[-2:], images.dtype)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def warp_labels(
    labels: torch.Tensor, theta: torch.Tensor, ignore: int = IGNORE_INDEX, size: Optional[tuple[int, int]] = None
) -> torch.Tensor:
    """Warp (B,H,W) integer labels with the same geometry as :func:`warp_images` (nearest sampling;
    positions sampled outside the input get ``ignore``). ``size`` = output (h, w), default (H, W)."""
    size = tuple(labels.shape[-2:]) if size is None else size
    grid = affine_grid(theta, size, torch.float32)
    both = torch.stack([labels.float(), torch.ones_like(labels, dtype=torch.float32)], dim=1)
    out = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    lab = out[:, 0].round().long()
    return torch.where(out[:, 1] > 0.5, lab, torch.full_like(lab, ignore))


def warp_maps(
    maps: torch.Tensor, theta: torch.Tensor, size: Optional[tuple[int, int]] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp (B,C,h,w) continuous maps (bilinear, border padding) with the geometry of
    :func:`warp_images`; returns the warped maps and a (B, h', w') bool mask of the positions whose
    sampling point lies inside the input."""
    size = tuple(maps.shape[-2:]) if size is None else size
    grid = affine_grid(theta, size, maps.dtype)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    valid = (grid.abs() <= 1.0).all(dim=-1)
    return out, valid


def random_boxes(batch: int, generator: Optional[torch.Generator], device, p: float) -> torch.Tensor:
    """CutMix boxes (Yun et al. 2019) as fractions ``(y0, x0, y1, x1)`` (B,4): ``lam ~ U(0,1)``,
    side fraction ``sqrt(1 - lam)``, uniform centre, clipped to the image; an image is mixed with
    probability ``p`` (otherwise its box is empty)."""
    u = batch_rand(batch, 4, generator, device)
    side = torch.sqrt(1.0 - u[:, 0])
    cy, cx = u[:, 1], u[:, 2]
    use = (u[:, 3] < p).float()
    half = side / 2 * use
    return torch.stack(
        [(cy - half).clamp(0, 1), (cx - half).clamp(0, 1), (cy + half).clamp(0, 1), (cx + half).clamp(0, 1)], dim=1
    )


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) bool: pixel centres ``((y+0.5)/h, (x+0.5)/w)`` inside ``[y0, y1) x [x0, x1)``."""
    h, w = int(size[0]), int(size[1])
    yc = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) / h
    xc = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) / w
    y0, x0, y1, x1 = (v[:, None, None] for v in boxes.float().unbind(1))
    return (yc[None, :, None] >= y0) & (yc[None, :, None] < y1) & (xc[None, None, :] >= x0) & (xc[None, None, :] < x1)
