"""``streets``: a procedural two-domain street-scene benchmark that runs on a laptop.

Real GTA5 / SYNTHIA / Cityscapes data cannot be shipped, yet every domain-adaptation method of the
library must be demonstrable in minutes on a CPU. This module draws driving scenes with per-pixel
labels in the canonical 19 Cityscapes trainIds and writes them in the *real* on-disk formats, so the
normal GTA5 and Cityscapes loaders read them unchanged:

* **source** (GTA5 format): ``source/images/NNNNN.png`` (RGB) and ``source/labels/NNNNN.png``
  (palette PNG whose values are Cityscapes labelIds, unlabelled = 0);
* **target** (Cityscapes format): ``target/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png``
  and ``target/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png`` (8-bit labelIds).

What a scene contains and why
-----------------------------
A pin-hole camera looks down a straight street (horizon row, vanishing point, ground plane), so the
layout has the statistics of a driving scene: a road trapezoid with lane markings, kerbs and
sidewalks, optional grass verges (terrain), two facade planes of buildings with perspective-correct
windows, vegetation blocks and street trees, low walls and fences in front of some blocks, a distant
skyline and sky, poles with traffic signs and traffic lights, parked and moving cars, trucks, buses, a
tram on rails, pedestrians, riders on bicycles / motorcycles (rider = class 12 on a vehicle of class
17/18), parked bicycles, plus a few "static" objects (bins, bollards) and, in the target, the ego
vehicle's bonnet that are *unlabelled* (255 / labelId 0) as in the real data. Objects are 3-D boxes
or sprites on vertical planes, projected exactly and painted far-to-near, so nearby objects are big
and occlude, and far ones are tiny. The 'cityscapes' class priors give long-tailed frequencies close
to Cityscapes train (road ~37 %, building ~23 %, vegetation ~16 %, car ~7 %, rare classes 0.1-0.9 %);
truck, bus and train appear in a minority of images.

The domain gap
--------------
Each class has a characteristic colour/texture/shape *within* a domain (a small CNN learns it from
local appearance and context), but the mapping differs between domains:

* appearance: a sunny, saturated, sharp, noise-free source against an overcast, desaturated,
  colour-cast, blurred, noisy, vignetted target with a different camera (focal length, height);
  different per-class palettes and textures (e.g. tiled vs plain sidewalk, fine vs blotchy
  foliage, siding vs smooth facades); different object proportions (boxier cars, slimmer people);
* the *rare* classes shift most: traffic-light housings change from yellow to dark grey, sign
  colours change, truck and bus colours are swapped in hue (source trucks look like target
  buses), bicycles, motorcycles, riders and trams get new colours;
* label shift: the source has more cars and trucks, the target more pedestrians and bicycles.

``shift`` in [0, 1] linearly interpolates every source parameter (appearance *and* priors) from the
target's (0: identical distributions) to the full source style (1, default); values > 1 extrapolate.

Entry points: :func:`render_scene` (one image), :func:`generate_streets` (the folder, with
``meta.json`` and sample pages) and :func:`streets_exists` (is a folder complete for these params).
Every image gets its own seed derived from ``(seed, domain, index)``, so the output is byte-identical
whatever the number of worker processes.
"""
from __future__ import annotations

import functools
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

from .labels import (CITYSCAPES_LUT, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE,
                     TRAINID_TO_LABELID_LUT, colorize)

__all__ = ["generate_streets", "streets_exists", "render_scene", "image_rng", "domain_style",
           "domain_priors", "PROFILES", "TARGET_CITIES", "GENERATOR_VERSION", "load_streets_meta"]

GENERATOR = "balda.streets"
#: Bumped whenever the rendering changes, so stale folders are regenerated.
GENERATOR_VERSION = 1
#: Made-up city names of the target splits (Cityscapes keeps its val cities apart from train).
TARGET_CITIES = {"train": ("lindenau", "oakport"), "val": ("rivermark",)}
#: Domain codes used to derive per-image seeds.
_DOMAIN_CODES = {"source": 0, "target_train": 1, "target_val": 2}

# Class ids (trainIds) by name, for readability.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR, \
    TRUCK, BUS, TRAIN, MOTO, BIKE = range(NUM_CLASSES)

# ============================================================================================ styles
# Every colour is RGB in 0..255 before the global photometric pipeline. Source and target tables have
# identical structure so that ``shift`` can interpolate them leaf by leaf.

_TEXTURE_FIELDS = ("fine", "mid", "blob", "hstripe", "vstripe")

_TARGET_STYLE: dict[str, Any] = {
    "camera": {"f": 0.80, "cam_h": 1.35, "horizon": [0.37, 0.43], "vx": 0.08},
    "sky": {"top": [150, 165, 185], "horizon": [200, 206, 212]},
    "road": {"base": [92, 91, 96], "mark": [196, 196, 190], "centre": [196, 196, 190], "rail": [132, 126, 120]},
    "sidewalk": {"base": [150, 139, 143], "curb": [176, 174, 170], "tiles": 14.0},
    "terrain": {"base": [118, 128, 70]},
    "building": {"colours": [[166, 156, 136], [124, 120, 118], [150, 100, 86], [186, 180, 164]],
                 "window": [52, 60, 70], "shop": [72, 82, 88], "window_w": 0.45},
    "wall": {"base": [150, 146, 138]},
    "fence": {"base": [92, 100, 94]},
    "vegetation": {"colours": [[64, 92, 40], [52, 80, 34], [78, 98, 46], [58, 86, 44]], "trunk": [72, 60, 48]},
    "pole": {"base": [82, 86, 86]},
    "light": {"box": [40, 42, 38], "lamps": [[235, 45, 35], [240, 170, 25], [40, 220, 95]]},
    # four sign types: round (face, rim), triangle, diamond, rectangle
    "sign": {"face": [[38, 78, 165], [232, 232, 228], [230, 196, 44], [40, 84, 170]],
             "rim": [[236, 236, 236], [205, 38, 38], [40, 40, 40], [236, 236, 236]]},
    "person": {"top": [[52, 52, 62], [92, 42, 44], [42, 62, 92], [120, 112, 100]],
               "bottom": [[40, 40, 52], [62, 62, 72], [32, 38, 64], [82, 72, 62]],
               "skin": [188, 150, 126], "hair": [46, 36, 30], "height": [1.6, 1.85], "shoulder": 0.27},
    "rider": {"top": [[140, 32, 36], [32, 32, 38], [150, 112, 34], [40, 82, 52]],
              "helmet": [[222, 222, 222], [30, 30, 30], [200, 60, 40], [40, 60, 130]]},
    "car": {"colours": [[150, 150, 156], [46, 46, 52], [208, 208, 208], [40, 56, 92], [112, 32, 36],
                        [92, 96, 90]],
            "glass": [40, 48, 58], "body_top": 0.92, "cabin_top": 1.42, "taper": 0.22},
    "truck": {"cargo": [[220, 220, 214], [200, 204, 206], [150, 152, 150]],
              "cab": [[40, 70, 140], [210, 210, 210], [30, 90, 60]], "height": 3.4},
    "bus": {"colours": [[214, 182, 52], [222, 196, 70], [200, 160, 40]], "glass": [36, 40, 50]},
    "train": {"colours": [[196, 40, 46], [210, 54, 48]], "stripe": [232, 232, 226], "glass": [34, 40, 50]},
    "motorcycle": {"colours": [[30, 30, 34], [60, 60, 66], [40, 40, 80]], "chrome": [150, 150, 150]},
    "bicycle": {"colours": [[28, 28, 32], [40, 40, 46], [70, 70, 74]]},
    "static": {"colours": [[62, 92, 62], [110, 100, 90], [70, 70, 74]]},
    # amplitudes (grey levels) of the texture fields per class (19 classes + unlabelled)
    "texture": {
        "road": [5, 3, 6, 0, 0], "sidewalk": [4, 3, 4, 0, 0], "building": [4, 3, 8, 0, 0],
        "wall": [3, 2, 6, 7, 0], "fence": [4, 0, 0, 0, 0], "pole": [2, 0, 0, 0, 0],
        "traffic light": [2, 0, 0, 0, 0], "traffic sign": [2, 0, 0, 0, 0],
        "vegetation": [6, 20, 8, 0, 0], "terrain": [9, 8, 7, 0, 0], "sky": [0, 0, 12, 0, 0],
        "person": [3, 0, 0, 0, 0], "rider": [3, 0, 0, 0, 0], "car": [2, 0, 2, 0, 0],
        "truck": [2, 0, 2, 0, 6], "bus": [2, 0, 2, 0, 0], "train": [2, 0, 2, 0, 0],
        "motorcycle": [3, 0, 0, 0, 0], "bicycle": [3, 0, 0, 0, 0], "unlabelled": [3, 0, 4, 0, 0]},
    "sensor": {"brightness": [0.86, 1.04], "cast": [0.93, 1.0, 1.0], "saturation": 0.72, "contrast": 0.9,
               "gamma": 1.05, "blur": 0.75, "noise": 4.0, "vignette": 0.3},
    "shape": {"person_slim": 1.0, "car_box": 0.0, "tree_round": 1.0},
    "hood": 1.0,
}

