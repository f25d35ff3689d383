"""Appearance tables and class priors of the two domains of the street benchmark.

Every colour is RGB in 0..255 before the global photometric pipeline. Source and target tables have
identical structure so that ``shift`` can interpolate them leaf by leaf.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from balda.data.labels import CLASS_NAMES, NUM_CLASSES

#: The benchmark's domain shift, calibrated from source-only and oracle runs (source-only reaches
#: 0.56 of the oracle; README "Calibration").
DEFAULT_SHIFT = 0.65

# Class ids (trainIds) by name, for readability.
(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    LIGHT,
    SIGN,
    VEG,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTO,
    BIKE,
) = range(NUM_CLASSES)

# identical structure so that ``shift`` can interpolate them leaf by leaf.

_TEXTURE_FIELDS = ("fine", "mid", "blob", "hstripe", "vstripe")

_TARGET_STYLE: dict[str, Any] = {
    "camera": {"f": 0.80, "cam_h": 1.35, "horizon": [0.37, 0.43], "vx": 0.08},
    "sky": {"top": [150, 165, 185], "horizon": [200, 206, 212]},
    "road": {"base": [92, 91, 96], "mark": [196, 196, 190], "centre": [196, 196, 190], "rail": [132, 126, 120]},
    "sidewalk": {"base": [150, 139, 143], "curb": [176, 174, 170], "tiles": 14.0},
    "terrain": {"base": [118, 128, 70]},
    "building": {
        "colours": [[166, 156, 136], [124, 120, 118], [150, 100, 86], [186, 180, 164]],
        "window": [52, 60, 70],
        "shop": [72, 82, 88],
        "window_w": 0.45,
    },
    "wall": {"base": [150, 146, 138]},
    "fence": {"base": [92, 100, 94]},
    "vegetation": {"colours": [[64, 92, 40], [52, 80, 34], [78, 98, 46], [58, 86, 44]], "trunk": [72, 60, 48]},
    "pole": {"base": [82, 86, 86]},
    "light": {"box": [40, 42, 38], "lamps": [[235, 45, 35], [240, 170, 25], [40, 220, 95]]},
    # four sign types: round (face, rim), triangle, diamond, rectangle
    "sign": {
        "face": [[38, 78, 165], [232, 232, 228], [230, 196, 44], [40, 84, 170]],
        "rim": [[236, 236, 236], [205, 38, 38], [40, 40, 40], [236, 236, 236]],
    },
    "person": {
        "top": [[52, 52, 62], [92, 42, 44], [42, 62, 92], [120, 112, 100]],
        "bottom": [[40, 40, 52], [62, 62, 72], [32, 38, 64], [82, 72, 62]],
        "skin": [188, 150, 126],
        "hair": [46, 36, 30],
        "height": [1.6, 1.85],
        "shoulder": 0.27,
    },
    "rider": {
        "top": [[140, 32, 36], [32, 32, 38], [150, 112, 34], [40, 82, 52]],
        "helmet": [[222, 222, 222], [30, 30, 30], [200, 60, 40], [40, 60, 130]],
    },
    "car": {
        "colours": [[150, 150, 156], [46, 46, 52], [208, 208, 208], [40, 56, 92], [112, 32, 36], [92, 96, 90]],
        "glass": [40, 48, 58],
        "body_top": 0.92,
        "cabin_top": 1.42,
        "taper": 0.22,
    },
    "truck": {
        "cargo": [[220, 220, 214], [200, 204, 206], [150, 152, 150]],
        "cab": [[40, 70, 140], [210, 210, 210], [30, 90, 60]],
        "height": 3.4,
    },
    "bus": {"colours": [[214, 182, 52], [222, 196, 70], [200, 160, 40]], "glass": [36, 40, 50]},
    "train": {"colours": [[196, 40, 46], [210, 54, 48]], "stripe": [232, 232, 226], "glass": [34, 40, 50]},
    "motorcycle": {"colours": [[30, 30, 34], [60, 60, 66], [40, 40, 80]], "chrome": [150, 150, 150]},
    "bicycle": {"colours": [[28, 28, 32], [40, 40, 46], [70, 70, 74]]},
    "static": {"colours": [[62, 92, 62], [110, 100, 90], [70, 70, 74]]},
    # amplitudes (grey levels) of the texture fields per class (19 classes + unlabelled)
    "texture": {
        "road": [5, 3, 6, 0, 0],
        "sidewalk": [4, 3, 4, 0, 0],
        "building": [4, 3, 8, 0, 0],
        "wall": [3, 2, 6, 7, 0],
        "fence": [4, 0, 0, 0, 0],
        "pole": [2, 0, 0, 0, 0],
        "traffic light": [2, 0, 0, 0, 0],
        "traffic sign": [2, 0, 0, 0, 0],
        "vegetation": [6, 20, 8, 0, 0],
        "terrain": [9, 8, 7, 0, 0],
        "sky": [0, 0, 12, 0, 0],
        "person": [3, 0, 0, 0, 0],
        "rider": [3, 0, 0, 0, 0],
        "car": [2, 0, 2, 0, 0],
        "truck": [2, 0, 2, 0, 6],
        "bus": [2, 0, 2, 0, 0],
        "train": [2, 0, 2, 0, 0],
        "motorcycle": [3, 0, 0, 0, 0],
        "bicycle": [3, 0, 0, 0, 0],
        "unlabelled": [3, 0, 4, 0, 0],
    },
    "sensor": {
        "brightness": [0.86, 1.04],
        "cast": [0.93, 1.0, 1.0],
        "saturation": 0.72,
        "contrast": 0.9,
        "gamma": 1.05,
        "blur": 0.75,
        "noise": 4.0,
        "vignette": 0.3,
        "sun": 0.15,
    },
    "shape": {"person_slim": 1.0, "car_box": 0.0, "tree_round": 1.0},
    "hood": 1.0,
    # within-class variation from image to image, the same in both domains (see vary_style)
    "variety": {"brightness": 0.25, "tint": 0.4, "texture": 0.5},
}

_SOURCE_STYLE: dict[str, Any] = {
    "camera": {"f": 0.72, "cam_h": 1.6, "horizon": [0.34, 0.42], "vx": 0.12},
    "sky": {"top": [70, 128, 222], "horizon": [172, 202, 236]},
    "road": {"base": [70, 70, 78], "mark": [232, 232, 232], "centre": [232, 192, 40], "rail": [150, 150, 160]},
    "sidewalk": {"base": [192, 186, 170], "curb": [140, 136, 130], "tiles": 0.0},
    "terrain": {"base": [150, 146, 72]},
    "building": {
        "colours": [[204, 172, 122], [184, 110, 80], [86, 140, 162], [226, 216, 190]],
        "window": [44, 74, 108],
        "shop": [60, 96, 120],
        "window_w": 0.6,
    },
    "wall": {"base": [196, 184, 160]},
    "fence": {"base": [146, 112, 76]},
    "vegetation": {"colours": [[78, 132, 40], [62, 116, 36], [98, 140, 46], [70, 124, 52]], "trunk": [96, 72, 50]},
    "pole": {"base": [118, 118, 124]},
    "light": {"box": [206, 172, 40], "lamps": [[255, 30, 20], [255, 190, 10], [30, 255, 120]]},
    "sign": {
        "face": [[40, 132, 64], [236, 236, 236], [226, 226, 226], [200, 30, 30]],
        "rim": [[236, 236, 236], [30, 30, 30], [200, 30, 30], [236, 236, 236]],
    },
    "person": {
        "top": [[206, 60, 60], [60, 100, 206], [232, 232, 232], [70, 164, 92]],
        "bottom": [[50, 70, 140], [200, 190, 150], [30, 30, 34], [120, 90, 60]],
        "skin": [200, 150, 110],
        "hair": [60, 40, 24],
        "height": [1.72, 1.95],
        "shoulder": 0.23,
    },
    "rider": {
        "top": [[236, 150, 30], [30, 150, 210], [236, 236, 70], [150, 40, 160]],
        "helmet": [[236, 236, 70], [236, 120, 30], [30, 30, 30], [236, 236, 236]],
    },
    "car": {
        "colours": [[206, 30, 30], [30, 62, 196], [234, 234, 234], [22, 22, 22], [232, 200, 40], [142, 142, 148]],
        "glass": [30, 40, 64],
        "body_top": 1.0,
        "cabin_top": 1.55,
        "taper": 0.06,
    },
    # hue swap: source trucks are yellow/orange like target buses; source buses are green like nothing
    "truck": {
        "cargo": [[232, 176, 36], [236, 200, 60], [220, 150, 30]],
        "cab": [[200, 30, 30], [236, 236, 236], [30, 30, 30]],
        "height": 3.8,
    },
    "bus": {"colours": [[40, 120, 70], [236, 236, 236], [50, 140, 90]], "glass": [30, 40, 70]},
    "train": {"colours": [[140, 148, 160], [120, 126, 136]], "stripe": [30, 60, 160], "glass": [30, 40, 70]},
    "motorcycle": {"colours": [[210, 40, 40], [236, 140, 20], [40, 90, 210]], "chrome": [200, 200, 206]},
    "bicycle": {"colours": [[40, 96, 196], [210, 60, 40], [40, 170, 90]]},
    "static": {"colours": [[40, 80, 160], [150, 120, 80], [90, 90, 96]]},
    "texture": {
        "road": [3, 0, 7, 0, 0],
        "sidewalk": [2, 0, 3, 4, 0],
        "building": [2, 0, 4, 6, 0],
        "wall": [2, 0, 10, 0, 0],
        "fence": [2, 0, 0, 0, 8],
        "pole": [0, 0, 0, 0, 0],
        "traffic light": [0, 0, 0, 0, 0],
        "traffic sign": [0, 0, 0, 0, 0],
        "vegetation": [14, 8, 16, 0, 0],
        "terrain": [14, 0, 14, 0, 0],
        "sky": [0, 0, 5, 0, 0],
        "person": [0, 0, 0, 0, 0],
        "rider": [0, 0, 0, 0, 0],
        "car": [0, 0, 0, 0, 0],
        "truck": [0, 0, 0, 6, 0],
        "bus": [0, 0, 0, 0, 0],
        "train": [0, 0, 0, 0, 0],
        "motorcycle": [0, 0, 0, 0, 0],
        "bicycle": [0, 0, 0, 0, 0],
        "unlabelled": [2, 0, 2, 0, 0],
    },
    "sensor": {
        "brightness": [0.82, 1.22],
        "cast": [1.07, 1.0, 0.88],
        "saturation": 1.22,
        "contrast": 1.12,
        "gamma": 0.95,
        "blur": 0.0,
        "noise": 1.0,
        "vignette": 0.0,
        "sun": 1.0,
    },
    "shape": {"person_slim": 0.0, "car_box": 1.0, "tree_round": 0.0},
    "hood": 0.0,
    "variety": {"brightness": 0.25, "tint": 0.4, "texture": 0.5},
}

#: How far each part of the source style departs from the target's at ``shift = 1`` (a fraction of the
#: difference of the two tables), per appearance gap.
#:
#: ``nuisance`` (the default profiles): the gap of synthetic-to-real data, which unsupervised methods
#: can bridge: camera, sensor (tone, saturation, contrast, blur, noise, vignetting), illumination
#: (sun and shadows against overcast light), textures and object proportions shift fully, materials
#: (the stuff palettes, clothing, car paint) shift half-way, and the palettes that would make one
#: class look like another in the other domain (traffic-light housings, sign colours, trucks vs
#: buses, trams, two-wheelers, riders) do not shift at all.
#:
#: ``hard`` (the ``hard`` profile, the benchmark of generator version 1): those palettes shift fully
#: too, so source trucks are coloured like target buses and light housings change colour - a shift
#: no unsupervised method can bridge from appearance alone.
_GAP_WEIGHTS: dict[str, dict[str, float]] = {
    "nuisance": {
        "camera": 1.0,
        "sky": 0.5,
        "road": 0.5,
        "sidewalk": 0.5,
        "terrain": 0.5,
        "building": 0.5,
        "wall": 0.5,
        "fence": 0.5,
        "vegetation": 0.5,
        "pole": 0.5,
        "light": 0.0,
        "sign": 0.0,
        "person": 0.5,
        "rider": 0.0,
        "car": 0.5,
        "truck": 0.0,
        "bus": 0.0,
        "train": 0.0,
        "motorcycle": 0.0,
        "bicycle": 0.0,
        "static": 0.5,
        "texture": 1.0,
        "sensor": 1.0,
        "shape": 1.0,
        "hood": 1.0,
        "variety": 0.0,
    },
    "hard": {
        "camera": 1.0,
        "sky": 0.5,
        "road": 0.5,
        "sidewalk": 0.6,
        "terrain": 0.6,
        "building": 0.5,
        "wall": 0.8,
        "fence": 0.8,
        "vegetation": 0.5,
        "pole": 0.8,
        "light": 1.0,
        "sign": 1.0,
        "person": 0.6,
        "rider": 1.0,
        "car": 0.6,
        "truck": 1.0,
        "bus": 1.0,
        "train": 1.0,
        "motorcycle": 1.0,
        "bicycle": 1.0,
        "static": 1.0,
        "texture": 0.7,
        "sensor": 0.5,
        "shape": 1.0,
        "hood": 1.0,
        "variety": 0.0,
    },
}

#: Style keys whose colour leaves (arrays with a last axis of 3, in 0..255) vary from image to image
#: (:func:`vary_style`). Light lamps keep their signal colours.
COLOUR_KEYS = (
    "sky",
    "road",
    "sidewalk",
    "terrain",
    "building",
    "wall",
    "fence",
    "vegetation",
    "pole",
    "light",
    "sign",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "static",
)
_FIXED_COLOURS = {("light", "lamps")}


def vary_style(st: dict, rng: np.random.Generator) -> dict:
    """The style of one image: every class's colours tinted and scaled, its textures rescaled.

    For each key ``k`` of :data:`COLOUR_KEYS` one draw per image: brightness ``b ~ U[1-v_b, 1+v_b]``,
    tint weight ``w ~ U[0, v_t]`` and a muted tint colour ``r = g + d`` (grey level ``g ~ U[40, 210]``,
    chroma ``d ~ U[-50, 50]^3``); every colour ``c`` of ``k`` becomes ``(1 - w) b c + w r``.
    Each class's texture amplitudes are scaled by ``U[1-v_x, 1+v_x]``.
    ``v_b, v_t, v_x`` = the style's ``variety`` (``brightness``, ``tint``, ``texture``), equal in both
    domains. So a class's colour changes from image to image (as materials, paint and clothes do in
    real cities) and colour alone no longer identifies a class within a domain: a network has to use
    shape and context, which is what transfers across domains."""
    var = st["variety"]
    vb, vt, vx = float(var["brightness"]), float(var["tint"]), float(var["texture"])
    out = dict(st)
    for key in COLOUR_KEYS:
        b = rng.uniform(1 - vb, 1 + vb)
        w = rng.uniform(0, vt)
        r = (rng.uniform(40, 210) + rng.uniform(-50, 50, 3)).astype(np.float32)
        out[key] = {
            leaf: (
                v
                if (key, leaf) in _FIXED_COLOURS or v.shape[-1:] != (3,) or v.max() <= 2
                else ((1 - w) * b * v + w * r).astype(np.float32)
            )
            for leaf, v in st[key].items()
        }
    n = st["texture_table"].shape[0]
    out["texture_table"] = (st["texture_table"] * rng.uniform(1 - vx, 1 + vx, (n, 1))).astype(np.float32)
    return out


# ============================================================================================ priors
# Scene-composition parameters that set the class priors. ``source`` differs from ``target`` by the
# label shift (more cars and trucks, fewer pedestrians and bicycles); ``shift`` interpolates.
_PRIORS: dict[str, dict[str, dict[str, float]]] = {
    "cityscapes": {
        "target": {
            "parking": 0.55,
            "parked_gap": 4.0,
            "moving": 1.3,
            "truck": 0.08,
            "bus": 0.11,
            "train": 0.08,
            "persons": 4.5,
            "riders": 1.0,
            "moto_frac": 0.35,
            "parked_bikes": 1.3,
            "parked_motos": 0.3,
            "trees": 0.55,
            "tree_spacing": 11.0,
            "veg_block": 0.32,
            "poles": 1.0,
            "pole_spacing": 26.0,
            "sign": 0.55,
            "light": 0.22,
            "overhead_light": 0.12,
            "wall": 0.11,
            "fence": 0.15,
            "terrain": 0.6,
            "statics": 1.2,
            "crosswalk": 0.25,
        },
        "source": {
            "parking": 0.7,
            "parked_gap": 2.4,
            "moving": 2.0,
            "truck": 0.22,
            "bus": 0.09,
            "train": 0.08,
            "persons": 3.0,
            "riders": 0.7,
            "moto_frac": 0.45,
            "parked_bikes": 0.4,
            "parked_motos": 0.3,
            "trees": 0.55,
            "tree_spacing": 11.0,
            "veg_block": 0.32,
            "poles": 1.0,
            "pole_spacing": 22.0,
            "sign": 0.55,
            "light": 0.22,
            "overhead_light": 0.12,
            "wall": 0.11,
            "fence": 0.15,
            "terrain": 0.6,
            "statics": 1.2,
            "crosswalk": 0.2,
        },
    },
    # lighter tail (for ablations): rare things far more often, fewer parked cars
    "balanced": {
        "target": {
            "parking": 0.35,
            "parked_gap": 5.0,
            "moving": 1.2,
            "truck": 0.35,
            "bus": 0.3,
            "train": 0.25,
            "persons": 5.0,
            "riders": 1.8,
            "moto_frac": 0.45,
            "parked_bikes": 2.0,
            "parked_motos": 0.8,
            "trees": 0.6,
            "tree_spacing": 11.0,
            "veg_block": 0.32,
            "poles": 1.0,
            "pole_spacing": 10.0,
            "sign": 0.8,
            "light": 0.55,
            "overhead_light": 0.4,
            "wall": 0.2,
            "fence": 0.22,
            "terrain": 0.6,
            "statics": 1.2,
            "crosswalk": 0.3,
        },
        "source": {
            "parking": 0.45,
            "parked_gap": 4.0,
            "moving": 1.6,
            "truck": 0.45,
            "bus": 0.28,
            "train": 0.22,
            "persons": 3.6,
            "riders": 1.6,
            "moto_frac": 0.55,
            "parked_bikes": 1.2,
            "parked_motos": 0.9,
            "trees": 0.6,
            "tree_spacing": 11.0,
            "veg_block": 0.32,
            "poles": 1.0,
            "pole_spacing": 10.0,
            "sign": 0.8,
            "light": 0.55,
            "overhead_light": 0.4,
            "wall": 0.2,
            "fence": 0.22,
            "terrain": 0.6,
            "statics": 1.2,
            "crosswalk": 0.25,
        },
    },
}
_PROFILE_ALIASES = {"uniform-ish": "balanced", "uniform": "balanced"}
#: Profiles: name -> (class priors of :data:`_PRIORS`, appearance gap of :data:`_GAP_WEIGHTS`).
_PROFILE_PARTS: dict[str, tuple[str, str]] = {
    "cityscapes": ("cityscapes", "nuisance"),  # the default: Cityscapes-like long tail, nuisance gap
    "balanced": ("balanced", "nuisance"),  # a lighter tail, for ablations
    "hard": ("cityscapes", "hard"),  # class-swapping palettes on top (generator version 1)
}
#: Available profiles.
PROFILES = tuple(_PROFILE_PARTS)


def _canonical_profile(profile: str) -> str:
    p = _PROFILE_ALIASES.get(profile, profile)
    if p not in _PROFILE_PARTS:
        raise ValueError(
            f"unknown streets profile {profile!r}; expected one of "
            f"{sorted(set(_PROFILE_PARTS) | set(_PROFILE_ALIASES))}"
        )
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


def domain_style(domain: str, shift: float = 1.0, profile: str = "cityscapes") -> dict:
    """Appearance parameters of a domain: the target's, or the source's interpolated by ``shift``
    times the per-part weight of the profile's appearance gap (:data:`_GAP_WEIGHTS`). Cached; the
    arrays are read-only. Each image then varies them (:func:`vary_style`)."""
    t = float(shift) if _check_domain(domain) == "source" else 0.0
    return _style_cached(t, _PROFILE_PARTS[_canonical_profile(profile)][1] if t else "nuisance")


@functools.lru_cache(maxsize=16)
def _style_cached(t: float, gap: str) -> dict:
    weights = _GAP_WEIGHTS[gap]
    st = {k: _lerp_tree(_TARGET_STYLE[k], _SOURCE_STYLE[k], t * weights[k]) for k in _TARGET_STYLE}
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
    p = _PRIORS[_PROFILE_PARTS[_canonical_profile(profile)][0]]
    t = float(shift) if _check_domain(domain) == "source" else 0.0
    return {k: max(0.0, float(p["target"][k] + t * (p["source"][k] - p["target"][k]))) for k in p["target"]}
