"""Synthetic phantom images with lesion masks: the bundle's built-in data set.

Three modalities, each a cheap caricature of a real one, plain enough for a small
convolutional autoencoder at 64x64 to learn the normal anatomy, with anomalies that
stand out at that size:

- ``cxr``: chest X-ray (lungs, ribs, clavicles, heart, diaphragm, mediastinum, spine).
  Anomalies: focal opacity, nodules, pleural effusion, cardiomegaly, pneumothorax,
  lobar consolidation.
- ``brain``: T1-like axial brain MRI slice (scalp, skull, grey and white matter, sulci,
  ventricles). Anomaly: tumour (solid, ring-enhancing or heterogeneous) with oedema,
  often with mass effect (displaced ventricles).
- ``fundus``: retinal photograph (circular field of view, vessel tree, optic disc and cup,
  macula), grayscale luminance by default or RGB. Anomalies: enlarged cup (glaucoma-like),
  haemorrhages, hard exudates.

An abnormal image gets one or two anomalies; its mask marks the pixels the anomalies
change (for an enlarged cup or heart: the area between the normal and the enlarged outline).

Every image flows from one ``numpy.random.Generator``: anatomy first, then anomalies, so
two generators in the same state render the same subject with and without its anomaly.
Data sets seed image ``i`` of role ``r`` with ``default_rng([seed, ROLE_CODES[r], i])``:
the same seed gives byte-identical files, and no image depends on how many others are made.

Example::

    import numpy as np
    from scripts.data.phantoms import render_phantom, generate_phantom_dataset

    image, mask = render_phantom("cxr", np.random.default_rng(0), size=128, abnormal=True)
    split_file = generate_phantom_dataset("runs/data/cxr", modality="cxr", seed=0)

Command line, from ``ddad_bundle/``::

    python -m scripts.data.phantoms --modality cxr --out runs/data/cxr --seed 0
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import operator
import pathlib
import re

import numpy as np
from PIL import Image

from ..runtime.files import write_json_atomic
from .splits import FORMAT

MODALITIES = ("cxr", "brain", "fundus")
ROLES = ("normal", "validation", "unlabeled", "test")
ROLE_CODES = {"normal": 1, "validation": 2, "unlabeled": 3, "test": 4}
GENERATOR = "ddad-phantoms"
GENERATOR_VERSION = 2
_LABEL_STREAM = 100  # labels of a role are drawn from default_rng([seed, 100 + role code])
_ORDER_STREAM = 200  # listing order of a role from default_rng([seed, 200 + role code])
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_F32 = np.float32


# ----------------------------------------------------------------------------- drawing kit


@functools.lru_cache(maxsize=8)
def _grid(size):
    """Pixel-centre coordinates in [-1, 1] (x right, y down), cached: every image of a size shares them."""
    c = (np.arange(size, dtype=_F32) + 0.5) * _F32(2.0 / size) - _F32(1.0)
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _frame(size, angle=0.0, dx=0.0, dy=0.0):
    """Subject coordinates: the pixel grid shifted and rotated, so the whole anatomy moves as one."""
    x, y = _grid(size)
    x, y = x - _F32(dx), y - _F32(dy)
    if angle:
        c, s = _F32(math.cos(angle)), _F32(math.sin(angle))
        x, y = c * x + s * y, c * y - s * x
    return x, y


def _step(d, width):
    """Smooth step from 1 (signed distance d < 0, inside) to 0 over `width`: anti-aliased soft edges."""
    t = np.clip(_F32(0.5) - d * _F32(1.0 / width), 0.0, 1.0)
    return t * t * (_F32(3.0) - _F32(2.0) * t)


def _rotate(dx, dy, angle):
    """Offsets expressed in a frame turned by `angle` (radians), for tilted shapes."""
    if not angle:
        return dx, dy
    c, s = _F32(math.cos(angle)), _F32(math.sin(angle))
    return c * dx + s * dy, c * dy - s * dx


def _ellipse(x, y, cx, cy, rx, ry, soft, angle=0.0):
    """Filled ellipse, 1 inside, with an edge `soft` wide (image units, 2 = whole image)."""
    dx, dy = _rotate(x - _F32(cx), y - _F32(cy), angle)
    r = np.sqrt((dx * _F32(1.0 / rx)) ** 2 + (dy * _F32(1.0 / ry)) ** 2)
    return _step((r - _F32(1.0)) * _F32(min(rx, ry)), soft)


def _gauss(x, y, cx, cy, sx, sy, angle=0.0):
    """Gaussian bump of peak 1: for shading (macula, hila) that has no edge."""
    dx, dy = _rotate(x - _F32(cx), y - _F32(cy), angle)
    return np.exp(-0.5 * ((dx * _F32(1.0 / sx)) ** 2 + (dy * _F32(1.0 / sy)) ** 2))


def _noise(rng, size, cells):
    """Smooth random field of about unit std: value noise on a (cells+2)^2 lattice, smoothstep-interpolated.

    The lattice does not depend on `size`, so the same subject looks the same at any size.
    """
    g = rng.standard_normal((cells + 2, cells + 2), dtype=_F32) * _F32(1.9)
    t = np.arange(size, dtype=_F32) * _F32(cells / size)
    i = t.astype(np.intp)
    f = t - i
    f = f * f * (_F32(3.0) - _F32(2.0) * f)
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _blur(img, sigma):
    """Separable Gaussian blur along the first two axes (sigma in pixels, reflect padding); no scipy needed."""
    if sigma < 0.25:
        return img
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(_F32)
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="reflect")
        n = img.shape[axis]
        out = np.zeros_like(img)
        for j, w in enumerate(k):
            sl = [slice(None)] * img.ndim
            sl[axis] = slice(j, j + n)
            out += w * p[tuple(sl)]
        img = out
    return img


def _acquire(img, rng, blur, noise, size):
    """Acquisition: blur then Gaussian noise, clipped to [0, 1]; blur is in pixels of a 128-px image."""
    img = _blur(img, blur * size / 128.0)
    img = img + rng.standard_normal(img.shape, dtype=_F32) * _F32(noise)
    return np.clip(img, 0.0, 1.0)


def _pick_kinds(rng, kinds):
    """One anomaly kind (65%) or two distinct ones (35%)."""
    n = 1 if rng.uniform() < 0.65 else 2
    return [kinds[i] for i in rng.choice(len(kinds), size=n, replace=False)]


def _disc_point(rng, radius):
    """Uniform random point in a disc of `radius` around the origin."""
    a, r = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.uniform())
    return r * math.cos(a), r * math.sin(a)


class _Canvas:
    """What a renderer and its lesion painters share: coordinates, pixel size, image, mask."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size = x, y, size
        self.px = 2.0 / size  # one pixel in image units
        self.mask = np.zeros((size, size), bool)