_SOURCE_STYLE: dict[str, Any] = {
    "camera": {"f": 0.72, "cam_h": 1.6, "horizon": [0.34, 0.42], "vx": 0.12},
    "sky": {"top": [70, 128, 222], "horizon": [172, 202, 236]},
    "road": {"base": [70, 70, 78], "mark": [232, 232, 232], "centre": [232, 192, 40], "rail": [150, 150, 160]},
    "sidewalk": {"base": [192, 186, 170], "curb": [140, 136, 130], "tiles": 0.0},
    "terrain": {"base": [150, 146, 72]},
    "building": {"colours": [[204, 172, 122], [184, 110, 80], [86, 140, 162], [226, 216, 190]],
                 "window": [44, 74, 108], "shop": [60, 96, 120], "window_w": 0.6},
    "wall": {"base": [196, 184, 160]},
    "fence": {"base": [146, 112, 76]},
    "vegetation": {"colours": [[78, 132, 40], [62, 116, 36], [98, 140, 46], [70, 124, 52]], "trunk": [96, 72, 50]},
    "pole": {"base": [118, 118, 124]},
    "light": {"box": [206, 172, 40], "lamps": [[255, 30, 20], [255, 190, 10], [30, 255, 120]]},
    "sign": {"face": [[40, 132, 64], [236, 236, 236], [226, 226, 226], [200, 30, 30]],
             "rim": [[236, 236, 236], [30, 30, 30], [200, 30, 30], [236, 236, 236]]},
    "person": {"top": [[206, 60, 60], [60, 100, 206], [232, 232, 232], [70, 164, 92]],
               "bottom": [[50, 70, 140], [200, 190, 150], [30, 30, 34], [120, 90, 60]],
               "skin": [200, 150, 110], "hair": [60, 40, 24], "height": [1.72, 1.95], "shoulder": 0.23},
    "rider": {"top": [[236, 150, 30], [30, 150, 210], [236, 236, 70], [150, 40, 160]],
              "helmet": [[236, 236, 70], [236, 120, 30], [30, 30, 30], [236, 236, 236]]},
    "car": {"colours": [[206, 30, 30], [30, 62, 196], [234, 234, 234], [22, 22, 22], [232, 200, 40],
                        [142, 142, 148]],
            "glass": [30, 40, 64], "body_top": 1.0, "cabin_top": 1.55, "taper": 0.06},
    # hue swap: source trucks are yellow/orange like target buses; source buses are green like nothing
    "truck": {"cargo": [[232, 176, 36], [236, 200, 60], [220, 150, 30]],
              "cab": [[200, 30, 30], [236, 236, 236], [30, 30, 30]], "height": 3.8},
    "bus": {"colours": [[40, 120, 70], [236, 236, 236], [50, 140, 90]], "glass": [30, 40, 70]},
    "train": {"colours": [[140, 148, 160], [120, 126, 136]], "stripe": [30, 60, 160], "glass": [30, 40, 70]},
    "motorcycle": {"colours": [[210, 40, 40], [236, 140, 20], [40, 90, 210]], "chrome": [200, 200, 206]},
    "bicycle": {"colours": [[40, 96, 196], [210, 60, 40], [40, 170, 90]]},
    "static": {"colours": [[40, 80, 160], [150, 120, 80], [90, 90, 96]]},
    "texture": {
        "road": [3, 0, 7, 0, 0], "sidewalk": [2, 0, 3, 4, 0], "building": [2, 0, 4, 6, 0],
        "wall": [2, 0, 10, 0, 0], "fence": [2, 0, 0, 0, 8], "pole": [0, 0, 0, 0, 0],
        "traffic light": [0, 0, 0, 0, 0], "traffic sign": [0, 0, 0, 0, 0],
        "vegetation": [14, 8, 16, 0, 0], "terrain": [14, 0, 14, 0, 0], "sky": [0, 0, 5, 0, 0],
        "person": [0, 0, 0, 0, 0], "rider": [0, 0, 0, 0, 0], "car": [0, 0, 0, 0, 0],
        "truck": [0, 0, 0, 6, 0], "bus": [0, 0, 0, 0, 0], "train": [0, 0, 0, 0, 0],
        "motorcycle": [0, 0, 0, 0, 0], "bicycle": [0, 0, 0, 0, 0], "unlabelled": [2, 0, 2, 0, 0]},
    "sensor": {"brightness": [0.82, 1.22], "cast": [1.07, 1.0, 0.88], "saturation": 1.22, "contrast": 1.12,
               "gamma": 0.95, "blur": 0.0, "noise": 1.0, "vignette": 0.0},
    "shape": {"person_slim": 0.0, "car_box": 1.0, "tree_round": 0.0},
    "hood": 0.0,
}

#: How far each part of the source style departs from the target's at ``shift = 1`` (a fraction of the
#: difference of the two tables). Common "stuff" classes and the sensor shift moderately, so a source
#: model transfers imperfectly but usefully; the rare things (lights, signs, riders, two-wheelers,
#: trucks, buses, trams) shift fully, so they suffer most from the gap.
_GAP_WEIGHT: dict[str, float] = {
    "camera": 1.0, "sky": 0.5, "road": 0.5, "sidewalk": 0.6, "terrain": 0.6, "building": 0.5, "wall": 0.8,
    "fence": 0.8, "vegetation": 0.5, "pole": 0.8, "light": 1.0, "sign": 1.0, "person": 0.6, "rider": 1.0,
    "car": 0.6, "truck": 1.0, "bus": 1.0, "train": 1.0, "motorcycle": 1.0, "bicycle": 1.0, "static": 1.0,
    "texture": 0.7, "sensor": 0.5, "shape": 1.0, "hood": 1.0,
}

# ============================================================================================ priors
# Scene-composition parameters that set the class priors. ``source`` differs from ``target`` by the
# label shift (more cars and trucks, fewer pedestrians and bicycles); ``shift`` interpolates.
_PRIORS: dict[str, dict[str, dict[str, float]]] = {
    "cityscapes": {
        "target": {"parking": 0.55, "parked_gap": 4.0, "moving": 1.3, "truck": 0.08, "bus": 0.11, "train": 0.08,
                   "persons": 4.5, "riders": 0.7, "moto_frac": 0.2, "parked_bikes": 1.3, "parked_motos": 0.06,
                   "trees": 0.55, "tree_spacing": 11.0, "veg_block": 0.32, "poles": 1.0, "pole_spacing": 26.0,
                   "sign": 0.55, "light": 0.22, "overhead_light": 0.12, "wall": 0.11, "fence": 0.15,
                   "terrain": 0.6, "statics": 1.2, "crosswalk": 0.25},
        "source": {"parking": 0.7, "parked_gap": 2.4, "moving": 2.0, "truck": 0.22, "bus": 0.09, "train": 0.08,
                   "persons": 3.0, "riders": 0.7, "moto_frac": 0.4, "parked_bikes": 0.4, "parked_motos": 0.12,
                   "trees": 0.55, "tree_spacing": 11.0, "veg_block": 0.32, "poles": 1.0, "pole_spacing": 22.0,
                   "sign": 0.55, "light": 0.22, "overhead_light": 0.12, "wall": 0.11, "fence": 0.15,
                   "terrain": 0.6, "statics": 1.2, "crosswalk": 0.2},
    },
    # lighter tail (for ablations): rare things far more often, fewer parked cars
    "balanced": {
        "target": {"parking": 0.35, "parked_gap": 5.0, "moving": 1.2, "truck": 0.35, "bus": 0.3, "train": 0.25,
                   "persons": 5.0, "riders": 1.8, "moto_frac": 0.45, "parked_bikes": 2.0, "parked_motos": 0.8,
                   "trees": 0.6, "tree_spacing": 11.0, "veg_block": 0.32, "poles": 1.0, "pole_spacing": 10.0,
                   "sign": 0.8, "light": 0.55, "overhead_light": 0.4, "wall": 0.2, "fence": 0.22,
                   "terrain": 0.6, "statics": 1.2, "crosswalk": 0.3},
        "source": {"parking": 0.45, "parked_gap": 4.0, "moving": 1.6, "truck": 0.45, "bus": 0.28, "train": 0.22,
                   "persons": 3.6, "riders": 1.6, "moto_frac": 0.55, "parked_bikes": 1.2, "parked_motos": 0.9,
                   "trees": 0.6, "tree_spacing": 11.0, "veg_block": 0.32, "poles": 1.0, "pole_spacing": 10.0,
                   "sign": 0.8, "light": 0.55, "overhead_light": 0.4, "wall": 0.2, "fence": 0.22,
                   "terrain": 0.6, "statics": 1.2, "crosswalk": 0.25},
    },
}
_PROFILE_ALIASES = {"uniform-ish": "balanced", "uniform": "balanced"}
#: Available class-prior profiles.
PROFILES = tuple(_PRIORS)


def _canonical_profile(profile: str) -> str:
    p = _PROFILE_ALIASES.get(profile, profile)
    if p not in _PRIORS:
        raise ValueError(f"unknown streets profile {profile!r}; expected one of "
                         f"{sorted(set(_PRIORS) | set(_PROFILE_ALIASES))}")
    return p


def _lerp_tree(a: Any, b: Any, t: float) -> Any:
    """Interpolate two identically shaped nested dicts/lists of numbers leaf by leaf (a + t (b - a))."""
    if isinstance(a, dict):
        return {k: _lerp_tree(a[k], b[k], t) for k in a}
    return np.asarray(a, np.float32) + np.float32(t) * (np.asarray(b, np.float32) - np.asarray(a, np.float32))


def _check_domain(domain: str) -> str:
    if domain not in ("source", "target"):
        raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
    return domain


def domain_style(domain: str, shift: float = 1.0) -> dict:
    """Appearance parameters of a domain: the target's, or the source's interpolated by ``shift``
    (times the per-part :data:`_GAP_WEIGHT`). Cached; the arrays are read-only."""
    t = float(shift) if _check_domain(domain) == "source" else 0.0
    return _style_cached(t)


@functools.lru_cache(maxsize=16)
def _style_cached(t: float) -> dict:
    st = {k: _lerp_tree(_TARGET_STYLE[k], _SOURCE_STYLE[k], t * _GAP_WEIGHT[k]) for k in _TARGET_STYLE}
    st["texture_table"] = np.stack([st["texture"][n] for n in (*CLASS_NAMES, "unlabelled")]).astype(np.float32)

    def freeze(x):
        if isinstance(x, dict):
            for v in x.values():
                freeze(v)
        else:
            x.setflags(write=False)
    freeze(st)
    return st


def domain_priors(domain: str, shift: float = 1.0, profile: str = "cityscapes") -> dict[str, float]:
    """Scene-composition parameters (class priors) of a domain under a profile."""
    p = _PRIORS[_canonical_profile(profile)]
    t = float(shift) if _check_domain(domain) == "source" else 0.0
    return {k: max(0.0, float(p["target"][k] + t * (p["source"][k] - p["target"][k]))) for k in p["target"]}


