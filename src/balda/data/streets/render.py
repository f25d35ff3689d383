"""One street scene: camera, background, objects, textures and the sensor's photometric pipeline."""

from __future__ import annotations

import cv2
import numpy as np

from balda.data.labels import IGNORE_INDEX, NUM_CLASSES

from .background import _background, _make_layout
from .geometry import _Cam, _Canvas, _fields, _grids
from .instances import instance_map
from .objects import _place_objects
from .style import _TEXTURE_FIELDS, DEFAULT_SHIFT, domain_priors, domain_style, vary_style

#: Domain codes used to derive per-image seeds.
_DOMAIN_CODES = {"source": 0, "target_train": 1, "target_val": 2}


def _hood(cv: _Canvas, cam: _Cam, rng, yy: np.ndarray, xx: np.ndarray) -> None:
    """The ego vehicle's bonnet at the bottom (unlabelled, like Cityscapes 'ego vehicle')."""
    H, W = cam.H, cam.W
    h0 = H * rng.uniform(0.06, 0.09)
    edge = H - h0 * (1 - 0.55 * ((xx[0] - W / 2) / (W * 0.6)) ** 2)
    m = yy >= edge[None, :]
    col = np.array([38, 40, 44], np.float32) * rng.uniform(0.8, 1.3)
    refl = np.clip(1 - (yy - edge[None, :]) / max(h0, 1), 0, 1)
    shade = col + 60 * refl[..., None] ** 3
    cv.img[m] = shade[m]
    cv.lab[m] = IGNORE_INDEX


_VIGNETTE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _photometric(img: np.ndarray, rng, sen: dict, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Global illumination and colour cast, saturation, contrast (one 3x4 colour transform),
    vignetting, lens blur, sensor noise, then gamma (a uint8 lookup table)."""
    H, W = img.shape[:2]
    gain = rng.uniform(*sen["brightness"]) * np.asarray(sen["cast"], np.float64) * rng.uniform(0.97, 1.03, 3)
    sat, con = float(sen["saturation"]), float(sen["contrast"])
    m_sat = sat * np.eye(3) + (1 - sat) / 3.0
    mean = float((img.reshape(-1, 3).mean(0) * gain).mean())  # saturation keeps the grey mean
    M = np.zeros((3, 4))
    M[:, :3] = con * m_sat * gain[None, :]
    M[:, 3] = (1 - con) * mean
    img = cv2.transform(img, M.astype(np.float32))
    vig = float(sen["vignette"])
    if vig > 1e-3:
        if (H, W) not in _VIGNETTE_CACHE:
            _VIGNETTE_CACHE[(H, W)] = (((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2).astype(np.float32)
        img *= (1 - 0.5 * vig * _VIGNETTE_CACHE[(H, W)])[..., None]
    sigma = float(sen["blur"]) * W / 256
    if sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = float(sen["noise"])
    if noise > 1e-3:
        img += noise * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    gamma = float(sen["gamma"])
    if abs(gamma - 1.0) > 1e-3:
        lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
        out = lut[out]
    return out


def render_scene(
    rng: np.random.Generator,
    domain: str,
    size: tuple[int, int] = (128, 256),
    shift: float = DEFAULT_SHIFT,
    profile: str = "cityscapes",
    with_instances: bool = False,
) -> tuple[np.ndarray, ...]:
    """Render one street scene of ``domain`` ('source' or 'target').

    Returns ``(image uint8 HxWx3 RGB, label uint8 HxW of trainIds, 255 = unlabelled)``. All randomness
    comes from ``rng``, so a fixed generator state gives identical arrays.

    ``with_instances=True`` returns ``(image, label, instances)`` with ``instances`` int32 (H, W):
    each object of the scene (a car, a person, a bicycle with its rider, ...) is one object, and each
    of its thing classes that is still visible in the final label is one instance, numbered
    ``1..N`` in drawing order (:func:`~balda.data.streets.instances.instance_map`); 0 elsewhere
    (stuff, unlabelled, the ego-vehicle bonnet). Image and label are the same arrays, bit for bit,
    as with ``with_instances=False`` (no extra random draws, the same painting order).
    """
    H, W = int(size[0]), int(size[1])
    st = domain_style(domain, shift, profile)
    pr = domain_priors(domain, shift, profile)
    yy, xx = _grids(H, W)
    camst = st["camera"]
    cam = _Cam(
        H,
        W,
        f=float(camst["f"]) * W * rng.uniform(0.95, 1.05),
        h=float(camst["cam_h"]) * rng.uniform(0.95, 1.05),
        vx=W * (0.5 + rng.uniform(-1, 1) * float(camst["vx"])),
        yh=H * rng.uniform(*camst["horizon"]),
    )
    st = vary_style(st, rng)
    fields = _fields(rng, H, W, yy, xx)
    cv = _Canvas(H, W, with_objects=with_instances)
    lay = _make_layout(rng, pr)
    _background(cv, cam, rng, st, pr, lay, fields, yy, xx)
    objs = _place_objects(cam, rng, st, pr, lay)
    for number, (_z, _, draw) in enumerate(sorted(objs, key=lambda o: (-o[0], o[1])), start=1):
        cv.current = number
        draw(cv)
    cv.current = 0
    if rng.random() < float(st["hood"]):
        _hood(cv, cam, rng, yy, xx)
    # per-class textures (the same label-driven fields, with domain-specific amplitudes)
    tex = st["texture_table"][np.minimum(cv.lab, NUM_CLASSES)]  # H x W x 5
    delta = sum(tex[..., i] * fields[name] for i, name in enumerate(_TEXTURE_FIELDS))
    img = cv.img + delta[..., None]
    img = _photometric(img, rng, st["sensor"], yy, xx)
    if with_instances:
        return img, cv.lab, instance_map(cv.obj, cv.lab)
    return img, cv.lab


def image_rng(seed: int, domain_key: str, index: int) -> np.random.Generator:
    """The generator of one image, derived from ``(seed, domain, index)`` only (worker-independent).
    ``domain_key`` is 'source', 'target_train' or 'target_val'."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _DOMAIN_CODES[domain_key], int(index)]))