# ----------------------------------------------------------------------------- chest X-ray


# Uniform ranges (low, high) of one chest's parameters, one group a line; angles in degrees.
# The draws follow this order, so reordering it changes every phantom of a seed.
_CXR_RANGES = {
    "pose and body": dict(angle=(-4, 4), dx=(-0.05, 0.05), dy=(-0.04, 0.06), body_rx=(0.9, 1.02)),
    "lungs": dict(lung_cx=(0.4, 0.46), lung_cy=(-0.12, -0.05), lung_rx=(0.3, 0.35), lung_ry=(0.6, 0.68)),
    "lung asymmetry and domes": dict(left_narrow=(0.86, 0.96), dome_depth=(0.1, 0.17), dome_drop=(0.02, 0.07)),
    "heart": dict(heart_cx=(0.1, 0.16), heart_cy=(0.3, 0.38), heart_rx=(0.3, 0.36), heart_ry=(0.22, 0.27)),
    "heart tilt and ribs": dict(
        heart_tilt=(-30, -15), rib_spacing=(0.15, 0.19), rib_phase=(0, 1), rib_weight=(0.06, 0.11)
    ),
    "exposure": dict(contrast=(0.85, 1.15), brightness=(-0.06, 0.06), gamma=(0.85, 1.2)),
    "blur and noise": dict(blur=(0.5, 1.0), noise=(0.008, 0.025)),
}
_CXR_ANGLES = ("angle", "heart_tilt")


def _sample_uniform(rng, ranges, angles):
    """One draw per parameter of `ranges` (groups of name: (low, high)), in their order, the `angles`
    converted from degrees to radians; then the subject's noise seed."""
    p = {}
    for group in ranges.values():
        for name, (low, high) in group.items():
            value = rng.uniform(low, high)
            p[name] = math.radians(value) if name in angles else value
    p["seed"] = int(rng.integers(2**63))
    return p


def _sample_cxr(rng):
    """Anatomy and exposure of one chest: pose, lungs, diaphragm, heart, ribs, contrast, noise."""
    return _sample_uniform(rng, _CXR_RANGES, _CXR_ANGLES)


def _cxr_lung(p, side):
    """Centre, radii and lateral base height of one lung; side -1 = patient's right (image left)."""
    rx = p["lung_rx"] * (p["left_narrow"] if side > 0 else 1.0)
    base = p["lung_cy"] + 0.93 * p["lung_ry"] + (p["dome_drop"] if side > 0 else 0.0)
    return side * p["lung_cx"], p["lung_cy"], rx, p["lung_ry"], base


def _lung_field(c, p, side):
    """One lung: an ellipse widening towards the base, cut by a diaphragm dome (sharp costophrenic angle)."""
    cx, cy, rx, ry, base = _cxr_lung(p, side)
    x, y, soft = c.x, c.y, 2 * c.px
    w = _F32(rx) * np.clip(0.82 + 0.25 * (y - cy) / ry, 0.5, 1.05)
    r = np.sqrt(((x - cx) / w) ** 2 + ((y - cy) / ry) ** 2)
    dome = base - p["dome_depth"] * np.clip(1 - ((x - cx + side * 0.15 * rx) / (1.1 * rx)) ** 2, 0, 1)
    return _step((r - 1) * rx, soft) * _step(y - dome, soft)


def _heart(c, p, scale=1.0):
    """Cardiac silhouette, centred left of the midline (image right), optionally enlarged."""
    return _ellipse(
        c.x,
        c.y,
        p["heart_cx"] + 0.04 * (scale - 1),
        p["heart_cy"],
        p["heart_rx"] * scale,
        p["heart_ry"] * (1 + 0.6 * (scale - 1)),
        3 * c.px,
        p["heart_tilt"],
    )


def _ribs(c, p):
    """Posterior ribs (bright arcs, one periodic pattern in a warped coordinate) plus faint anterior ribs."""
    ax = np.abs(c.x)
    u = c.y - (0.8 * ax * ax - 0.3 * ax)
    post = (0.5 + 0.5 * np.cos(2 * np.pi * (u / p["rib_spacing"] - p["rib_phase"]))) ** 6
    ant = (0.5 + 0.5 * np.cos(2 * np.pi * ((c.y + 0.45 * ax) / (1.2 * p["rib_spacing"]) - p["rib_phase"]))) ** 4
    cage = _ellipse(c.x, c.y, 0, -0.12, 0.86, 0.8, 0.1) * _step(0.07 - ax, 0.05)
    return (post + 0.35 * ant) * cage * (0.35 + 0.65 * c.air_mask)


def _clavicles(c):
    """Two bright bands rising laterally from the top of the sternum."""
    ax = np.abs(c.x)
    line = -0.7 - 0.2 * (ax - 0.1)
    band = np.exp(-(((c.y - line) / 0.035) ** 2))
    return band * _step(ax - 0.62, 0.06) * _step(0.08 - ax, 0.03)


def _render_cxr(p, lesions, size, rgb):
    """Chest radiograph as an attenuation sum (tissue, air, bone) mapped to brightness; lesions add density."""
    c = _Canvas(*_frame(size, p["angle"], p["dx"], p["dy"]), size)
    tex = np.random.default_rng(p["seed"])
    marks = 0.6 * _noise(tex, size, 9) + 0.4 * _noise(tex, size, 20)
    c.lungs = {s: _lung_field(c, p, s) for s in (-1, 1)}
    lungs = np.maximum(c.lungs[-1], c.lungs[1])
    scale = next((a["scale"] for a in lesions if a["kind"] == "cardiomegaly"), 1.0)
    heart = c.heart = _heart(c, p, scale)
    body = _ellipse(c.x, c.y, 0, 0.28, p["body_rx"], 1.3, 0.1)
    hila = sum(_gauss(c.x, c.y, s * 0.2, -0.05, 0.12, 0.2) for s in (-1, 1))
    c.air_mask = lungs * (1 - 0.9 * heart)
    air = c.air = c.air_mask * (0.42 - 0.035 * marks - 0.1 * hila)
    medi = _ellipse(c.x, c.y, 0, -0.35, 0.13, 0.7, 0.08)
    spine = _step(np.abs(c.x) - 0.065, 0.03) * (1 + 0.25 * np.cos(2 * np.pi * c.y / 0.11))
    c.d = 0.56 * body - air + 0.12 * medi + 0.1 * spine + 0.05 * heart
    c.d += p["rib_weight"] * _ribs(c, p) + 0.15 * _clavicles(c)
    c.marks = marks
    for a in lesions:
        _CXR_PAINTERS[a["kind"]](c, p, a)
    img = np.clip(0.06 + p["brightness"] + p["contrast"] * c.d, 0, 1) ** p["gamma"]
    return _acquire(img.astype(_F32), tex, p["blur"], p["noise"], size), c.mask