# ============================================================================================ camera
@dataclass
class _Cam:
    """Pin-hole camera at X = 0, height ``h``, looking down +z; the ground is Y = 0."""

    H: int
    W: int
    f: float
    h: float
    vx: float
    yh: float

    def project(self, P: np.ndarray) -> np.ndarray:
        """World points (N, 3) as (X, Y, z) -> screen points (N, 2) as (x, y) in pixels."""
        P = np.asarray(P, np.float64)
        s = self.f / np.maximum(P[:, 2], 0.3)
        out = np.empty((len(P), 2))
        out[:, 0] = self.vx + P[:, 0] * s
        out[:, 1] = self.yh + (self.h - P[:, 1]) * s
        return out

    def px(self, metres: float, z: float) -> float:
        return self.f * metres / max(z, 0.3)


class _Canvas:
    """An RGB float image and a trainId label map painted together (painter's algorithm)."""

    def __init__(self, H: int, W: int):
        self.img = np.zeros((H, W, 3), np.float32)
        self.lab = np.full((H, W), IGNORE_INDEX, np.uint8)

    @staticmethod
    def _pts(pts: np.ndarray) -> list[np.ndarray]:
        # 4 fractional bits (cv2 'shift'): sub-pixel vertex positions, no anti-aliasing. Depths are
        # clamped to >= 0.3 m by the projection, so coordinates stay far inside the int32 range.
        return [np.rint(np.asarray(pts) * 16).astype(np.int32)]

    @staticmethod
    def _colour(colour) -> list[float]:
        return np.asarray(colour, np.float64).tolist()

    def fill(self, pts: np.ndarray, cls: int, colour) -> None:
        p = self._pts(pts)
        cv2.fillPoly(self.img, p, self._colour(colour), cv2.LINE_8, 4)
        cv2.fillPoly(self.lab, p, int(cls), cv2.LINE_8, 4)

    def line(self, pts: np.ndarray, cls: int, colour, thick: float, closed: bool = False) -> None:
        p = self._pts(pts)
        t = int(max(1, round(thick)))
        cv2.polylines(self.img, p, closed, self._colour(colour), t, cv2.LINE_8, 4)
        cv2.polylines(self.lab, p, closed, int(cls), t, cv2.LINE_8, 4)

    def shade(self, pts: np.ndarray, factor: float) -> None:
        """Darken the image under a polygon (shadows) without touching the labels."""
        m = np.zeros(self.lab.shape, np.uint8)
        cv2.fillPoly(m, self._pts(pts), 1, cv2.LINE_8, 4)
        self.img[m.astype(bool)] *= factor


_UNIT_CIRCLES: dict[int, np.ndarray] = {}


def _circle(cu: float, cv: float, r: float, n: int = 14, ry: float | None = None) -> np.ndarray:
    """``n`` points of a circle (ellipse when ``ry`` is given) around (cu, cv)."""
    if n not in _UNIT_CIRCLES:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        _UNIT_CIRCLES[n] = np.stack([np.cos(t), np.sin(t)], 1)
    return _UNIT_CIRCLES[n] * (r, r if ry is None else ry) + (cu, cv)


