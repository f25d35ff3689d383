"""Drawing primitives of the street benchmark: the pin-hole camera, the paired image/label canvas,
vertical planes, polygons, colour picking and noise fields."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from balda.data.labels import IGNORE_INDEX


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
    """An RGB float image and a trainId label map painted together (painter's algorithm).

    With ``with_objects``, an int32 object map ``obj`` is painted with them: every ``fill`` /
    ``line`` writes ``current`` (the number of the object being drawn, 0 for the background) into
    the pixels it labels, so ``obj`` holds the object that painted each pixel last
    (:mod:`~balda.data.streets.instances`). The object map never changes the image or the labels.
    """

    def __init__(self, H: int, W: int, with_objects: bool = False):
        self.img = np.zeros((H, W, 3), np.float32)
        self.lab = np.full((H, W), IGNORE_INDEX, np.uint8)
        self.obj = np.zeros((H, W), np.int32) if with_objects else None
        self.current = 0

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
        if self.obj is not None:
            cv2.fillPoly(self.obj, p, int(self.current), cv2.LINE_8, 4)

    def line(self, pts: np.ndarray, cls: int, colour, thick: float, closed: bool = False) -> None:
        p = self._pts(pts)
        t = int(max(1, round(thick)))
        cv2.polylines(self.img, p, closed, self._colour(colour), t, cv2.LINE_8, 4)
        cv2.polylines(self.lab, p, closed, int(cls), t, cv2.LINE_8, 4)
        if self.obj is not None:
            cv2.polylines(self.obj, p, closed, int(self.current), t, cv2.LINE_8, 4)

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


def _pick(rng: np.random.Generator, colours: np.ndarray, jitter: float = 0.12) -> np.ndarray:
    """One colour of a palette, with a per-instance brightness and per-channel jitter."""
    c = np.asarray(colours, np.float32)
    c = c[rng.integers(len(c))] if c.ndim == 2 else c
    return c * rng.uniform(1 - jitter, 1 + jitter) + rng.normal(0, 8, 3).astype(np.float32)


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
    big = cv2.resize(small, (W + 2 * cell, H + 2 * cell), interpolation=cv2.INTER_CUBIC)[
        cell : cell + H, cell : cell + W
    ]
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