def _point_in_lung(rng, p, side, spread=0.55):
    """A random point well inside one lung, biased away from the base (where the heart and dome hide it)."""
    cx, cy, rx, ry, _ = _cxr_lung(p, side)
    ox, oy = _disc_point(rng, spread)
    return cx + ox * 0.75 * rx + side * 0.08 * rx, cy - 0.05 * ry + oy * 0.85 * ry


def _sample_cxr_lesion(rng, p, kind):
    """Parameters of one chest anomaly of `kind`, placed relative to this subject's lungs."""
    side = -1 if rng.uniform() < 0.5 else 1
    a = dict(kind=kind, side=side)
    if kind == "opacity":
        a["cx"], a["cy"] = _point_in_lung(rng, p, side)
        a.update(
            r=rng.uniform(0.12, 0.22),
            aspect=rng.uniform(0.7, 1.4),
            angle=rng.uniform(0, math.pi),
            amp=rng.uniform(0.3, 0.45),
        )
    elif kind == "nodules":
        a["spots"] = [
            (
                *_point_in_lung(rng, p, side if rng.uniform() < 0.7 else -side, 0.7),
                rng.uniform(0.05, 0.09),
                rng.uniform(0.35, 0.55),
            )
            for _ in range(rng.integers(1, 4))
        ]
    elif kind == "effusion":
        a.update(height=rng.uniform(0.25, 0.45), amp=rng.uniform(0.85, 1.0))
    elif kind == "cardiomegaly":
        a.update(scale=rng.uniform(1.3, 1.5))
    elif kind == "pneumothorax":
        a.update(collapse=rng.uniform(0.5, 0.7), dark=rng.uniform(0.2, 0.28))
    elif kind == "consolidation":
        a.update(
            upper=bool(rng.uniform() < 0.4),
            level=rng.uniform(-0.15, 0.2),
            tilt=rng.uniform(-0.5, 0.5),
            amp=rng.uniform(0.3, 0.45),
            seed=int(rng.integers(2**63)),
        )
    return a


def _sample_cxr_lesions(rng, p):
    """One or two chest anomalies of distinct kinds."""
    kinds = ("opacity", "nodules", "effusion", "cardiomegaly", "pneumothorax", "consolidation")
    return [_sample_cxr_lesion(rng, p, k) for k in _pick_kinds(rng, kinds)]


def _paint_opacity(c, p, a):
    """Soft-edged brightening inside a lung (pneumonia-like)."""
    blob = _ellipse(c.x, c.y, a["cx"], a["cy"], a["r"], a["r"] * a["aspect"], 0.6 * a["r"], a["angle"])
    blob = blob * c.lungs[a["side"]] * (1 - 0.9 * c.heart)
    c.d += a["amp"] * blob
    c.mask |= blob > 0.5


def _paint_nodules(c, p, a):
    """One to three small bright round spots in the lungs."""
    for cx, cy, r, amp in a["spots"]:
        spot = _ellipse(c.x, c.y, cx, cy, r, r, 0.35 * r + c.px) * c.air_mask
        c.d += amp * spot
        c.mask |= spot > 0.5


def _paint_effusion(c, p, a):
    """Pleural fluid: fills the lung base up to a meniscus rising laterally, blunting the costophrenic angle."""
    side = a["side"]
    cx, cy, rx, ry, base = _cxr_lung(p, side)
    lateral = np.clip(side * (c.x - cx) / rx * 0.5 + 0.5, 0, 1)
    level = base - p["dome_depth"] - a["height"] * (0.3 + 0.7 * lateral**2)
    fluid = c.lungs[side] * _step(level - c.y, 2 * c.px)
    c.d += a["amp"] * fluid * (c.air + 0.04)  # fluid replaces the air: as dense as soft tissue
    c.mask |= (fluid > 0.5) & (c.air_mask > 0.3)  # behind the heart there is no air to replace


def _paint_cardiomegaly(c, p, a):
    """The heart itself is drawn enlarged by the renderer; here only the extra area goes into the mask."""
    lungs = np.maximum(c.lungs[-1], c.lungs[1])
    c.mask |= (_heart(c, p, a["scale"]) > 0.5) & (_heart(c, p) <= 0.5) & (lungs > 0.5)


def _paint_pneumothorax(c, p, a):
    """Air around a collapsed lung: darker, no markings, with a thin bright visceral pleural line."""
    side = a["side"]
    cx, cy, rx, ry, _ = _cxr_lung(p, side)
    k = a["collapse"]
    ccx, ccy = cx - side * (1 - k) * 0.8 * rx, cy + (1 - k) * 0.7 * ry
    dx, dy = (c.x - ccx) / (k * rx), (c.y - ccy) / (k * ry)
    rr = np.sqrt(dx * dx + dy * dy)
    space = c.lungs[side] * _step(1 - rr, 0.02)
    line = np.exp(-((((rr - 1) * k * rx) / (0.8 * c.px)) ** 2)) * c.lungs[side]
    c.d += space * (0.035 * c.marks - a["dark"]) + 0.15 * line
    c.mask |= space > 0.5