def _segment(p, q, w: float) -> np.ndarray:
    """A quad of width ``w`` around the segment p-q (local plane coordinates)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * w / 2
    return np.stack([p + n, q + n, q - n, p - n])


class _Plane:
    """A vertical plane through ground point (X0, z0) with heading ``theta`` (0: along the road, pi/2:
    facing the camera). Local (u, v) = (along the plane, height) map to world (X, Y, z)."""

    def __init__(self, cam: _Cam, X0: float, z0: float, theta: float = np.pi / 2):
        self.cam, self.X0, self.z0 = cam, X0, z0
        self.s, self.c = math.sin(theta), math.cos(theta)

    def to_screen(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, np.float64)
        u = uv[:, 0]
        cam = self.cam
        k = cam.f / np.maximum(self.z0 + u * self.c, 0.3)
        out = np.empty((len(uv), 2))
        out[:, 0] = cam.vx + (self.X0 + u * self.s) * k
        out[:, 1] = cam.yh + (cam.h - uv[:, 1]) * k
        return out

    def fill(self, cv: _Canvas, uv, cls: int, colour) -> None:
        cv.fill(self.to_screen(uv), cls, colour)

    def line(self, cv: _Canvas, uv, cls: int, colour, width_m: float, closed: bool = False) -> None:
        cv.line(self.to_screen(uv), cls, colour, self.cam.px(width_m, self.z0), closed)


def _pick(rng: np.random.Generator, colours: np.ndarray, jitter: float = 0.08) -> np.ndarray:
    """One colour of a palette, with a per-instance brightness and per-channel jitter."""
    c = np.asarray(colours, np.float32)
    c = c[rng.integers(len(c))] if c.ndim == 2 else c
    return c * rng.uniform(1 - jitter, 1 + jitter) + rng.normal(0, 4, 3).astype(np.float32)


# ====================================================================================== noise fields
_GRID_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grids(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    if (H, W) not in _GRID_CACHE:
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
        _GRID_CACHE[(H, W)] = (yy, xx)
    return _GRID_CACHE[(H, W)]


def _smooth_noise(rng: np.random.Generator, H: int, W: int, cell: int) -> np.ndarray:
    """Zero-mean, unit-std noise with structures of about ``cell`` pixels (bicubic upsampling)."""
    small = rng.standard_normal((max(2, H // cell + 2), max(2, W // cell + 2))).astype(np.float32)
    big = cv2.resize(small, (W + 2 * cell, H + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell:cell + H, cell:cell + W]
    return (big - big.mean()) / (big.std() + 1e-6)


def _fields(rng: np.random.Generator, H: int, W: int, yy: np.ndarray, xx: np.ndarray) -> dict[str, np.ndarray]:
    k = max(1, round(W / 256))
    return {
        "fine": rng.standard_normal((H, W), dtype=np.float32),
        "mid": _smooth_noise(rng, H, W, 2 * k),
        "blob": _smooth_noise(rng, H, W, 10 * k),
        "hstripe": np.sin(yy * (2 * np.pi / (3.0 * k))).astype(np.float32),
        "vstripe": np.sin(xx * (2 * np.pi / (4.0 * k))).astype(np.float32),
    }


# ======================================================================================== background
@dataclass
class _Layout:
    """Lateral layout of the street (metres; the camera is at X = 0 in the ego lane)."""

    RL: float  # road extends to X = -RL (left) and X = +RR (right)
    RR: float
    SL: float  # sidewalk widths
    SR: float
    TL: float  # terrain (verge) widths
    TR: float
    park_l: bool
    park_r: bool
    lanes: list[float]  # lane centres (X) of moving traffic
    oncoming: list[bool]
    tram_x: float | None
    crosswalk: tuple[float, float] | None

    @property
    def XL(self) -> float:
        return self.RL + self.SL + self.TL

    @property
    def XR(self) -> float:
        return self.RR + self.SR + self.TR


def _make_layout(rng: np.random.Generator, pr: dict) -> _Layout:
    park_l, park_r = bool(rng.random() < pr["parking"]), bool(rng.random() < pr["parking"])
    n_right = int(rng.random() < 0.3)
    n_left = 1 + int(rng.random() < 0.3)
    RR = 1.6 + 3.2 * n_right + (2.2 if park_r else 0.2)
    RL = 1.6 + 3.2 * n_left + (2.2 if park_l else 0.2)
    lanes = [0.0] + [3.2 * (i + 1) for i in range(n_right)] + [-3.2 * (i + 1) for i in range(n_left)]
    oncoming = [False] * (1 + n_right) + [True] * n_left
    SL, SR = rng.uniform(2.5, 6.0, 2)
    TL = rng.uniform(1.5, 5.0) if rng.random() < pr["terrain"] else 0.0
    TR = rng.uniform(1.5, 5.0) if rng.random() < pr["terrain"] else 0.0
    tram_x = -3.2 if rng.random() < pr["train"] else None
    cw = None
    if rng.random() < pr["crosswalk"]:
        z = rng.uniform(8, 25)
        cw = (z, z + rng.uniform(3, 4.5))
    return _Layout(RL, RR, SL, SR, TL, TR, park_l, park_r, lanes, oncoming, tram_x, cw)


def _side_profile(rng: np.random.Generator, st: dict, pr: dict, zgrid: np.ndarray) -> dict[str, np.ndarray]:
    """Blocks along one street side, sampled on a depth grid: building / vegetation, height, colour,
    window grid, and an optional low wall or fence in front."""
    n = len(zgrid)
    out = {k: np.zeros(n, np.float32) for k in ("top", "front_h", "start", "win_dz", "floor_h")}
    out["kind"] = np.zeros(n, np.uint8)        # 0 building, 1 vegetation
    out["front"] = np.zeros(n, np.uint8)       # 0 none, 1 wall, 2 fence
    out["shop"] = np.zeros(n, bool)
    out["colour"] = np.zeros((n, 3), np.float32)
    z, i0 = 0.0, 0
    bcols, vcols = st["building"]["colours"], st["vegetation"]["colours"]
    while i0 < n:
        length = rng.uniform(8, 30)
        i1 = int(np.searchsorted(zgrid, z + length))
        sl = slice(i0, max(i1, i0 + 1))
        veg = rng.random() < pr["veg_block"]
        out["kind"][sl] = int(veg)
        out["start"][sl] = z
        if veg:
            out["top"][sl] = rng.uniform(7, 16)
            out["colour"][sl] = _pick(rng, vcols, 0.1)
        else:
            out["top"][sl] = rng.uniform(16, 42)
            out["colour"][sl] = _pick(rng, bcols, 0.1)
            out["win_dz"][sl] = rng.uniform(2.4, 3.8)
            out["floor_h"][sl] = rng.uniform(2.9, 3.6)
            out["shop"][sl] = rng.random() < 0.5
        u = rng.random()
        if u < pr["wall"]:
            out["front"][sl], out["front_h"][sl] = 1, rng.uniform(0.9, 2.2)
        elif u < pr["wall"] + pr["fence"]:
            out["front"][sl], out["front_h"][sl] = 2, rng.uniform(1.0, 2.0)
        z += length
        i0 = sl.stop
    # irregular tree-line tops for vegetation blocks
    wob = np.interp(zgrid, np.arange(0, zgrid[-1] + 2, 1.5), rng.normal(0, 0.9, int(zgrid[-1] / 1.5) + 2))
    out["top"] += np.where(out["kind"] == 1, wob, 0).astype(np.float32)
    return out


def _background(cv: _Canvas, cam: _Cam, rng: np.random.Generator, st: dict, pr: dict, lay: _Layout,
                fields: dict, yy: np.ndarray, xx: np.ndarray) -> None:
    """Per-pixel ray casting of the static scene: ground (road, markings, kerb, sidewalk, verge),
    the two facade planes (buildings with windows, vegetation blocks, walls, fences), skyline, sky.

    Works on flat index sets of the pixels of each part, so every step is one vectorised op."""
    H, W = cam.H, cam.W
    img, lab = cv.img.reshape(-1, 3), cv.lab.reshape(-1)
    yf, xf = yy.reshape(-1), xx.reshape(-1)
    k = max(1, round(W / 256))

    # ---- sky gradient and a distant skyline just above the horizon
    sky_t = np.clip(yy[:, :1] / max(cam.yh, 1.0), 0, 1)[..., None]
    cv.img[:] = (1 - sky_t) * st["sky"]["top"] + sky_t * st["sky"]["horizon"]
    cv.lab[:] = SKY
    seg = np.cumsum(rng.uniform(4, 14, 64) * k)
    si = np.clip(np.searchsorted(seg, xx[0]), 0, 63)
    sky_line = cam.yh - rng.uniform(6, 30, 64)[si] * (H / 128) * rng.uniform(0.6, 1.2)
    sk_tree = (rng.random(64) < 0.35)[si]
    F = np.flatnonzero((yy >= sky_line[None, :]) & (yy < cam.yh))
    tree = sk_tree[xf[F].astype(np.int64)]
    img[F] = np.where(tree[:, None], np.asarray(st["vegetation"]["colours"], np.float32).mean(0) * 0.9,
                      np.asarray(st["building"]["colours"], np.float32).mean(0) * 0.9)
    lab[F] = np.where(tree, VEG, BUILDING)

    # ---- facades: the left plane X = -XL for columns left of the vanishing point, right plane X = +XR
    d = yf - cam.yh                                         # rows below the horizon
    left = xf < cam.vx
    zp = cam.f * np.where(left, lay.XL, lay.XR) / np.maximum(np.abs(xf - cam.vx), 1e-3)
    Yp = cam.h - d * zp / cam.f
    z_far, dzg = 140.0, 0.5
    zgrid = np.arange(dzg, z_far + dzg, dzg, dtype=np.float32)
    prof = {s: _side_profile(rng, st, pr, zgrid) for s in ("L", "R")}
    idx = np.clip((zp / dzg).astype(np.int32) - 1, 0, len(zgrid) - 1)
    top = np.where(left, prof["L"]["top"][idx], prof["R"]["top"][idx])
    hit = (Yp >= 0) & (zp < z_far)
    P = np.flatnonzero(hit & (Yp <= top))
    pl, pi, pz, pY, ptop = left[P], idx[P], zp[P], Yp[P], top[P]

    def side(key):
        return np.where(pl if prof["L"][key].ndim == 1 else pl[:, None], prof["L"][key][pi], prof["R"][key][pi])

    kind, front, front_h = side("kind"), side("front"), side("front_h")
    col = side("colour")
    bld = kind == 0
    col[~bld] *= (1 + 0.12 * fields["blob"].reshape(-1)[P[~bld]])[:, None]
    # windows on a (depth, height) grid -> perspective-correct; blended to an average when unresolvable
    u = pz - side("start")
    fh = np.maximum(side("floor_h"), 1e-3)
    wdz = np.maximum(side("win_dz"), 1e-3)
    ww = float(st["building"]["window_w"])
    fu, fv = np.mod(u / wdz, 1.0), np.mod(pY / fh, 1.0)
    upper = bld & (pY > 3.2) & (pY < ptop - 1.0)
    win = upper & (np.abs(fu - 0.5) < ww / 2) & (fv > 0.3) & (fv < 0.78)
    res = np.clip((cam.f * fh / pz - 2.0) / 3.0, 0, 1)[:, None]       # 0: unresolvable, 1: sharp
    wcol = np.asarray(st["building"]["window"], np.float32)
    avg = col * 0.75 + wcol * 0.25
    col = np.where(upper[:, None], np.where(win[:, None], res * wcol + (1 - res) * avg, res * col + (1 - res) * avg),
                   col)
    shop = bld & side("shop") & (pY > 0.4) & (pY < 2.6) & (np.abs(np.mod(u / 6.0, 1) - 0.5) < 0.36)
    col[shop] = st["building"]["shop"]
    col[bld & (pY > ptop - 0.45)] *= 0.82                             # cornice
    cls = np.where(bld, BUILDING, VEG).astype(np.uint8)
    grass = ~bld & (pY < 0.5)                                         # grass under hedges / park trees
    col[grass] = st["terrain"]["base"]
    cls[grass] = TERRAIN
    # low walls and fences in front of some blocks (fence: a lattice with the block showing through)
    wall = (front == 1) & (pY < front_h)
    fence = (front == 2) & (pY < front_h)
    col[wall] = st["wall"]["base"]
    cls[wall] = WALL
    fcol = np.asarray(st["fence"]["base"], np.float32)
    px, py = xf[P].astype(np.int64) // k, yf[P].astype(np.int64) // k
    lattice = (((px + py) % 4) < 1) | (((px - py) % 4) < 1) | (np.mod(pz, 2.5) < 0.12)
    col[fence & lattice] = fcol
    col[fence & ~lattice] = col[fence & ~lattice] * 0.55 + fcol * 0.25
    cls[fence] = FENCE
    img[P], lab[P] = col, cls

    # ---- ground (the ray meets the ground before a facade): road, markings, kerbs, sidewalks, verges
    G = np.flatnonzero((d > 1e-3) & ~hit)
    dg = d[G]
    zg = cam.f * cam.h / dg
    Xg = (xf[G] - cam.vx) * cam.h / dg
    road = (Xg > -lay.RL) & (Xg < lay.RR)
    swalk = ~road & (Xg > -(lay.RL + lay.SL)) & (Xg < lay.RR + lay.SR)
    col = np.empty((len(G), 3), np.float32)
    col[:] = st["terrain"]["base"]
    cls = np.full(len(G), TERRAIN, np.uint8)
    col[road] = np.asarray(st["road"]["base"], np.float32) * (1 + 0.05 * fields["blob"].reshape(-1)[G[road]])[:, None]
    cls[road] = ROAD
    mark_w = 0.12
    dash = np.mod(zg, 9.0) < 3.5
    lanes = sorted(lay.lanes)
    m = np.zeros(len(G), bool)
    for a, b in zip(lanes[:-1], lanes[1:]):
        x = (a + b) / 2
        if abs(x + 1.6) < 0.01:                                   # centre line between the directions
            col[road & (np.abs(Xg - x) < mark_w)] = st["road"]["centre"]
        else:
            m |= road & (np.abs(Xg - x) < mark_w) & dash
    for edge in (-lay.RL + 0.4 + (2.0 if lay.park_l else 0.0), lay.RR - 0.4 - (2.0 if lay.park_r else 0.0)):
        m |= road & (np.abs(Xg - edge) < mark_w * 0.8)
    if lay.crosswalk is not None:
        z0, z1 = lay.crosswalk
        m |= road & (zg > z0) & (zg < z1) & (np.mod(Xg, 1.0) < 0.5)
    col[m] = st["road"]["mark"]
    if lay.tram_x is not None:
        rails = road & ((np.abs(Xg - lay.tram_x - 0.72) < 0.05) | (np.abs(Xg - lay.tram_x + 0.72) < 0.05))
        col[rails] = st["road"]["rail"]
    col[swalk] = st["sidewalk"]["base"]
    tiles = float(st["sidewalk"]["tiles"])
    if tiles > 0.5:
        grout = swalk & ((np.mod(Xg, 0.6) < 0.05) | (np.mod(zg, 0.6) < 0.05 * np.maximum(1.0, zg / 8)))
        col[grout] -= tiles
    col[swalk & ((np.abs(Xg + lay.RL) < 0.22) | (np.abs(Xg - lay.RR) < 0.22))] = st["sidewalk"]["curb"]
    cls[swalk] = SIDEWALK
    img[G], lab[G] = col, cls


# =========================================================================================== objects
def _draw_box(cv: _Canvas, cam: _Cam, x0, x1, y0, y1, z0, z1, colour, cls: int,
              back_colour=None) -> None:
    """An axis-aligned 3-D box: its visible faces (near face, one side, top) with simple shading."""
    colour = np.asarray(colour, np.float32)
    if y1 < cam.h:
        cv.fill(cam.project(np.array([[x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]])), cls, colour * 1.08)
    if x0 > 0:
        cv.fill(cam.project(np.array([[x0, y0, z0], [x0, y0, z1], [x0, y1, z1], [x0, y1, z0]])), cls, colour * 0.8)
    elif x1 < 0:
        cv.fill(cam.project(np.array([[x1, y0, z0], [x1, y0, z1], [x1, y1, z1], [x1, y1, z0]])), cls, colour * 0.8)
    cv.fill(cam.project(np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0]])), cls,
            colour if back_colour is None else back_colour)


def _side_x(x0: float, x1: float) -> float | None:
    """X of the box side facing the camera, or None when the camera is between the sides."""
    return x0 if x0 > 0 else (x1 if x1 < 0 else None)


def _wheels_side(cv: _Canvas, cam: _Cam, xs: float, zs: list[float], r: float, cls: int, tyre, hub) -> None:
    for zc in zs:
        pl = _Plane(cam, xs, zc, 0.0)
        pl.fill(cv, _circle(0, r, r, 12), cls, tyre)
        pl.fill(cv, _circle(0, r, r * 0.45, 8), cls, hub)


def _shadow(cv: _Canvas, cam: _Cam, x0, x1, z0, z1) -> None:
    cv.shade(cam.project(np.array([[x0 - 0.15, 0, z0 - 0.2], [x1 + 0.15, 0, z0 - 0.2], [x1 + 0.15, 0, z1 + 0.1],
                                   [x0 - 0.15, 0, z1 + 0.1]])), 0.55)


def _draw_car(cv: _Canvas, cam: _Cam, rng, st: dict, Xc: float, z0: float, oncoming: bool) -> None:
    """A car: lower body box, a (tapered) cabin with glass, wheels, lights; boxier in the source."""
    cs = st["car"]
    boxy = float(st["shape"]["car_box"])
    w, l = rng.uniform(1.68, 1.92), rng.uniform(3.9, 4.7)
    x0, x1, z1 = Xc - w / 2, Xc + w / 2, z0 + l
    bt, ct, taper = float(cs["body_top"]), float(cs["cabin_top"]) + rng.uniform(-0.05, 0.08), float(cs["taper"])
    body = _pick(rng, cs["colours"])
    glass = np.asarray(cs["glass"], np.float32) * rng.uniform(0.85, 1.15)
    tyre, hub = np.array([22, 22, 24], np.float32), np.array([120, 120, 124], np.float32)
    _shadow(cv, cam, x0, x1, z0, z1)
    # tyres under the near face
    for a, b in ((x0 + 0.08, x0 + 0.36), (x1 - 0.36, x1 - 0.08)):
        cv.fill(cam.project(np.array([[a, 0, z0 + 0.7], [b, 0, z0 + 0.7], [b, 0.34, z0 + 0.7], [a, 0.34, z0 + 0.7]])),
                CAR, tyre)
    _draw_box(cv, cam, x0, x1, 0.3, bt, z0, z1, body, CAR)
    xs = _side_x(x0, x1)
    if xs is not None:
        _wheels_side(cv, cam, xs, [z0 + 0.85, z1 - 0.85], 0.33, CAR, tyre, hub)
    # cabin
    back, fwd = (0.9 - 0.3 * boxy, 1.3 - 0.3 * boxy)
    if oncoming:
        back, fwd = fwd, back
    zc0, zc1 = z0 + back, z1 - fwd
    slope = 0.35 * (1 - boxy) + 0.1
    ix = 0.08
    rear = np.array([[x0 + ix, bt, zc0], [x1 - ix, bt, zc0], [x1 - ix - taper, ct, zc0 + slope],
                     [x0 + ix + taper, ct, zc0 + slope]])
    if xs is not None:
        sgn = 1 if xs == x0 else -1
        xs_top = xs + sgn * (ix + taper)
        sidep = np.array([[xs + sgn * ix, bt, zc0], [xs + sgn * ix, bt, zc1], [xs_top, ct, zc1 - slope],
                          [xs_top, ct, zc0 + slope]])
        cv.fill(cam.project(sidep), CAR, body * 0.8)
        c = sidep.mean(0)
        cv.fill(cam.project(c + 0.8 * (sidep - c)), CAR, glass * 0.9)
    if ct < cam.h:
        roof = np.array([[x0 + ix + taper, ct, zc0 + slope], [x1 - ix - taper, ct, zc0 + slope],
                         [x1 - ix - taper, ct, zc1 - slope], [x0 + ix + taper, ct, zc1 - slope]])
        cv.fill(cam.project(roof), CAR, body * 1.1)
    cv.fill(cam.project(rear), CAR, body)
    c = rear.mean(0)
    cv.fill(cam.project(c + (0.82 if oncoming else 0.74) * (rear - c)), CAR, glass)
    # lights and plate on the near face
    lc = np.array([235, 235, 210], np.float32) if oncoming else np.array([200, 20, 24], np.float32)
    for a, b in ((x0 + 0.08, x0 + 0.38), (x1 - 0.38, x1 - 0.08)):
        cv.fill(cam.project(np.array([[a, 0.68, z0], [b, 0.68, z0], [b, 0.82, z0], [a, 0.82, z0]])), CAR, lc)
    cv.fill(cam.project(np.array([[Xc - 0.25, 0.42, z0], [Xc + 0.25, 0.42, z0], [Xc + 0.25, 0.54, z0],
                                  [Xc - 0.25, 0.54, z0]])), CAR, np.array([225, 225, 215], np.float32))


def _draw_truck(cv: _Canvas, cam: _Cam, rng, st: dict, Xc: float, z0: float, oncoming: bool) -> float:
    """A box truck: cab plus a tall cargo box (with door line and bumper). Returns its length."""
    ts = st["truck"]
    w, l = 2.45, rng.uniform(7.0, 9.5)
    x0, x1, z1 = Xc - w / 2, Xc + w / 2, z0 + l
    cargo, cab = _pick(rng, ts["cargo"]), _pick(rng, ts["cab"])
    hgt = float(ts["height"]) + rng.uniform(-0.2, 0.3)
    tyre, hub = np.array([22, 22, 24], np.float32), np.array([110, 110, 114], np.float32)
    _shadow(cv, cam, x0, x1, z0, z1)
    xs = _side_x(x0, x1)
    cab_z = (z0, z0 + 2.3) if oncoming else (z1 - 2.3, z1)
    cargo_z = (z0 + 2.5, z1) if oncoming else (z0, z1 - 2.5)
    parts = [("cab", cab_z), ("cargo", cargo_z)]
    parts.sort(key=lambda p: -p[1][0])
    for name, (a, b) in parts:
        if name == "cab":
            _draw_box(cv, cam, x0 + 0.05, x1 - 0.05, 0.5, 2.9, a, b, cab, TRUCK)
            if oncoming:
                ws = np.array([[x0 + 0.2, 1.7, a], [x1 - 0.2, 1.7, a], [x1 - 0.2, 2.6, a], [x0 + 0.2, 2.6, a]])
                cv.fill(cam.project(ws), TRUCK, st["car"]["glass"])
        else:
            _draw_box(cv, cam, x0, x1, 0.9, hgt, a, b, cargo, TRUCK)
            if not oncoming:
                cv.fill(cam.project(np.array([[Xc - 0.03, 1.0, a], [Xc + 0.03, 1.0, a], [Xc + 0.03, hgt - 0.1, a],
                                              [Xc - 0.03, hgt - 0.1, a]])), TRUCK, cargo * 0.6)
                cv.fill(cam.project(np.array([[x0, 0.55, a], [x1, 0.55, a], [x1, 0.9, a], [x0, 0.9, a]])), TRUCK,
                        tyre * 1.5)
    if xs is not None:
        _wheels_side(cv, cam, xs, [z0 + 1.2, z1 - 1.4, z1 - 2.6] if not oncoming else [z0 + 1.2, z0 + 5.0, z1 - 1.2],
                     0.5, TRUCK, tyre, hub)
    return l


def _draw_bus(cv: _Canvas, cam: _Cam, rng, st: dict, Xc: float, z0: float, oncoming: bool) -> float:
    """A city bus: long box with a window band (pillars), big windscreen at the front."""
    bs = st["bus"]
    w, l = 2.55, rng.uniform(11.0, 13.0)
    x0, x1, z1 = Xc - w / 2, Xc + w / 2, z0 + l
    body = _pick(rng, bs["colours"])
    glass = np.asarray(bs["glass"], np.float32)
    tyre, hub = np.array([22, 22, 24], np.float32), np.array([110, 110, 114], np.float32)
    _shadow(cv, cam, x0, x1, z0, z1)
    _draw_box(cv, cam, x0, x1, 0.32, 3.1, z0, z1, body, BUS)
    xs = _side_x(x0, x1)
    if xs is not None:
        band = np.array([[xs, 1.25, z0 + 0.4], [xs, 1.25, z1 - 0.4], [xs, 2.55, z1 - 0.4], [xs, 2.55, z0 + 0.4]])
        cv.fill(cam.project(band), BUS, glass)
        for zp in np.arange(z0 + 1.6, z1 - 0.5, 1.4):
            cv.fill(cam.project(np.array([[xs, 1.25, zp], [xs, 1.25, zp + 0.12], [xs, 2.55, zp + 0.12],
                                          [xs, 2.55, zp]])), BUS, body * 0.8)
        _wheels_side(cv, cam, xs, [z0 + 2.4, z1 - 3.0], 0.5, BUS, tyre, hub)
    lo, hi = (0.95, 2.8) if oncoming else (1.6, 2.7)
    cv.fill(cam.project(np.array([[x0 + 0.15, lo, z0], [x1 - 0.15, lo, z0], [x1 - 0.15, hi, z0],
                                  [x0 + 0.15, hi, z0]])), BUS, glass)
    if oncoming:
        cv.fill(cam.project(np.array([[x0 + 0.4, 2.85, z0], [x1 - 0.4, 2.85, z0], [x1 - 0.4, 3.05, z0],
                                      [x0 + 0.4, 3.05, z0]])), BUS, np.array([240, 160, 40], np.float32))
    return l


def _draw_train(cv: _Canvas, cam: _Cam, rng, st: dict, Xc: float, z0: float, oncoming: bool) -> float:
    """A tram on rails: very long two-tone box with a window band and a pantograph on the roof."""
    ts = st["train"]
    w, l = 2.65, rng.uniform(24, 36)
    x0, x1, z1 = Xc - w / 2, Xc + w / 2, z0 + l
    body = _pick(rng, ts["colours"])
    stripe = np.asarray(ts["stripe"], np.float32)
    glass = np.asarray(ts["glass"], np.float32)
    _draw_box(cv, cam, x0, x1, 0.35, 3.4, z0, z1, body, TRAIN)
    xs = _side_x(x0, x1)
    if xs is not None:
        cv.fill(cam.project(np.array([[xs, 2.45, z0], [xs, 2.45, z1], [xs, 3.4, z1], [xs, 3.4, z0]])), TRAIN,
                stripe * 0.85)
        cv.fill(cam.project(np.array([[xs, 1.2, z0 + 0.4], [xs, 1.2, z1], [xs, 2.35, z1], [xs, 2.35, z0 + 0.4]])),
                TRAIN, glass)
        for zp in np.arange(z0 + 2.0, z1, 2.0):
            cv.fill(cam.project(np.array([[xs, 1.2, zp], [xs, 1.2, zp + 0.15], [xs, 2.35, zp + 0.15],
                                          [xs, 2.35, zp]])), TRAIN, body * 0.8)
    cv.fill(cam.project(np.array([[x0, 2.45, z0], [x1, 2.45, z0], [x1, 3.4, z0], [x0, 3.4, z0]])), TRAIN, stripe)
    cv.fill(cam.project(np.array([[x0 + 0.2, 1.2, z0], [x1 - 0.2, 1.2, z0], [x1 - 0.2, 2.35, z0],
                                  [x0 + 0.2, 2.35, z0]])), TRAIN, glass)
    zp = z0 + 4.0
    pts = cam.project(np.array([[Xc - 0.6, 3.4, zp], [Xc, 4.5, zp + 0.8], [Xc + 0.6, 3.4, zp + 1.6]]))
    cv.line(pts, TRAIN, body * 0.6, cam.px(0.08, zp))
    return l


def _draw_person(cv: _Canvas, cam: _Cam, rng, st: dict, X: float, z: float) -> None:
    """A pedestrian sprite facing the camera: legs (walking stride), torso, arms, head and hair;
    slimmer and taller in the source."""
    ps = st["person"]
    h = rng.uniform(*ps["height"])
    slim = float(st["shape"]["person_slim"])
    sw = float(ps["shoulder"]) * h * rng.uniform(0.9, 1.1)
    top, bottom = _pick(rng, ps["top"]), _pick(rng, ps["bottom"])
    pl = _Plane(cam, X, z)
    stride = rng.uniform(-0.07, 0.07) * h
    hip = 0.48 * h
    for sgn in (-1, 1):
        hx = sgn * 0.055 * h
        pl.fill(cv, _segment((hx, hip), (hx + sgn * stride, 0.0), 0.085 * h), PERSON, bottom)
    for sgn in (-1, 1):
        sx = sgn * (sw / 2 + 0.01 * h)
        pl.fill(cv, _segment((sx, 0.81 * h), (sx + sgn * 0.025 * h, 0.5 * h), 0.06 * h), PERSON, top * 0.85)
    waist = sw * (0.85 + 0.1 * slim)
    pl.fill(cv, np.array([[-waist / 2, hip - 0.02 * h], [waist / 2, hip - 0.02 * h], [sw / 2, 0.83 * h],
                          [-sw / 2, 0.83 * h]]), PERSON, top)
    r = 0.066 * h
    pl.fill(cv, _circle(0, 0.9 * h, r, 12), PERSON, _pick(rng, ps["skin"], 0.12))
    pl.fill(cv, _circle(0, 0.92 * h, r * 1.02, 12, ry=r * 0.55), PERSON, ps["hair"])


def _draw_bike(cv: _Canvas, cam: _Cam, rng, st: dict, X: float, z: float, theta: float, moto: bool,
               rider: bool) -> None:
    """A bicycle (thin rings and frame) or motorcycle (solid wheels, body) on a vertical plane,
    optionally with a seated rider (class rider) in profile."""
    direction = 1 if rng.random() < 0.5 else -1
    pl = _Plane(cam, X, z, theta)
    cls = MOTO if moto else BIKE
    if moto:
        L, r = 1.4, 0.32
        body = _pick(rng, st["motorcycle"]["colours"])
        chrome = np.asarray(st["motorcycle"]["chrome"], np.float32)
    else:
        L, r = 1.05, 0.34
        body = _pick(rng, st["bicycle"]["colours"])
    u0 = -L / 2

    def P(pts):
        a = np.asarray(pts, float)
        return np.stack([direction * (a[:, 0] + u0), a[:, 1]], 1)

    tyre = np.array([24, 24, 26], np.float32)
    if moto:
        for c in (0.0, L):
            pl.fill(cv, P(_circle(c, r, r, 12)), cls, tyre)
            pl.fill(cv, P(_circle(c, r, r * 0.5, 8)), cls, chrome)
        pl.fill(cv, P([[0.25, 0.45], [0.5, 0.33], [0.95, 0.33], [1.15, 0.6], [1.22, 0.86], [1.0, 0.96],
                       [0.7, 0.9], [0.35, 0.88], [0.1, 0.7]]), cls, body)
        pl.fill(cv, P([[0.15, 0.86], [0.7, 0.9], [0.72, 0.98], [0.2, 0.97]]), cls, tyre * 1.4)
        pl.line(cv, P([[L, r], [1.15, 0.95], [1.05, 1.1]]), cls, chrome, 0.07)
    else:
        t = max(0.045, 1.6 / cam.px(1.0, z))     # at least ~1.6 px wide tyres so they stay visible
        for c in (0.0, L):
            pl.line(cv, P(_circle(c, r, r - t / 2, 14)), cls, tyre, t, closed=True)
        frame = [[0, r], [0.45, 0.3], [0.35, 0.85], [0, r]]
        pl.line(cv, P(frame), cls, body, max(0.045, t * 0.8), closed=False)
        pl.line(cv, P([[0.35, 0.85], [0.9, 0.85], [L, r]]), cls, body, max(0.045, t * 0.8))
        pl.line(cv, P([[0.45, 0.3], [0.9, 0.85]]), cls, body, max(0.04, t * 0.7))
        pl.line(cv, P([[0.84, 1.02], [0.92, 1.0]]), cls, tyre, max(0.04, t * 0.7))
        pl.line(cv, P([[0.27, 0.92], [0.45, 0.92]]), cls, tyre, max(0.05, t))
    if not rider:
        return
    rs = st["rider"]
    jacket = _pick(rng, rs["top"])
    trousers = _pick(rng, st["person"]["bottom"])
    lean = math.radians(rng.uniform(35, 55) if moto else rng.uniform(18, 35))
    hip = np.array([0.38 if moto else 0.36, 0.9 if moto else 0.98])
    sh = hip + 0.58 * np.array([math.sin(lean), math.cos(lean)])
    head = sh + 0.2 * np.array([math.sin(lean), math.cos(lean)])
    hand = np.array([1.1 if moto else 0.88, 1.05 if moto else 1.02])
    foot = np.array([0.6 if moto else 0.5, 0.4 if moto else 0.32])
    knee = (hip + foot) / 2 + np.array([0.25, 0.12])
    pl.fill(cv, P(_segment(hip, knee, 0.15)), RIDER, trousers)
    pl.fill(cv, P(_segment(knee, foot, 0.12)), RIDER, trousers * 0.9)
    pl.fill(cv, P(_segment(hip, sh, 0.34)), RIDER, jacket)
    pl.fill(cv, P(_segment(sh, hand, 0.09)), RIDER, jacket * 0.85)
    pl.fill(cv, P(_circle(head[0], head[1], 0.12, 12)), RIDER,
            _pick(rng, rs["helmet"]) if moto or rng.random() < 0.6 else st["person"]["skin"])


def _draw_tree(cv: _Canvas, cam: _Cam, rng, st: dict, X: float, z: float) -> None:
    """A street tree: trunk and 2-3 irregular crown blobs (all vegetation)."""
    pl = _Plane(cam, X, z)
    th = rng.uniform(2.2, 4.0)
    tw = rng.uniform(0.22, 0.4)
    pl.fill(cv, np.array([[-tw / 2, 0], [tw / 2, 0], [tw / 2 * 0.8, th + 0.5], [-tw / 2 * 0.8, th + 0.5]]), VEG,
            _pick(rng, st["vegetation"]["trunk"]))
    R = rng.uniform(1.4, 3.2)
    base = _pick(rng, st["vegetation"]["colours"], 0.1)
    roundness = float(st["shape"]["tree_round"])
    for k in range(rng.integers(2, 4)):
        cu, cvv = rng.normal(0, R * 0.35), th + R * rng.uniform(0.5, 1.0)
        rr = R * rng.uniform(0.7, 1.0)
        n = 16
        jag = rng.uniform(0.75, 1.15, n) ** (1.6 - roundness)
        blob = _circle(cu, cvv, 1.0, n) - [cu, cvv]
        blob = blob * (rr * jag)[:, None] * [1.0, 1.0 + 0.25 * (1 - roundness)] + [cu, cvv]
        pl.fill(cv, blob, VEG, base * rng.uniform(0.85, 1.1))


def _draw_pole(cv: _Canvas, cam: _Cam, rng, st: dict, pr: dict, X: float, z: float, towards_road: int) -> None:
    """A pole (lamp post or sign post) with an optional traffic sign and/or traffic light."""
    pl = _Plane(cam, X, z)
    pc = _pick(rng, st["pole"]["base"], 0.06)
    u = rng.random()
    has_sign = u < pr["sign"]
    has_light = (not has_sign and u < pr["sign"] + pr["light"]) or (has_sign and rng.random() < 0.15)
    h = rng.uniform(2.8, 3.6) if (has_sign and not has_light and rng.random() < 0.6) else rng.uniform(4.5, 8.0)
    pw = rng.uniform(0.1, 0.16)
    pl.fill(cv, np.array([[-pw / 2, 0], [pw / 2, 0], [pw / 2, h], [-pw / 2, h]]), POLE, pc)
    if h > 4.4 and not has_light:   # street lamp arm towards the road
        pl.line(cv, np.array([[0, h - 0.1], [towards_road * 1.2, h + 0.25], [towards_road * 1.6, h + 0.2]]), POLE,
                pc, 0.1)
    if has_light:
        hy = rng.uniform(2.4, 3.4) if h < 6 else rng.uniform(3.0, 4.5)
        _draw_light(cv, pl, st, towards_road * 0.2, hy, rng)
    if has_sign:
        hy = min(h - 0.4, rng.uniform(2.0, 2.8))
        _draw_sign(cv, pl, st, rng, towards_road * 0.15, hy)


def _draw_light(cv: _Canvas, pl: _Plane, st: dict, cu: float, cvv: float, rng) -> None:
    bw, bh = 0.34, 0.95
    box = np.asarray(st["light"]["box"], np.float32) * rng.uniform(0.9, 1.1)
    pl.fill(cv, np.array([[cu - bw / 2, cvv], [cu + bw / 2, cvv], [cu + bw / 2, cvv + bh], [cu - bw / 2, cvv + bh]]),
            LIGHT, box)
    lit = rng.integers(3)
    lamps = np.asarray(st["light"]["lamps"], np.float32)
    for i in range(3):
        col = lamps[2 - i] if i == lit else box * 0.5 + 20
        pl.fill(cv, _circle(cu, cvv + bh * (0.2 + 0.3 * i), 0.1, 8), LIGHT, col)


def _draw_sign(cv: _Canvas, pl: _Plane, st: dict, rng, cu: float, cvv: float) -> None:
    kind = int(rng.integers(4))
    face = np.asarray(st["sign"]["face"][kind], np.float32) * rng.uniform(0.92, 1.08)
    rim = np.asarray(st["sign"]["rim"][kind], np.float32)
    s = rng.uniform(0.7, 1.0)
    if kind == 0:
        outer, inner = _circle(cu, cvv, s / 2, 14), _circle(cu, cvv, s / 2 * 0.72, 14)
    elif kind == 1:
        a = np.array([[0, 0.58], [-0.5, -0.29], [0.5, -0.29]])
        outer, inner = a * s + [cu, cvv], a * s * 0.62 + [cu, cvv]
    elif kind == 2:
        a = np.array([[0, 0.5], [0.5, 0], [0, -0.5], [-0.5, 0]])
        outer, inner = a * s + [cu, cvv], a * s * 0.75 + [cu, cvv]
    else:
        a = np.array([[-0.6, -0.35], [0.6, -0.35], [0.6, 0.35], [-0.6, 0.35]])
        outer, inner = a * s + [cu, cvv], a * s * 0.82 + [cu, cvv]
    pl.fill(cv, outer, SIGN, rim)
    pl.fill(cv, inner, SIGN, face)


def _draw_static(cv: _Canvas, cam: _Cam, rng, st: dict, X: float, z: float) -> None:
    """Unlabelled street furniture (bins, bollards, boxes): class 255 like Cityscapes 'static'."""
    col = _pick(rng, st["static"]["colours"])
    kind = rng.integers(3)
    w, h = [(0.6, 1.0), (0.18, 0.9), (0.9, 1.3)][kind]
    _draw_box(cv, cam, X - w / 2, X + w / 2, 0.0, h, z, z + w, col, IGNORE_INDEX)


def _place_objects(cam: _Cam, rng, st: dict, pr: dict, lay: _Layout) -> list[tuple[float, int, Callable]]:
    """Sample every object of the scene; returns (depth, order, draw function) to paint far-to-near."""
    objs: list[tuple[float, int, Callable]] = []

    def add(z, fn):
        objs.append((z, len(objs), fn))

    occupied: list[tuple[float, float, float]] = []   # (lane X, z0, z1)

    def free(x, z0, z1):
        return all(abs(x - ox) > 1.0 or z1 + 1.5 < oz0 or z0 > oz1 + 1.5 for ox, oz0, oz1 in occupied)

    def vehicle(draw, x, z0, length, oncoming):
        occupied.append((x, z0, z0 + length))
        add(z0, lambda cv: draw(cv, cam, rng, st, x, z0, oncoming))

    # large vehicles first (a tram on its rails, trucks, buses), then cars
    if lay.tram_x is not None:
        z0 = rng.uniform(9, 45)
        vehicle(_draw_train, lay.tram_x, z0, 36.0, bool(rng.random() < 0.6))
    for kind, draw, length in (("truck", _draw_truck, 9.5), ("bus", _draw_bus, 13.0)):
        if rng.random() < pr[kind]:
            for _ in range(10):
                li = int(rng.integers(len(lay.lanes)))
                x, z0 = lay.lanes[li] + rng.normal(0, 0.15), rng.uniform(8, 45)
                if free(x, z0, z0 + length):
                    vehicle(draw, x, z0, length, lay.oncoming[li])
                    break
    for _ in range(int(rng.poisson(pr["moving"]))):
        for _ in range(10):
            li = int(rng.integers(len(lay.lanes)))
            x = lay.lanes[li] + rng.normal(0, 0.15)
            z0 = rng.uniform(10 if lay.lanes[li] == 0 else 6, 55)
            if free(x, z0, z0 + 4.8):
                vehicle(_draw_car, x, z0, 4.8, lay.oncoming[li])
                break
    for on, x in ((lay.park_l, -lay.RL + 1.1), (lay.park_r, lay.RR - 1.1)):
        if not on:
            continue
        z = rng.uniform(2.5, 8)
        while z < 70:
            if rng.random() < 0.85 and free(x, z, z + 4.8):
                xx = x + rng.normal(0, 0.08)
                vehicle(_draw_car, xx, z, 4.8, bool(rng.random() < 0.3))
            z += 4.8 + rng.exponential(pr["parked_gap"])
    # sidewalk objects: trees, poles, signs, lights, people, parked bikes, furniture
    for sgn, R, S in ((-1, lay.RL, lay.SL), (1, lay.RR, lay.SR)):
        if rng.random() < pr["trees"]:
            z = rng.uniform(3, 12)
            while z < 90:
                xt = sgn * (R + S - rng.uniform(0.5, 1.0))
                add(z, lambda cv, xt=xt, z=z: _draw_tree(cv, cam, rng, st, xt, z))
                z += pr["tree_spacing"] * rng.uniform(0.7, 1.4)
        if rng.random() < pr["poles"]:
            z = rng.uniform(4, 14)
            while z < 90:
                xp = sgn * (R + 0.45)
                add(z, lambda cv, xp=xp, z=z, s=-sgn: _draw_pole(cv, cam, rng, st, pr, xp, z, s))
                z += pr["pole_spacing"] * rng.uniform(0.5, 1.5)
        for _ in range(int(rng.poisson(pr["statics"] / 2))):
            xs, zs = sgn * (R + rng.uniform(0.6, S)), rng.uniform(4, 40)
            add(zs, lambda cv, xs=xs, zs=zs: _draw_static(cv, cam, rng, st, xs, zs))
    if rng.random() < pr["overhead_light"]:
        zl = rng.uniform(12, 35)
        xl = lay.RR + 0.4
        plane = _Plane(cam, xl, zl)
        arm_x = -(lay.RR + 0.4) - rng.uniform(0, 1.5)   # the arm reaches over the road

        def overhead(cv, plane=plane, arm_x=arm_x):
            pc = st["pole"]["base"]
            plane.fill(cv, np.array([[-0.1, 0], [0.1, 0], [0.1, 6.0], [-0.1, 6.0]]), POLE, pc)
            plane.line(cv, np.array([[0, 5.8], [arm_x, 5.8]]), POLE, pc, 0.12)
            _draw_light(cv, plane, st, arm_x * 0.5, 4.7, rng)
            _draw_light(cv, plane, st, arm_x * 0.9, 4.7, rng)
        add(zl, overhead)
    # pedestrians, in small groups, on the sidewalks (and on the crosswalk)
    n_groups = int(rng.poisson(pr["persons"]))
    for _ in range(n_groups):
        sgn = -1 if rng.random() < 0.5 else 1
        R, S = (lay.RL, lay.SL) if sgn < 0 else (lay.RR, lay.SR)
        zc = 4 + 36 * rng.random() ** 1.3
        on_cw = lay.crosswalk is not None and rng.random() < 0.3
        for _ in range(1 + int(rng.poisson(0.7))):
            if on_cw:
                xp, zp = rng.uniform(-lay.RL, lay.RR), rng.uniform(*lay.crosswalk)
            else:
                xp, zp = sgn * (R + rng.uniform(0.3, max(0.4, S - 0.3))), zc + rng.normal(0, 1.2)
            zp = max(zp, 3.5)
            add(zp, lambda cv, xp=xp, zp=zp: _draw_person(cv, cam, rng, st, xp, zp))
    # riders on the road edge or in lanes, seen at an angle
    for _ in range(int(rng.poisson(pr["riders"]))):
        moto = bool(rng.random() < pr["moto_frac"])
        xr = rng.choice([lay.RR - 0.9, rng.uniform(-1.0, 1.0), -lay.RL + 1.0])
        zr = rng.uniform(5, 28)
        th = rng.uniform(0.45, np.pi / 2)
        add(zr, lambda cv, xr=xr, zr=zr, th=th, moto=moto: _draw_bike(cv, cam, rng, st, xr, zr, th, moto, True))
    # parked bicycles / motorcycles on the sidewalk, in small racks
    for key, moto in (("parked_bikes", False), ("parked_motos", True)):
        for _ in range(int(rng.poisson(pr[key]))):
            sgn = -1 if rng.random() < 0.5 else 1
            R, S = (lay.RL, lay.SL) if sgn < 0 else (lay.RR, lay.SR)
            z0 = rng.uniform(4, 30)
            xb = sgn * (R + S - rng.uniform(0.6, 1.0))
            for k in range(1 + int(rng.poisson(1.0))):
                zb = z0 + 0.7 * k
                th = np.pi / 2 + rng.normal(0, 0.25)
                add(zb, lambda cv, xb=xb, zb=zb, th=th, moto=moto: _draw_bike(cv, cam, rng, st, xb, zb, th, moto,
                                                                             False))
    return objs


# ============================================================================================ render
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
    mean = float((img.reshape(-1, 3).mean(0) * gain).mean())     # saturation keeps the grey mean
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


def render_scene(rng: np.random.Generator, domain: str, size: tuple[int, int] = (128, 256), shift: float = 1.0,
                 profile: str = "cityscapes") -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene of ``domain`` ('source' or 'target').

    Returns ``(image uint8 HxWx3 RGB, label uint8 HxW of trainIds, 255 = unlabelled)``. All randomness
    comes from ``rng``, so a fixed generator state gives identical arrays.
    """
    H, W = int(size[0]), int(size[1])
    st = domain_style(domain, shift)
    pr = domain_priors(domain, shift, profile)
    yy, xx = _grids(H, W)
    camst = st["camera"]
    cam = _Cam(H, W, f=float(camst["f"]) * W * rng.uniform(0.95, 1.05), h=float(camst["cam_h"]) * rng.uniform(0.95, 1.05),
               vx=W * (0.5 + rng.uniform(-1, 1) * float(camst["vx"])), yh=H * rng.uniform(*camst["horizon"]))
    fields = _fields(rng, H, W, yy, xx)
    cv = _Canvas(H, W)
    lay = _make_layout(rng, pr)
    _background(cv, cam, rng, st, pr, lay, fields, yy, xx)
    objs = _place_objects(cam, rng, st, pr, lay)
    for z, _, draw in sorted(objs, key=lambda o: (-o[0], o[1])):
        draw(cv)
    if rng.random() < float(st["hood"]):
        _hood(cv, cam, rng, yy, xx)
    # per-class textures (the same label-driven fields, with domain-specific amplitudes)
    tex = st["texture_table"][np.minimum(cv.lab, NUM_CLASSES)]          # H x W x 5
    delta = sum(tex[..., i] * fields[name] for i, name in enumerate(_TEXTURE_FIELDS))
    img = cv.img + delta[..., None]
    img = _photometric(img, rng, st["sensor"], yy, xx)
    return img, cv.lab


