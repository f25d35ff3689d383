"""The static scene of the street benchmark: lateral layout, facades (buildings, vegetation, walls,
fences), the skyline and sky, and the ground (road, markings, kerbs, sidewalks, verges)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import _Cam, _Canvas, _pick
from .style import BUILDING, FENCE, ROAD, SIDEWALK, SKY, TERRAIN, VEG, WALL


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
    out["kind"] = np.zeros(n, np.uint8)  # 0 building, 1 vegetation
    out["front"] = np.zeros(n, np.uint8)  # 0 none, 1 wall, 2 fence
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


def _background(
    cv: _Canvas,
    cam: _Cam,
    rng: np.random.Generator,
    st: dict,
    pr: dict,
    lay: _Layout,
    fields: dict,
    yy: np.ndarray,
    xx: np.ndarray,
) -> None:
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
    img[F] = np.where(
        tree[:, None],
        np.asarray(st["vegetation"]["colours"], np.float32).mean(0) * 0.9,
        np.asarray(st["building"]["colours"], np.float32).mean(0) * 0.9,
    )
    lab[F] = np.where(tree, VEG, BUILDING)

    # ---- facades: the left plane X = -XL for columns left of the vanishing point, right plane X = +XR
    d = yf - cam.yh  # rows below the horizon
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
    res = np.clip((cam.f * fh / pz - 2.0) / 3.0, 0, 1)[:, None]  # 0: unresolvable, 1: sharp
    wcol = np.asarray(st["building"]["window"], np.float32)
    avg = col * 0.75 + wcol * 0.25
    col = np.where(
        upper[:, None], np.where(win[:, None], res * wcol + (1 - res) * avg, res * col + (1 - res) * avg), col
    )
    shop = bld & side("shop") & (pY > 0.4) & (pY < 2.6) & (np.abs(np.mod(u / 6.0, 1) - 0.5) < 0.36)
    col[shop] = st["building"]["shop"]
    col[bld & (pY > ptop - 0.45)] *= 0.82  # cornice
    cls = np.where(bld, BUILDING, VEG).astype(np.uint8)
    grass = ~bld & (pY < 0.5)  # grass under hedges / park trees
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
    # illumination: a low sun lights the left facades and leaves the right ones in shade
    sun = float(st["sensor"]["sun"])
    col *= np.where(pl, 1 + 0.15 * sun, 1 - 0.25 * sun).astype(np.float32)[:, None]
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
        if abs(x + 1.6) < 0.01:  # centre line between the directions
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
    # ... and the right-hand blocks cast a shadow band over their sidewalk and part of the road
    shadow_edge = lay.RR + lay.SR - rng.uniform(2.0, 8.0)
    col[Xg > shadow_edge] *= 1 - 0.45 * sun
    img[G], lab[G] = col, cls