def _paint_consolidation(c, p, a):
    """Lobar consolidation: a dense lung region bounded by a fissure-like line with a ragged edge."""
    side = a["side"]
    cx, cy, rx, ry, _ = _cxr_lung(p, side)
    rng = np.random.default_rng(a["seed"])
    ragged = 0.04 * _noise(rng, c.size, 12)
    d = (c.y - cy - a["level"] * ry - a["tilt"] * (c.x - cx)) * (1 if a["upper"] else -1)
    region = c.lungs[side] * _step(d + ragged, 0.04)
    c.d += a["amp"] * region * (1 + 0.15 * _noise(rng, c.size, 16))
    c.mask |= region > 0.5


_CXR_PAINTERS = {
    "opacity": _paint_opacity,
    "nodules": _paint_nodules,
    "effusion": _paint_effusion,
    "cardiomegaly": _paint_cardiomegaly,
    "pneumothorax": _paint_pneumothorax,
    "consolidation": _paint_consolidation,
}


# ----------------------------------------------------------------------------- brain MRI


# Uniform ranges (low, high) of one slice's parameters, as for the chest; angles in degrees.
_BRAIN_RANGES = {
    "pose": dict(angle=(-8, 8), dx=(-0.04, 0.04), dy=(-0.04, 0.04)),
    "head": dict(head_rx=(0.68, 0.78), head_ry=(0.84, 0.93), scalp=(0.045, 0.065), bone=(0.03, 0.045)),
    "tissue levels": dict(wm_level=(0.78, 0.86), gm=(0.36, 0.44), wm=(0.6, 0.7), csf=(0.06, 0.12)),
    "scalp level and ventricles": dict(
        scalp_level=(0.7, 0.88), vent_scale=(0.75, 1.3), vent_spread=(0.06, 0.09), vent_angle=(20, 35)
    ),
    "contrast and noise": dict(contrast=(0.9, 1.1), brightness=(-0.04, 0.04), blur=(0.4, 0.8), noise=(0.01, 0.03)),
}
_BRAIN_ANGLES = ("angle", "vent_angle")


def _sample_brain(rng):
    """Anatomy and contrast of one T1-like axial slice: head shape, tissue levels, ventricles, noise."""
    return _sample_uniform(rng, _BRAIN_RANGES, _BRAIN_ANGLES)


def _brain_radii(p):
    """Half-axes of the brain inside scalp and skull."""
    t = p["scalp"] + p["bone"]
    return p["head_rx"] - t, p["head_ry"] - t


def _ventricles(c, p, ox=0.0, oy=0.0):
    """Lateral ventricles (frontal horns splaying forward, atria behind: a butterfly) and a third-ventricle slit."""
    s, sp, ang = p["vent_scale"], p["vent_spread"], p["vent_angle"]
    bx, by = _brain_radii(p)
    soft = 2 * c.px
    parts = [_ellipse(c.x, c.y, ox, oy + 0.06 * by, 0.014 * s, 0.06 * s, soft)]
    for side in (-1, 1):
        parts.append(_ellipse(c.x, c.y, ox + side * sp * bx, oy - 0.2 * by, 0.06 * s, 0.16 * s, soft, side * ang))
        parts.append(
            _ellipse(c.x, c.y, ox + side * (sp + 0.16) * bx, oy + 0.3 * by, 0.05 * s, 0.13 * s, soft, -side * 1.2 * ang)
        )
    return functools.reduce(np.maximum, parts)


def _render_brain(p, lesions, size, rgb):
    """Axial slice: bright scalp, dark bone, grey/white matter with sulci and ventricles, smooth texture."""
    c = _Canvas(*_frame(size, p["angle"], p["dx"], p["dy"]), size)
    tex = np.random.default_rng(p["seed"])
    n_sulci, n_wm, n_tex = _noise(tex, size, 12), _noise(tex, size, 11), _noise(tex, size, 5)
    bx, by = _brain_radii(p)
    soft = 1.5 * c.px
    head = _ellipse(c.x, c.y, 0, 0, p["head_rx"], p["head_ry"], soft)
    inner = _ellipse(c.x, c.y, 0, 0, p["head_rx"] - p["scalp"], p["head_ry"] - p["scalp"], soft)
    c.brain = _ellipse(c.x, c.y, 0, 0, bx, by, soft)
    rb = np.sqrt((c.x / bx) ** 2 + (c.y / by) ** 2)
    wm = _step(rb - (p["wm_level"] + 0.07 * n_wm), 0.05)
    nuclei = sum(_ellipse(c.x, c.y, s * 0.2 * bx, 0.08 * by, 0.08, 0.12, 0.05) for s in (-1, 1))
    tissue = (p["gm"] + (p["wm"] - p["gm"]) * wm * (1 - 0.7 * nuclei)) * (1 + 0.04 * n_tex)
    shift = next(((a["push_x"], a["push_y"]) for a in lesions if a.get("push_x") is not None), (0.0, 0.0))
    vent = _ventricles(c, p, *shift)
    if shift != (0.0, 0.0):
        c.mask |= (vent > 0.5) != (_ventricles(c, p) > 0.5)
    sulci = _step(np.abs(n_sulci) - 0.12, 0.08) * _step(0.8 - rb, 0.1)
    fissure = _step(np.abs(c.x) - 0.012, 1.5 * c.px) * _step(0.5 - np.abs(c.y) / by, 0.1)
    rim = _step(0.965 - rb, 0.04)
    c.csf = np.maximum(np.maximum(sulci, fissure), np.maximum(rim, vent))
    c.tissue = tissue
    for a in lesions:
        _paint_oedema(c, p, a)
    c.tissue = c.tissue * (1 - c.csf) + p["csf"] * c.csf
    for a in lesions:
        _paint_tumour(c, p, a)
    img = p["scalp_level"] * (head - inner) + 0.06 * (inner - c.brain) + c.brain * c.tissue
    img = np.clip(p["brightness"] + p["contrast"] * img, 0, 1).astype(_F32)
    return _acquire(img, tex, p["blur"], p["noise"], size), c.mask