def image_rng(seed: int, domain_key: str, index: int) -> np.random.Generator:
    """The generator of one image, derived from ``(seed, domain, index)`` only (worker-independent).
    ``domain_key`` is 'source', 'target_train' or 'target_val'."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _DOMAIN_CODES[domain_key], int(index)]))


# ============================================================================================== disk
def _gta_palette() -> list[int]:
    """256-entry palette of the GTA5 label PNGs: Cityscapes colours indexed by labelId."""
    pal = np.zeros((256, 3), np.uint8)
    for c in range(NUM_CLASSES):
        pal[TRAINID_TO_LABELID_LUT[c]] = PALETTE[c]
    return pal.reshape(-1).tolist()


_GTA_PALETTE = _gta_palette()


def _target_stem(split: str, index: int) -> tuple[str, str]:
    cities = TARGET_CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def _relpaths(domain_key: str, index: int) -> tuple[str, str]:
    if domain_key == "source":
        return f"source/images/{index:05d}.png", f"source/labels/{index:05d}.png"
    split = domain_key.split("_", 1)[1]
    city, stem = _target_stem(split, index)
    return (f"target/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
            f"target/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")


def _render_job(job: tuple) -> tuple[str, int, np.ndarray]:
    out, domain_key, index, seed, size, shift, profile = job
    domain = "source" if domain_key == "source" else "target"
    img, lab = render_scene(image_rng(seed, domain_key, index), domain, size, shift, profile)
    ip, lp = _relpaths(domain_key, index)
    ids = TRAINID_TO_LABELID_LUT[lab]
    Image.fromarray(img).save(os.path.join(out, ip), compress_level=1)
    if domain == "source":
        im = Image.fromarray(ids)
        im.putpalette(_GTA_PALETTE)
        im.save(os.path.join(out, lp))
    else:
        Image.fromarray(ids).save(os.path.join(out, lp))
    counts = np.bincount(np.minimum(lab, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
    return domain_key, index, counts


def _params(size, n_source, n_target_train, n_target_val, seed, shift, profile) -> dict:
    return {"size": [int(size[0]), int(size[1])], "n_source": int(n_source), "n_target_train": int(n_target_train),
            "n_target_val": int(n_target_val), "seed": int(seed), "shift": float(shift),
            "profile": _canonical_profile(profile), "version": GENERATOR_VERSION}


def load_streets_meta(out: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a generated folder, or None."""
    p = Path(out) / "meta.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def streets_exists(out: str | os.PathLike, size=(128, 256), n_source: int = 600, n_target_train: int = 300,
                   n_target_val: int = 100, seed: int = 0, shift: float = 1.0, profile: str = "cityscapes",
                   **_ignored) -> bool:
    """Whether ``out`` holds a *complete* benchmark generated with exactly these parameters
    (meta.json says so and the expected number of image and label files is present)."""
    meta = load_streets_meta(out)
    if meta is None or not meta.get("complete"):
        return False
    if meta.get("params") != _params(size, n_source, n_target_train, n_target_val, seed, shift, profile):
        return False
    out = Path(out)

    def n_png(d: Path) -> int:
        return sum(1 for _ in d.rglob("*.png")) if d.is_dir() else 0

    return (n_png(out / "source" / "images") == n_source and n_png(out / "source" / "labels") == n_source
            and n_png(out / "target" / "leftImg8bit" / "train") == n_target_train
            and n_png(out / "target" / "gtFine" / "train") == n_target_train
            and n_png(out / "target" / "leftImg8bit" / "val") == n_target_val
            and n_png(out / "target" / "gtFine" / "val") == n_target_val)


