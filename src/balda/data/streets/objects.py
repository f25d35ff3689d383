"""Objects of the street benchmark: vehicles, people, riders, two-wheelers, trees, poles with signs
and lights, unlabelled street furniture, and their placement in a scene."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from balda.data.labels import IGNORE_INDEX

from .background import _Layout
from .geometry import _Cam, _Canvas, _circle, _pick, _Plane, _segment
from .style import BIKE, BUS, CAR, LIGHT, MOTO, PERSON, POLE, RIDER, SIGN, TRAIN, TRUCK, VEG


def _draw_box(cv: _Canvas, cam: _Cam, x0, x1, y0, y1, z0, z1, colour, cls: int, back_colour=None) -> None:
    """An axis-aligned 3-D box: its visible faces (near face, one side, top) with simple shading."""
    colour = np.asarray(colour, np.float32)
    if y1 < cam.h:
        cv.fill(cam.project(np.array([[x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]])), cls, colour * 1.08)
    if x0 > 0:
        cv.fill(cam.project(np.array([[x0, y0, z0], [x0, y0, z1], [x0, y1, z1], [x0, y1, z0]])), cls, colour * 0.8)
    elif x1 < 0:
        cv.fill(cam.project(np.array([[x1, y0, z0], [x1, y0, z1], [x1, y1, z1], [x1, y1, z0]])), cls, colour * 0.8)
    cv.fill(
        cam.project(np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0]])),
        cls,
        colour if back_colour is None else back_colour,
    )


def _side_x(x0: float, x1: float) -> float | None:
    """X of the box side facing the camera, or None when the camera is between the sides."""
    return x0 if x0 > 0 else (x1 if x1 < 0 else None)


def _wheels_side(cv: _Canvas, cam: _Cam, xs: float, zs: list[float], r: float, cls: int, tyre, hub) -> None:
    for zc in zs:
        pl = _Plane(cam, xs, zc, 0.0)
        pl.fill(cv, _circle(0, r, r, 12), cls, tyre)
        pl.fill(cv, _circle(0, r, r * 0.45, 8), cls, hub)


def _shadow(cv: _Canvas, cam: _Cam, x0, x1, z0, z1) -> None:
    cv.shade(
        cam.project(
            np.array(
                [[x0 - 0.15, 0, z0 - 0.2], [x1 + 0.15, 0, z0 - 0.2], [x1 + 0.15, 0, z1 + 0.1], [x0 - 0.15, 0, z1 + 0.1]]
            )
        ),
        0.55,
    )


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
        cv.fill(
            cam.project(np.array([[a, 0, z0 + 0.7], [b, 0, z0 + 0.7], [b, 0.34, z0 + 0.7], [a, 0.34, z0 + 0.7]])),
            CAR,
            tyre,
        )
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
    rear = np.array(
        [[x0 + ix, bt, zc0], [x1 - ix, bt, zc0], [x1 - ix - taper, ct, zc0 + slope], [x0 + ix + taper, ct, zc0 + slope]]
    )
    if xs is not None:
        sgn = 1 if xs == x0 else -1
        xs_top = xs + sgn * (ix + taper)
        sidep = np.array(
            [[xs + sgn * ix, bt, zc0], [xs + sgn * ix, bt, zc1], [xs_top, ct, zc1 - slope], [xs_top, ct, zc0 + slope]]
        )
        cv.fill(cam.project(sidep), CAR, body * 0.8)
        c = sidep.mean(0)
        cv.fill(cam.project(c + 0.8 * (sidep - c)), CAR, glass * 0.9)
    if ct < cam.h:
        roof = np.array(
            [
                [x0 + ix + taper, ct, zc0 + slope],
                [x1 - ix - taper, ct, zc0 + slope],
                [x1 - ix - taper, ct, zc1 - slope],
                [x0 + ix + taper, ct, zc1 - slope],
            ]
        )
        cv.fill(cam.project(roof), CAR, body * 1.1)
    cv.fill(cam.project(rear), CAR, body)
    c = rear.mean(0)
    cv.fill(cam.project(c + (0.82 if oncoming else 0.74) * (rear - c)), CAR, glass)
    # lights and plate on the near face
    lc = np.array([235, 235, 210], np.float32) if oncoming else np.array([200, 20, 24], np.float32)
    for a, b in ((x0 + 0.08, x0 + 0.38), (x1 - 0.38, x1 - 0.08)):
        cv.fill(cam.project(np.array([[a, 0.68, z0], [b, 0.68, z0], [b, 0.82, z0], [a, 0.82, z0]])), CAR, lc)
    cv.fill(
        cam.project(
            np.array([[Xc - 0.25, 0.42, z0], [Xc + 0.25, 0.42, z0], [Xc + 0.25, 0.54, z0], [Xc - 0.25, 0.54, z0]])
        ),
        CAR,
        np.array([225, 225, 215], np.float32),
    )


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
                cv.fill(
                    cam.project(
                        np.array(
                            [
                                [Xc - 0.03, 1.0, a],
                                [Xc + 0.03, 1.0, a],
                                [Xc + 0.03, hgt - 0.1, a],
                                [Xc - 0.03, hgt - 0.1, a],
                            ]
                        )
                    ),
                    TRUCK,
                    cargo * 0.6,
                )
                cv.fill(
                    cam.project(np.array([[x0, 0.55, a], [x1, 0.55, a], [x1, 0.9, a], [x0, 0.9, a]])), TRUCK, tyre * 1.5
                )
    if xs is not None:
        _wheels_side(
            cv,
            cam,
            xs,
            [z0 + 1.2, z1 - 1.4, z1 - 2.6] if not oncoming else [z0 + 1.2, z0 + 5.0, z1 - 1.2],
            0.5,
            TRUCK,
            tyre,
            hub,
        )
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
            cv.fill(
                cam.project(np.array([[xs, 1.25, zp], [xs, 1.25, zp + 0.12], [xs, 2.55, zp + 0.12], [xs, 2.55, zp]])),
                BUS,
                body * 0.8,
            )
        _wheels_side(cv, cam, xs, [z0 + 2.4, z1 - 3.0], 0.5, BUS, tyre, hub)
    lo, hi = (0.95, 2.8) if oncoming else (1.6, 2.7)
    cv.fill(
        cam.project(np.array([[x0 + 0.15, lo, z0], [x1 - 0.15, lo, z0], [x1 - 0.15, hi, z0], [x0 + 0.15, hi, z0]])),
        BUS,
        glass,
    )
    if oncoming:
        cv.fill(
            cam.project(
                np.array([[x0 + 0.4, 2.85, z0], [x1 - 0.4, 2.85, z0], [x1 - 0.4, 3.05, z0], [x0 + 0.4, 3.05, z0]])
            ),
            BUS,
            np.array([240, 160, 40], np.float32),
        )
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
        cv.fill(
            cam.project(np.array([[xs, 2.45, z0], [xs, 2.45, z1], [xs, 3.4, z1], [xs, 3.4, z0]])), TRAIN, stripe * 0.85
        )
        cv.fill(
            cam.project(np.array([[xs, 1.2, z0 + 0.4], [xs, 1.2, z1], [xs, 2.35, z1], [xs, 2.35, z0 + 0.4]])),
            TRAIN,
            glass,
        )
        for zp in np.arange(z0 + 2.0, z1, 2.0):
            cv.fill(
                cam.project(np.array([[xs, 1.2, zp], [xs, 1.2, zp + 0.15], [xs, 2.35, zp + 0.15], [xs, 2.35, zp]])),
                TRAIN,
                body * 0.8,
            )
    cv.fill(cam.project(np.array([[x0, 2.45, z0], [x1, 2.45, z0], [x1, 3.4, z0], [x0, 3.4, z0]])), TRAIN, stripe)
    cv.fill(
        cam.project(np.array([[x0 + 0.2, 1.2, z0], [x1 - 0.2, 1.2, z0], [x1 - 0.2, 2.35, z0], [x0 + 0.2, 2.35, z0]])),
        TRAIN,
        glass,
    )
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
    pl.fill(
        cv,
        np.array([[-waist / 2, hip - 0.02 * h], [waist / 2, hip - 0.02 * h], [sw / 2, 0.83 * h], [-sw / 2, 0.83 * h]]),
        PERSON,
        top,
    )
    r = 0.066 * h
    pl.fill(cv, _circle(0, 0.9 * h, r, 12), PERSON, _pick(rng, ps["skin"], 0.12))
    pl.fill(cv, _circle(0, 0.92 * h, r * 1.02, 12, ry=r * 0.55), PERSON, ps["hair"])


def _draw_bike(
    cv: _Canvas, cam: _Cam, rng, st: dict, X: float, z: float, theta: float, moto: bool, rider: bool
) -> None:
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
        pl.fill(
            cv,
            P(
                [
                    [0.25, 0.45],
                    [0.5, 0.33],
                    [0.95, 0.33],
                    [1.15, 0.6],
                    [1.22, 0.86],
                    [1.0, 0.96],
                    [0.7, 0.9],
                    [0.35, 0.88],
                    [0.1, 0.7],
                ]
            ),
            cls,
            body,
        )
        pl.fill(cv, P([[0.15, 0.86], [0.7, 0.9], [0.72, 0.98], [0.2, 0.97]]), cls, tyre * 1.4)
        pl.line(cv, P([[L, r], [1.15, 0.95], [1.05, 1.1]]), cls, chrome, 0.07)
    else:
        t = max(0.045, 1.6 / cam.px(1.0, z))  # at least ~1.6 px wide tyres so they stay visible
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
    pl.fill(
        cv,
        P(_circle(head[0], head[1], 0.12, 12)),
        RIDER,
        _pick(rng, rs["helmet"]) if moto or rng.random() < 0.6 else st["person"]["skin"],
    )


def _draw_tree(cv: _Canvas, cam: _Cam, rng, st: dict, X: float, z: float) -> None:
    """A street tree: trunk and 2-3 irregular crown blobs (all vegetation)."""
    pl = _Plane(cam, X, z)
    th = rng.uniform(2.2, 4.0)
    tw = rng.uniform(0.22, 0.4)
    pl.fill(
        cv,
        np.array([[-tw / 2, 0], [tw / 2, 0], [tw / 2 * 0.8, th + 0.5], [-tw / 2 * 0.8, th + 0.5]]),
        VEG,
        _pick(rng, st["vegetation"]["trunk"]),
    )
    R = rng.uniform(1.4, 3.2)
    base = _pick(rng, st["vegetation"]["colours"], 0.1)
    roundness = float(st["shape"]["tree_round"])
    for _k in range(rng.integers(2, 4)):
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
    if h > 4.4 and not has_light:  # street lamp arm towards the road
        pl.line(
            cv, np.array([[0, h - 0.1], [towards_road * 1.2, h + 0.25], [towards_road * 1.6, h + 0.2]]), POLE, pc, 0.1
        )
    if has_light:
        hy = rng.uniform(2.4, 3.4) if h < 6 else rng.uniform(3.0, 4.5)
        _draw_light(cv, pl, st, towards_road * 0.2, hy, rng)
    if has_sign:
        hy = min(h - 0.4, rng.uniform(2.0, 2.8))
        _draw_sign(cv, pl, st, rng, towards_road * 0.15, hy)


def _draw_light(cv: _Canvas, pl: _Plane, st: dict, cu: float, cvv: float, rng) -> None:
    bw, bh = 0.34, 0.95
    box = np.asarray(st["light"]["box"], np.float32) * rng.uniform(0.9, 1.1)
    pl.fill(
        cv,
        np.array([[cu - bw / 2, cvv], [cu + bw / 2, cvv], [cu + bw / 2, cvv + bh], [cu - bw / 2, cvv + bh]]),
        LIGHT,
        box,
    )
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

    occupied: list[tuple[float, float, float]] = []  # (lane X, z0, z1)

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
        arm_x = -(lay.RR + 0.4) - rng.uniform(0, 1.5)  # the arm reaches over the road

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
                add(
                    zb, lambda cv, xb=xb, zb=zb, th=th, moto=moto: _draw_bike(cv, cam, rng, st, xb, zb, th, moto, False)
                )
    return objs