def _sample_tumour(rng, p):
    """One tumour: position in the brain, size, appearance, oedema halo and possible mass effect."""
    bx, by = _brain_radii(p)
    ox, oy = _disc_point(rng, 0.62)
    cx, cy = ox * bx, oy * by
    r = rng.uniform(0.07, 0.16)
    a = dict(
        kind="tumour",
        cx=cx,
        cy=cy,
        r=r,
        aspect=rng.uniform(0.75, 1.3),
        angle=rng.uniform(0, math.pi),
        look=str(rng.choice(["solid", "ring", "hetero"])),
        level=rng.uniform(0.82, 0.97),
        core=rng.uniform(0.12, 0.3),
        halo=rng.uniform(1.5, 2.3),
        oedema=rng.uniform(0.22, 0.34),
        oedema_alpha=rng.uniform(0.6, 0.9),
        seed=int(rng.integers(2**63)),
    )
    if rng.uniform() < 0.6:  # mass effect: ventricles pushed away from the tumour
        norm = math.hypot(cx, cy) + 1e-6
        push = min(0.1, 0.6 * r * rng.uniform(0.6, 1.0))
        a.update(push_x=-cx / norm * push, push_y=-cy / norm * push * 0.5)
    return a


def _sample_brain_lesions(rng, p):
    """One tumour, sometimes (20%) two."""
    return [_sample_tumour(rng, p) for _ in range(1 if rng.uniform() < 0.8 else 2)]


def _paint_oedema(c, p, a):
    """Irregular halo of lowered (T1-like) intensity around the tumour."""
    rng = np.random.default_rng(a["seed"])
    rr = np.sqrt((c.x - a["cx"]) ** 2 + (c.y - a["cy"]) ** 2)
    halo = _step(rr - a["halo"] * a["r"] * (1 + 0.2 * _noise(rng, c.size, 8)), 0.04) * c.brain
    alpha = a["oedema_alpha"] * halo
    c.tissue = c.tissue + alpha * (a["oedema"] - c.tissue)
    c.csf = c.csf * (1 - 0.7 * halo)  # swelling effaces the sulci
    c.mask |= alpha > 0.3


def _paint_tumour(c, p, a):
    """The mass: solid bright, ring-enhancing (bright rim, dark necrotic core) or heterogeneous."""
    rng = np.random.default_rng(a["seed"])
    _noise(rng, c.size, 8)  # the oedema's field: keep the streams apart
    r, ry = a["r"], a["r"] * a["aspect"]
    mass = _ellipse(c.x, c.y, a["cx"], a["cy"], r, ry, 0.2 * r, a["angle"]) * c.brain
    value = np.full_like(c.tissue, a["level"])
    if a["look"] == "ring":
        core = _ellipse(c.x, c.y, a["cx"], a["cy"], 0.6 * r, 0.6 * ry, 0.2 * r, a["angle"])
        value = value + core * (a["core"] - value)
    elif a["look"] == "hetero":
        value = value * (0.85 + 0.25 * _noise(rng, c.size, 20))
    c.tissue = c.tissue + mass * (value - c.tissue)
    c.mask |= mass > 0.5


# ----------------------------------------------------------------------------- fundus


_RETINA_DISC = (0.95, 0.62, 0.38)
_CUP = (1.0, 0.95, 0.85)
_VESSEL = (0.42, 0.08, 0.05)
_MACULA = (0.32, 0.1, 0.04)
_BLOOD = (0.38, 0.04, 0.03)
_EXUDATE = (1.0, 0.93, 0.5)


def _sample_fundus(rng):
    """Anatomy and photography of one eye: disc and cup, macula, retina colour, illumination, noise."""
    u = rng.uniform
    eye = 1 if u() < 0.5 else -1  # +1: disc on the image right
    return dict(
        eye=eye,
        fov=u(0.88, 0.95),
        dx=u(-0.03, 0.03),
        dy=u(-0.03, 0.03),
        disc_x=eye * u(0.2, 0.34),
        disc_y=u(-0.08, 0.08),
        disc_r=u(0.14, 0.18),
        disc_aspect=u(1.0, 1.12),
        cup=u(0.2, 0.45),
        cup_dx=u(-0.12, 0.12),
        mac_dist=u(0.5, 0.6),
        mac_dy=u(0.0, 0.08),
        mac_r=u(0.1, 0.15),
        mac_depth=u(0.35, 0.6),
        retina=(u(0.78, 0.95), u(0.32, 0.45), u(0.08, 0.16)),
        vign=u(0.25, 0.5),
        tilt_x=u(-0.12, 0.12),
        tilt_y=u(-0.12, 0.12),
        vessel=u(0.7, 0.9),
        blur=u(0.4, 0.8),
        noise=u(0.008, 0.02),
        seed=int(rng.integers(2**63)),
    )


def _vessel(rng, start, angle, length, curvature, step, wiggle=0.02):
    """One vessel centreline: a random walk in heading with a steady turn, sampled every `step`."""
    n = max(2, int(length / step))
    theta = angle + np.cumsum(curvature * step + rng.normal(0.0, wiggle, n))
    pts = np.cumsum(np.stack([np.cos(theta), np.sin(theta)], 1) * step, 0) + start
    return pts, theta


def _vessel_tree(rng, p, step):
    """Centrelines (points, weights) of the main arcades (artery-vein pairs), nasal vessels and side branches."""
    disc = np.array([p["disc_x"], p["disc_y"]])
    t = -p["eye"]  # temporal direction along x (towards the macula)
    trunks = []
    for vert in (-1, 1):
        for _ in range(2):  # an artery and its vein
            trunks.append(
                (
                    math.atan2(vert, t * 0.35) + rng.normal(0, 0.12),
                    rng.uniform(0.9, 1.3),
                    -vert * t * rng.uniform(1.4, 2.0),
                )
            )
        trunks.append(
            (math.atan2(vert, -t * 0.5) + rng.normal(0, 0.15), rng.uniform(0.5, 0.8), vert * t * rng.uniform(0.5, 1.1))
        )
    trunks.append((math.atan2(rng.uniform(-0.2, 0.2), -t), rng.uniform(0.4, 0.6), rng.normal(0, 0.5)))
    thick, thin = [], []
    for angle, length, curv in trunks:
        pts, theta = _vessel(rng, disc, angle, length, curv, step)
        thick.append((pts, np.linspace(1.0, 0.45, len(pts))))
        for _ in range(rng.integers(2, 5)):
            i = int(rng.uniform(0.15, 0.85) * len(pts))
            turn = rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
            b, _ = _vessel(rng, pts[i], theta[i] + turn, rng.uniform(0.15, 0.4), rng.normal(0, 1.5), step)
            thin.append((b, np.linspace(1.0, 0.4, len(b))))
    for s in (-1, 1):  # small macular branches straight from the disc
        b, _ = _vessel(rng, disc, math.atan2(s * 0.45, t), rng.uniform(0.2, 0.32), rng.normal(0, 1), step)
        thin.append((b, np.linspace(0.9, 0.3, len(b))))
    return thick, thin