def _sample_page(out: Path, domain_key: str, n: int, path: Path) -> None:
    """Tile ``n`` images of a domain with their colourised labels (image | label per row)."""
    rows = []
    for i in range(n):
        ip, lp = _relpaths(domain_key, i)
        img = np.asarray(Image.open(out / ip).convert("RGB"))
        lab = CITYSCAPES_LUT[np.asarray(Image.open(out / lp))]
        sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([img, sep, colorize(lab)], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if rows:
        Image.fromarray(np.concatenate(rows[:-1], 0)).save(path)


def generate_streets(out: str | os.PathLike, size: tuple[int, int] = (128, 256), n_source: int = 600,
                     n_target_train: int = 300, n_target_val: int = 100, seed: int = 0, shift: float = 1.0,
                     profile: str = "cityscapes", progress: bool = True, workers: int = 2) -> dict:
    """Write the two-domain benchmark under ``out`` and return its summary.

    Layout: ``source/{images,labels}`` (GTA5 format) and ``target/{leftImg8bit,gtFine}/{train,val}``
    (Cityscapes format), ``samples_source.png`` / ``samples_target.png`` (4 images with their
    colourised labels) and ``meta.json`` (params + summary; written last, so a folder is reused by
    :func:`streets_exists` only when complete). If ``out`` already holds a complete benchmark with the
    same parameters, nothing is regenerated. Output is byte-identical for a seed, whatever ``workers``.

    The summary holds ``class_frequencies`` ({domain: {class: fraction of labelled pixels}}),
    ``class_presence`` ({domain: {class: fraction of images containing it}}), ``ignore_fraction``,
    ``params``, ``paths`` (relative to ``out``) and, in the returned dict only, ``root`` (``out``),
    ``reused`` and ``seconds``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    params = _params(size, n_source, n_target_train, n_target_val, seed, shift, profile)
    if streets_exists(out, **{k: v for k, v in params.items() if k != "version"}):
        meta = load_streets_meta(out)
        return {**meta["summary"], "root": str(out), "reused": True, "seconds": time.perf_counter() - t0}
    old = load_streets_meta(out)
    for sub in ("source", "target"):
        d = out / sub
        if d.exists() and any(d.iterdir()):
            if old is None:
                raise FileExistsError(f"{d} exists and is not a streets benchmark (no meta.json); "
                                      f"remove it or choose another --out")
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps({"generator": GENERATOR, "complete": False, "params": params},
                                              indent=1, sort_keys=True))
    counts = {"source": n_source, "target_train": n_target_train, "target_val": n_target_val}
    jobs = []
    for key, n in counts.items():
        for i in range(n):
            for p in _relpaths(key, i):
                (out / p).parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(out), key, i, params["seed"], tuple(params["size"]), params["shift"], params["profile"]))
    totals = {k: np.zeros(NUM_CLASSES + 1, np.int64) for k in counts}
    present = {k: np.zeros(NUM_CLASSES, np.int64) for k in counts}

    def consume(results):
        for key, _, c in results:
            totals[key] += c
            present[key] += c[:NUM_CLASSES] > 0

    workers = max(1, min(int(workers), os.cpu_count() or 1, max(1, len(jobs))))
    chunk = max(1, min(16, len(jobs) // (4 * workers) or 1))
    if workers > 1 and len(jobs) > 8:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            consume(_progress(pool.imap_unordered(_render_job, jobs, chunksize=chunk), len(jobs), progress))
    else:
        consume(_progress(map(_render_job, jobs), len(jobs), progress))
    _sample_page(out, "source", min(4, n_source), out / "samples_source.png")
    _sample_page(out, "target_train", min(4, n_target_train) or 0, out / "samples_target.png")

    freqs, presence, ignore = {}, {}, {}
    for key in counts:
        c = totals[key]
        lab_px = max(1, int(c[:NUM_CLASSES].sum()))
        freqs[key] = {name: round(float(c[i]) / lab_px, 6) for i, name in enumerate(CLASS_NAMES)}
        presence[key] = {name: round(float(present[key][i]) / max(1, counts[key]), 4)
                         for i, name in enumerate(CLASS_NAMES)}
        ignore[key] = round(float(c[NUM_CLASSES]) / max(1, int(c.sum())), 6)
    summary = {
        "params": params,
        # relative to the folder, so meta.json does not depend on where the folder lives
        "paths": {"source": "source", "target": "target", "samples": ["samples_source.png", "samples_target.png"]},
        "num_images": counts,
        "class_frequencies": freqs,
        "class_presence": presence,
        "ignore_fraction": ignore,
        "target_cities": {k: list(v) for k, v in TARGET_CITIES.items()},
    }
    (out / "meta.json").write_text(json.dumps({"generator": GENERATOR, "complete": True, "params": params,
                                               "summary": summary}, indent=1, sort_keys=True))
    return {**summary, "root": str(out), "reused": False, "seconds": time.perf_counter() - t0}


def _progress(it, total: int, enabled: bool):
    if not enabled:
        yield from it
        return
    try:
        from rich.progress import track
    except ImportError:  # pragma: no cover
        yield from it
        return
    yield from track(it, total=total, description="rendering streets")