def _splat(paths, c, dx, dy, sigma, gain):
    """Rasterise centrelines: accumulate weights at the nearest pixels, blur to the vessel width."""
    pts = np.concatenate([q for q, _ in paths])
    w = np.concatenate([v for _, v in paths])
    ix = np.round((pts[:, 0] + dx + 1) / c.px - 0.5).astype(np.intp)
    iy = np.round((pts[:, 1] + dy + 1) / c.px - 0.5).astype(np.intp)
    ok = (ix >= 0) & (ix < c.size) & (iy >= 0) & (iy < c.size)
    acc = np.bincount(iy[ok] * c.size + ix[ok], w[ok], c.size * c.size).reshape(c.size, c.size)
    acc = np.minimum(acc.astype(_F32) * _F32(0.5), 1.0)  # two samples per pixel along a path
    return np.clip(_blur(acc, sigma * c.size / 128.0) * _F32(gain), 0, 1)


def _colour(rgb, value):
    """A colour as the image's channels: RGB, or its luminance for a grayscale image."""
    v = np.asarray(value, _F32)
    return v if rgb else np.array([v @ _LUMA], _F32)


def _blend(img, alpha, colour):
    """Paint `colour` (channels, or a per-pixel (H, W, C) array) over img with per-pixel opacity."""
    img += alpha[..., None] * (colour - img)


def _cup(c, p, ratio, vert=1.0):
    """Optic cup: pale disc inside the optic disc, `ratio` of its radius (`vert` stretches it vertically)."""
    r = p["disc_r"] * ratio
    return _ellipse(
        c.x,
        c.y,
        p["disc_x"] + p["cup_dx"] * p["disc_r"],
        p["disc_y"],
        r,
        min(r * p["disc_aspect"] * vert, 0.92 * p["disc_r"] * p["disc_aspect"]),
        0.3 * r,
    )


def _render_fundus(p, lesions, size, rgb):
    """Fundus photograph: lit retina with choroidal texture, macula, disc and cup, vessels, black surround."""
    c = _Canvas(*_frame(size, 0.0, p["dx"], p["dy"]), size)
    c.rgb = rgb
    tex = np.random.default_rng(p["seed"])
    r = np.sqrt(c.x**2 + c.y**2)
    fov = _step(r - p["fov"], 2 * c.px)
    illum = 1 - p["vign"] * (r / p["fov"]) ** 2 + p["tilt_x"] * c.x + p["tilt_y"] * c.y + 0.05 * _noise(tex, size, 7)
    c.illum = illum[..., None]
    img = c.illum * _colour(rgb, p["retina"])
    mx, my = p["disc_x"] + p["eye"] * -p["mac_dist"], p["disc_y"] + p["mac_dy"]
    _blend(img, p["mac_depth"] * _gauss(c.x, c.y, mx, my, p["mac_r"], p["mac_r"]), c.illum * _colour(rgb, _MACULA))
    disc = _ellipse(c.x, c.y, p["disc_x"], p["disc_y"], p["disc_r"], p["disc_r"] * p["disc_aspect"], 0.15 * p["disc_r"])
    _blend(img, 0.9 * disc, _colour(rgb, _RETINA_DISC))
    cup = next((a for a in lesions if a["kind"] == "cup"), None)
    pale = _cup(c, p, cup["ratio"] if cup else p["cup"], cup["vert"] if cup else 1.0)
    _blend(img, 0.95 * pale, _colour(rgb, _CUP))
    thick, thin = _vessel_tree(tex, p, 1.0 / size)
    vessels = np.maximum(_splat(thick, c, p["dx"], p["dy"], 1.0, 2.2), _splat(thin, c, p["dx"], p["dy"], 0.6, 1.4))
    vessels *= 1 - 0.75 * pale  # vessels dive into the cup: its floor stays pale
    _blend(img, p["vessel"] * vessels, c.illum * _colour(rgb, _VESSEL))
    c.img, c.fov = img, fov
    for a in lesions:
        _FUNDUS_PAINTERS[a["kind"]](c, p, a)
    img = (c.img * fov[..., None]).astype(_F32)
    img = _acquire(img, tex, p["blur"], p["noise"], size)
    return (img if rgb else img[..., 0]), c.mask


def _away_from_disc(rng, p, radius):
    """A random point in the field of view, at least 1.5 disc radii from the optic disc."""
    for _ in range(50):
        x, y = _disc_point(rng, radius)
        if math.hypot(x - p["disc_x"], y - p["disc_y"]) > 1.5 * p["disc_r"]:
            break
    return x, y


def _sample_fundus_lesion(rng, p, kind):
    """Parameters of one fundus anomaly of `kind`."""
    if kind == "cup":
        return dict(kind=kind, ratio=rng.uniform(0.68, 0.88), vert=rng.uniform(1.0, 1.15))
    if kind == "haemorrhages":
        spots = []
        for _ in range(rng.integers(2, 8)):
            x, y = _away_from_disc(rng, p, 0.75 * p["fov"])
            spots.append(
                (
                    x,
                    y,
                    rng.uniform(0.035, 0.075),
                    rng.uniform(1.0, 2.2),
                    math.atan2(y - p["disc_y"], x - p["disc_x"]) + math.pi / 2,
                    rng.uniform(0.75, 0.95),
                )
            )
        return dict(kind=kind, spots=spots)
    mx, my = p["disc_x"] - p["eye"] * p["mac_dist"], p["disc_y"] + p["mac_dy"]
    cx, cy = _disc_point(rng, 0.2)
    spots = []
    for _ in range(rng.integers(4, 11)):
        ox, oy = _disc_point(rng, 0.18)
        x, y = mx + cx + ox, my + cy + oy
        if math.hypot(x, y) < 0.85 * p["fov"]:
            spots.append(
                (
                    x,
                    y,
                    rng.uniform(0.025, 0.05),
                    rng.uniform(1.0, 1.6),
                    rng.uniform(0, math.pi),
                    rng.uniform(0.75, 0.95),
                )
            )
    return dict(kind=kind, spots=spots or [(mx, my, 0.05, 1.0, 0.0, 0.9)])


def _sample_fundus_lesions(rng, p):
    """One or two fundus anomalies of distinct kinds."""
    return [_sample_fundus_lesion(rng, p, k) for k in _pick_kinds(rng, ("cup", "haemorrhages", "exudates"))]


def _paint_cup_mask(c, p, a):
    """The enlarged cup is drawn by the renderer; the mask is the ring between the normal and the enlarged cup."""
    c.mask |= (_cup(c, p, a["ratio"], a["vert"]) > 0.5) & (_cup(c, p, p["cup"]) <= 0.5)


def _paint_spots(colour, lit):
    """Painter for round/flame-shaped spots of one colour (haemorrhages dark red, exudates yellow)."""

    def paint(c, p, a):
        col = _colour(c.rgb, colour) * (c.illum if lit else 1.0)
        for x, y, r, aspect, angle, alpha in a["spots"]:
            spot = _ellipse(c.x, c.y, x, y, r, r * aspect, 0.35 * r + c.px, angle) * c.fov
            _blend(c.img, alpha * spot, col)
            c.mask |= spot > 0.5

    return paint


_FUNDUS_PAINTERS = dict(
    cup=_paint_cup_mask, haemorrhages=_paint_spots(_BLOOD, True), exudates=_paint_spots(_EXUDATE, False)
)

_SAMPLERS = dict(
    cxr=(_sample_cxr, _sample_cxr_lesions, _render_cxr),
    brain=(_sample_brain, _sample_brain_lesions, _render_brain),
    fundus=(_sample_fundus, _sample_fundus_lesions, _render_fundus),
)


# ----------------------------------------------------------------------------- public API


def _check_modality(modality):
    """The modality, or a ValueError listing the valid ones."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
    return modality


def render_phantom(
    modality: str, rng: np.random.Generator, size: int = 128, abnormal: bool = False, rgb: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom subject, with one or two anomalies when `abnormal`.

    Returns the image, float32 in [0, 1] of shape (size, size), or (size, size, 3) when `rgb`
    (fundus only), and the mask, uint8 (size, size) in {0, 1}, all zero when not abnormal.
    The anatomy is drawn from `rng` before the anomalies, so two generators in the same state
    give the same subject with and without anomaly (same noise too); `rgb` changes only colour.
    """
    sample, sample_lesions, render = _SAMPLERS[_check_modality(modality)]
    size = _check_count("size", size, 16)
    if rgb and modality != "fundus":
        raise ValueError(f"rgb=True is supported for modality 'fundus' only, not {modality!r}")
    subject = sample(rng)
    lesions = sample_lesions(rng, subject) if abnormal else []
    image, mask = render(subject, lesions, size, bool(rgb))
    return image.astype(_F32), mask.astype(np.uint8)


def _check_count(name, value, minimum=0):
    """An integer argument >= minimum, or a ValueError naming it."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _abnormal_unlabeled(anomaly_rate, n_unlabeled):
    """How many unlabeled images are abnormal: anomaly_rate * n_unlabeled, which must be a whole number."""
    try:
        rate = float(anomaly_rate)
    except (TypeError, ValueError):
        raise ValueError(f"anomaly_rate must be a number in [0, 1], got {anomaly_rate!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"anomaly_rate must lie in [0, 1], got {anomaly_rate!r}")
    exact = rate * n_unlabeled
    k = round(exact)
    if abs(k - exact) > 1e-9:
        lo, hi = math.floor(exact), math.ceil(exact)
        raise ValueError(
            f"anomaly_rate={rate!r} with n_unlabeled={n_unlabeled} asks for {exact:.6g} abnormal unlabeled images, "
            f"not a whole number; reachable rates nearby are {lo}/{n_unlabeled}={lo / n_unlabeled:.6g} "
            f"and {hi}/{n_unlabeled}={hi / n_unlabeled:.6g}"
        )
    return k


def _labels(seed, role, n, n_abnormal):
    """Labels of a role's images by index: `n_abnormal` ones at seeded random indices."""
    labels = np.zeros(n, np.int64)
    labels[np.random.default_rng([seed, _LABEL_STREAM + ROLE_CODES[role]]).permutation(n)[:n_abnormal]] = 1
    return labels


def _save_png(path, array):
    """Write an 8-bit PNG (L or RGB) from a float image in [0, 1] or a uint8 array."""
    if array.dtype != np.uint8:
        array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(array).save(path)


_OUR_FILE = re.compile(r"^(normal|validation|unlabeled|test)_\d{5}\.png$")


def _existing_split(split_path, generator):
    """'same' if split_path was made by this generator with these parameters and its files exist;
    'ours' if made by this generator otherwise; 'none' if absent; refuses to overwrite anything else."""
    if not split_path.exists():
        return "none"
    try:
        old = json.loads(split_path.read_text())
        made_here = old.get("generator", {}).get("name") == GENERATOR
    except (ValueError, AttributeError):
        made_here = False
    if not made_here:
        raise ValueError(
            f"out_dir {split_path.parent} holds a split.json not written by the phantom generator; "
            "refusing to overwrite it: choose another out_dir"
        )
    if old["generator"] != generator:
        return "ours"
    root = split_path.parent
    listed = [e[k] for role in ROLES for e in old.get(role, []) for k in ("image", "mask") if k in e]
    return "same" if all((root / f).is_file() for f in listed) else "ours"


def _clear(out):
    """Remove the image and mask files a previous run of this generator wrote, and its split and README."""
    for sub in ("images", "masks"):
        folder = out / sub
        if folder.is_dir():
            for f in folder.iterdir():
                if _OUR_FILE.match(f.name):
                    f.unlink()
    for name in ("split.json", "README.txt"):
        (out / name).unlink(missing_ok=True)


def generate_phantom_dataset(
    out_dir,
    modality="cxr",
    n_normal=400,
    n_validation=40,
    n_unlabeled=400,
    anomaly_rate=0.6,
    n_test_normal=100,
    n_test_abnormal=100,
    size=128,
    seed=0,
    rgb=False,
) -> pathlib.Path:
    """Writes images and masks under out_dir and a split file out_dir/'split.json'; returns the split file path.

    Files: images/<role>_<index:05d>.png (roles normal, validation, unlabeled, test) and
    masks/test_<index:05d>.png (0/255, all zero for normal test images), README.txt, and the split
    (format ddad-split/1, docs/split_format.md). The split's "generator" key records the parameters:
    called again with the same ones, and the files still there, it returns at once.
    Raises ValueError for an unknown modality, bad counts, or an anomaly rate that n_unlabeled cannot
    realise exactly.
    """
    _check_modality(modality)
    counts = {
        name: _check_count(name, value, minimum)
        for name, value, minimum in (
            ("n_normal", n_normal, 1),
            ("n_validation", n_validation, 0),
            ("n_unlabeled", n_unlabeled, 0),
            ("n_test_normal", n_test_normal, 0),
            ("n_test_abnormal", n_test_abnormal, 0),
        )
    }
    if counts["n_test_normal"] + counts["n_test_abnormal"] < 1:
        raise ValueError("n_test_normal + n_test_abnormal must be >= 1: the split format needs a non-empty test set")
    seed = _check_count("seed", seed, 0)
    size = _check_count("size", size, 16)
    if rgb and modality != "fundus":
        raise ValueError(f"rgb=True is supported for modality 'fundus' only, not {modality!r}")
    n_abnormal = _abnormal_unlabeled(anomaly_rate, counts["n_unlabeled"])
    generator = dict(
        name=GENERATOR,
        version=GENERATOR_VERSION,
        modality=modality,
        **counts,
        anomaly_rate=float(anomaly_rate),
        size=size,
        seed=seed,
        rgb=bool(rgb),
    )
    out = pathlib.Path(out_dir)
    split_path = out / "split.json"
    state = _existing_split(split_path, generator)
    if state == "same":
        return split_path
    if state == "ours" or out.exists():
        _clear(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    plan = {
        "normal": np.zeros(counts["n_normal"], np.int64),
        "validation": np.zeros(counts["n_validation"], np.int64),
        "unlabeled": _labels(seed, "unlabeled", counts["n_unlabeled"], n_abnormal),
        "test": _labels(seed, "test", counts["n_test_normal"] + counts["n_test_abnormal"], counts["n_test_abnormal"]),
    }
    entries = {role: _write_role(out, modality, role, labels, size, seed, rgb) for role, labels in plan.items()}
    for role in ("unlabeled", "test"):  # listing order shuffled too, so labels are not sorted in any sense
        order = np.random.default_rng([seed, _ORDER_STREAM + ROLE_CODES[role]]).permutation(len(entries[role]))
        entries[role] = [entries[role][i] for i in order]
    for role in ("normal", "validation"):
        for e in entries[role]:
            del e["label"]

    description = (
        f"Synthetic {modality} phantoms from ddad_bundle scripts/data/phantoms.py (generator version "
        f"{GENERATOR_VERSION}), seed {seed}, {size}x{size}{' RGB' if rgb else ' grayscale'}; every image is "
        f"a distinct synthetic subject. Unlabeled: {n_abnormal} of {counts['n_unlabeled']} abnormal; "
        f"test: {counts['n_test_normal']} normal + {counts['n_test_abnormal']} abnormal with lesion masks."
    )
    realised = n_abnormal / counts["n_unlabeled"] if counts["n_unlabeled"] else 0.0  # equals the request when any
    split = {
        "format": FORMAT,
        "description": description,
        "seed": seed,
        "anomaly_rate": realised,
        "generator": generator,
        "normal": entries["normal"],
    }
    if counts["n_validation"]:  # absent (not empty) lets the loader hold out its own share of `normal`
        split["validation"] = entries["validation"]
    split["unlabeled"] = entries["unlabeled"]
    split["test"] = entries["test"]
    _write_readme(out, description, counts, n_abnormal)
    write_json_atomic(split, split_path, indent=1)  # written last: a half-made folder never looks complete
    return split_path


def _write_role(out, modality, role, labels, size, seed, rgb):
    """Render and write every image of one role (and test masks); returns split entries in index order."""
    entries = []
    for index, label in enumerate(labels):
        name = f"{role}_{index:05d}"
        rng = np.random.default_rng([seed, ROLE_CODES[role], index])
        image, mask = render_phantom(modality, rng, size, abnormal=bool(label), rgb=rgb)
        _save_png(out / "images" / f"{name}.png", image)
        entry = {"image": f"images/{name}.png", "patient_id": name, "label": int(label)}
        if role == "test":
            _save_png(out / "masks" / f"{name}.png", mask * np.uint8(255))
            entry["mask"] = f"masks/{name}.png"
        entries.append(entry)
    return entries


def _write_readme(out, description, counts, n_abnormal):
    """One paragraph saying what the folder holds, for someone who finds it without the code."""
    text = (
        f"{description} Counts: {counts['n_normal']} known-normal training images (images/normal_*), "
        f"{counts['n_validation']} validation normals (images/validation_*), {counts['n_unlabeled']} unlabeled "
        f"images (images/unlabeled_*, {n_abnormal} abnormal; labels in split.json for bookkeeping only), "
        f"{counts['n_test_normal'] + counts['n_test_abnormal']} test images (images/test_*) with binary lesion "
        "masks (masks/test_*, 0/255, empty for normal images). No real patient data: regenerate with "
        '`python -m scripts.data.phantoms` from ddad_bundle/ using the parameters in split.json\'s "generator" key.\n'
    )
    (out / "README.txt").write_text(text)


def main(argv=None):
    """Command line: generate a phantom data set and print the split file's path."""
    ap = argparse.ArgumentParser(prog="python -m scripts.data.phantoms", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", choices=MODALITIES, default="cxr")
    ap.add_argument("--out", required=True, help="output folder (split.json, images/, masks/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-normal", type=int, default=400)
    ap.add_argument("--n-validation", type=int, default=40)
    ap.add_argument("--n-unlabeled", type=int, default=400)
    ap.add_argument("--anomaly-rate", type=float, default=0.6)
    ap.add_argument("--n-test-normal", type=int, default=100)
    ap.add_argument("--n-test-abnormal", type=int, default=100)
    ap.add_argument("--rgb", action="store_true", help="3-channel colour images (fundus only)")
    a = ap.parse_args(argv)
    try:
        path = generate_phantom_dataset(
            a.out,
            a.modality,
            a.n_normal,
            a.n_validation,
            a.n_unlabeled,
            a.anomaly_rate,
            a.n_test_normal,
            a.n_test_abnormal,
            a.size,
            a.seed,
            a.rgb,
        )
    except ValueError as e:
        ap.error(str(e))
    print(path)


if __name__ == "__main__":
    main()
