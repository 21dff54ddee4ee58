"""SynthMER: a procedural micro-expression generator that knows its own ground truth.

Why: the real MER datasets are licensed and cannot be bundled or downloaded, yet the project
must train, test and demo out of the box. SynthMER draws parametric faces (one identity per
subject) and moves them with FACS Action Units rendered as small, smooth, local displacement
fields, with a micro-expression time profile and the nuisances that make real clips hard.
Because it rendered the motion itself, it knows the true AUs, emotion, onset/apex/offset and
the true apex flow, so it can grade recognition, explanations and the optical-flow step.

Geometry follows :data:`deft_llm.facs.REGIONS`: the canonical face fills the crop, so the
region boxes line up with the drawn brows, eyes, nose, mouth and chin, up to each subject's
crop jitter (below).

Rendering
---------
* Face: an ellipse with a skin tone and a procedural texture (multi-scale smoothed noise plus
  pores), brows, eyes, nose and mouth drawn with cv2 on a ``supersample`` x larger canvas, on a
  static textured background. Texture matters: optical flow needs gradients to track.
* AU: a Gaussian-windowed displacement field centred in each of the AU's regions (one side
  only for ``L``/``R`` codes), pointing along :func:`facs.au_direction`; AU23 / AU24 (no net
  direction) contract the lips horizontally / vertically. Peak displacement from the FACS
  intensity letter: A 0.4, B 0.7, C 1.0, D 1.4, E 1.8 px at 128 px (x U(0.9, 1.1), clipped to
  0.3-2 px), scaled with ``image_size``.
* Time: raised-cosine rise onset -> apex and fall apex -> offset; onset -> offset lasts
  0.20-0.45 s, apex at 35-55 % of it; ``PRE_FRAMES`` neutral frames before the onset and
  ``POST_FRAMES`` after the offset. fps must be an integer in 30-200.
* Wrinkles: the FACS appearance changes of AU1, 2, 4, 6, 9, 10, 12, 14, 15 and 17 (forehead
  lines, glabellar furrows, crow's feet, nasal wrinkles, nasolabial furrow, dimples, chin boss)
  darken the skin along a few strokes, up to ``WRINKLE_DEPTH`` (35 %) at intensity E, with the
  AU's time profile. The flow barely sees them; they are what tells AU9 from AU10 on a face, and
  AU1 from AU4 where their brow motion cancels. ``SynthConfig.wrinkles`` scales them (0: off).
* Crop: each subject's face sits in the crop at its own scale (0.93-1.07) and offset (+-2.5 %),
  as real face crops do, so the region boxes line up with the features only on average; the
  onset frame shows where they are. ``SynthConfig.crop_jitter`` scales this (0: all aligned).
* Frames are warped with ``cv2.remap`` (backward map ``x - D(x)``, so the forward flow is D),
  then area-downsampled to ``image_size``.

Nuisances (strengths in :class:`Nuisance`, px at 128 px, scaled with ``image_size``)
------------------------------------------------------------------------------------
* ``head_translation``: std (px) of a smooth random head translation per frame.
* ``head_rotation``: std (degrees) of a smooth random head rotation about the face centre.
* ``blink_prob`` / ``blink_amplitude``: chance of one blink per clip (AU45, 0.10-0.15 s, at a
  random time) and the peak downward shift (px) of the upper lids.
* ``lighting_drift``: relative brightness change over the clip (half of it as a left-right ramp).
* ``noise_std``: Gaussian sensor noise, gray levels on the 0-255 scale, new every frame.
Presets: :data:`DIFFICULTY` (``none``, ``easy``, ``medium`` (default), ``hard``).

AUs that share a region and pull in opposite directions cancel in that region's mean motion,
as on real faces: AU1 (inner brow up) with AU4 (inner brow down and inward) in sadness and
fear is the main case, so flow-based checks miss one of the two there.

The labelled AUs equal the rendered AUs unless ``label_noise`` > 0, which adds an annotation
error (a spurious labelled AU, or a rendered AU left out of the label) to that share of clips:
the dual constraint of Uni-MER is meant to catch exactly those.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .. import facs

PRE_FRAMES = 2
POST_FRAMES = 2
INTENSITY_PX = {"A": 0.4, "B": 0.7, "C": 1.0, "D": 1.4, "E": 1.8}  # peak px at 128 px
INTENSITY_WEIGHTS = {"A": 0.15, "B": 0.3, "C": 0.3, "D": 0.17, "E": 0.08}
# AUs SynthMER renders (every AU of the FACS table except the blink codes, which are nuisances).
RENDERED_AUS: tuple[int, ...] = tuple(n for n in facs.ACTION_UNITS if n not in (43, 45))


@dataclass(frozen=True)
class Nuisance:
    """Nuisance strengths; see the module docstring for units."""

    head_translation: float = 0.25
    head_rotation: float = 0.15
    blink_prob: float = 0.3
    blink_amplitude: float = 3.0
    lighting_drift: float = 0.03
    noise_std: float = 1.0


DIFFICULTY: dict[str, Nuisance] = {
    "none": Nuisance(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "easy": Nuisance(0.1, 0.05, 0.1, 2.0, 0.01, 0.5),
    "medium": Nuisance(),
    "hard": Nuisance(0.6, 0.4, 0.6, 4.0, 0.08, 2.5),
}

# --------------------------------------------------------------------------------------------
# Emotions as AU prototypes (mer-facts.md): each variant is (core AUs, optional AUs).
# Core AUs are always present; one optional AU may be dropped; an extra AU may be added.
# --------------------------------------------------------------------------------------------
PROTOTYPES: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "happiness": [((12,), (6,))],
    "surprise": [((1, 2), (5, 26))],
    "disgust": [((9,), (4,)), ((10,), (4,))],
    "sadness": [((4, 15), (1,))],
    "anger": [((4, 7), (5, 23))],
    "fear": [((4, 20), (1, 2, 5))],
    "contempt": [((12,), ()), ((14,), ())],       # always unilateral
    "repression": [((14,), ()), ((15,), ()), ((17,), ()), ((14, 17), ()), ((15, 17), ())],
}
# "others": 1-2 AUs from this pool, which holds no prototype's core AU.
OTHERS_POOL: tuple[int, ...] = (5, 7, 23, 24, 25, 26)
EXTRA_POOL: tuple[int, ...] = (7, 24, 25)  # plausible extras that do not create another core
UNILATERAL_AUS = {1, 2, 4, 5, 6, 7, 12, 14, 15, 20}  # bilateral AUs that may occur on one side


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides a SynthMER clip; a clip is a pure function of (config, index)."""

    image_size: int = 128
    fps: int = 100
    n_subjects: int = 16
    seed: int = 0
    emotions: tuple[str, ...] = tuple(facs.EMOTIONS)
    unilateral_prob: float = 0.2
    variation_prob: float = 0.3   # chance of dropping one optional AU; same for adding an extra
    label_noise: float = 0.0
    wrinkles: float = 1.0         # strength of the FACS appearance changes (0: motion only)
    crop_jitter: float = 1.0      # per-subject face scale/offset in the crop (0: every face aligned)
    difficulty: str = "medium"
    nuisance: Nuisance | None = None  # overrides ``difficulty`` when given
    supersample: int = 2

    def __post_init__(self):
        if not isinstance(self.fps, int) or not 30 <= self.fps <= 200:
            raise ValueError(f"SynthConfig.fps must be an integer in 30-200, got {self.fps!r}")
        if self.image_size < 32:
            raise ValueError(f"SynthConfig.image_size must be >= 32, got {self.image_size}")
        if self.n_subjects < 1:
            raise ValueError("SynthConfig.n_subjects must be >= 1")
        unknown = [e for e in self.emotions if e not in facs.EMOTIONS]
        if unknown:
            raise ValueError(f"SynthConfig.emotions: unknown {unknown}; known {facs.EMOTIONS}")
        if self.wrinkles < 0 or self.crop_jitter < 0:
            raise ValueError("SynthConfig.wrinkles and crop_jitter must be >= 0")
        if self.nuisance is None and self.difficulty not in DIFFICULTY:
            raise ValueError(f"SynthConfig.difficulty must be one of {list(DIFFICULTY)}")

    @property
    def nuisances(self) -> Nuisance:
        return self.nuisance if self.nuisance is not None else DIFFICULTY[self.difficulty]

    @property
    def scale(self) -> float:
        """Pixels at ``image_size`` per pixel at 128 px."""
        return self.image_size / 128.0


@dataclass(frozen=True)
class RenderedAU:
    number: int
    side: str | None      # "left"/"right" (subject's side) or None for both sides
    intensity: str        # FACS letter A-E
    peak_px: float        # peak displacement at image_size

    @property
    def code(self) -> str:
        prefix = {"left": "L", "right": "R"}.get(self.side, "")
        return f"{prefix}{self.number}{self.intensity}"

    @property
    def regions(self) -> tuple[str, ...]:
        return facs.AUCode(self.number, self.side).regions


@dataclass
class ClipSpec:
    """The sampled description of one clip (everything random is decided here)."""

    index: int
    subject: str
    clip: str
    emotion: str
    aus: list[RenderedAU]            # rendered (true) AUs
    label_aus: list[str]             # labelled AU codes (differ from aus under label_noise)
    onset: int
    apex: int
    offset: int
    num_frames: int
    blink: tuple[int, int] | None    # (start, end) frame of the blink, if any
    seed: int

    @property
    def au_string(self) -> str:
        return "+".join(self.label_aus)


@dataclass
class SynthClip:
    """A rendered clip: RGB frames (N, S, S, 3) uint8, and the true expression flow at the apex."""

    spec: ClipSpec
    frames: np.ndarray
    flow_true: np.ndarray            # (S, S, 2) float32, pixels, expression only (no head/blink)
    fps: int

    def labels(self) -> dict:
        s = self.spec
        return {
            "dataset": "synthmer", "subject": s.subject, "clip": s.clip, "fps": self.fps,
            "onset": s.onset, "apex": s.apex, "offset": s.offset, "num_frames": s.num_frames,
            "emotion": s.emotion, "composite": facs.composite_class(s.emotion),
            "au_string": s.au_string,
            "true_aus": [asdict(a) | {"code": a.code} for a in s.aus],
            "blink": list(s.blink) if s.blink else None,
            "apex_displacement_px": float(np.abs(self.flow_true).max(initial=0.0)),
        }


# --------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Face parameters of one subject (fractions of the face crop unless said)."""

    face_width: float
    face_height: float
    skin: tuple[float, float, float]   # RGB 0-255
    feature_dx: float                  # small shift of the whole feature layout
    feature_dy: float
    eye_width: float
    eye_height: float
    brow_thickness: float
    brow_tilt: float
    mouth_width: float
    lip_color: tuple[float, float, float]
    texture_seed: int
    texture_strength: float            # gray levels of the skin texture
    crop_scale: float = 1.0            # face size in the crop, relative to the canonical face
    crop_dx: float = 0.0               # face centre offset in the crop
    crop_dy: float = 0.0


def make_identity(subject: int, seed: int = 0) -> Identity:
    """Deterministic identity for subject number ``subject`` under ``seed``."""
    rng = np.random.default_rng([seed, 7919, subject])
    tone = rng.uniform(0.0, 1.0)
    skin = tuple(float(c) for c in (np.array([236, 200, 170]) * (1 - tone) + np.array([120, 80, 55]) * tone
                                     + rng.normal(0, 6, 3)))
    return Identity(
        face_width=rng.uniform(0.40, 0.46), face_height=rng.uniform(0.47, 0.52),
        skin=skin, feature_dx=rng.uniform(-0.012, 0.012), feature_dy=rng.uniform(-0.012, 0.012),
        eye_width=rng.uniform(0.10, 0.13), eye_height=rng.uniform(0.035, 0.05),
        brow_thickness=rng.uniform(0.018, 0.03), brow_tilt=rng.uniform(-0.02, 0.02),
        mouth_width=rng.uniform(0.28, 0.34),
        lip_color=tuple(float(c) for c in np.array(skin) * np.array([0.85, 0.55, 0.55])),
        texture_seed=int(rng.integers(2**31)), texture_strength=rng.uniform(10, 18),
        crop_scale=rng.uniform(0.93, 1.07), crop_dx=rng.uniform(-0.025, 0.025),
        crop_dy=rng.uniform(-0.025, 0.025),
    )


def _smooth_noise(rng: np.random.Generator, size: int, sigmas: tuple[float, ...]) -> np.ndarray:
    """Sum of Gaussian-blurred white noise at several scales, unit std."""
    out = np.zeros((size, size), np.float32)
    for sigma in sigmas:
        layer = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
        out += layer / max(float(layer.std()), 1e-6)
    return out / max(float(out.std()), 1e-6)


def render_face(identity: Identity, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neutral face layer (size, size, 3) float32, its alpha (size, size) and a background."""
    ident = identity
    rng = np.random.default_rng(ident.texture_seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = ident.skin
    px = lambda fx, fy: (int(round((fx + ident.feature_dx) * size * 16)),  # noqa: E731
                         int(round((fy + ident.feature_dy) * size * 16)))
    length = lambda f: max(int(round(f * size * 16)), 16)  # noqa: E731
    thick = lambda f: max(int(round(f * size)), 1)  # noqa: E731  (thickness is not sub-pixel)
    shift = 4  # cv2 sub-pixel drawing: coordinates in 1/16 px

    def ellipse(centre, axes, colour, angle=0.0, thickness=-1):
        cv2.ellipse(img, px(*centre), (length(axes[0]), length(axes[1])), angle, 0, 360, colour,
                    thickness, cv2.LINE_AA, shift)

    # Brows (brow line y ~ 0.27), one per side, inner end lower than outer by brow_tilt.
    brow = tuple(c * 0.35 for c in ident.skin)
    for sign in (-1, 1):
        inner, outer = 0.5 + sign * 0.06, 0.5 + sign * 0.33
        pts = np.array([px(outer, 0.275 - ident.brow_tilt), px(0.5 + sign * 0.2, 0.262),
                        px(inner, 0.282 + ident.brow_tilt)], np.int32)
        cv2.polylines(img, [pts], False, brow, thick(ident.brow_thickness), cv2.LINE_AA, shift)
    # Eyes at y 0.40, centres x 0.30 / 0.70: sclera, iris, upper lid line.
    for cx in (0.30, 0.70):
        ellipse((cx, 0.405), (ident.eye_width / 2, ident.eye_height / 2), (235, 232, 225))
        ellipse((cx, 0.405), (ident.eye_height * 0.45, ident.eye_height * 0.45), (70, 50, 40))
        ellipse((cx, 0.405), (ident.eye_height * 0.18, ident.eye_height * 0.18), (15, 10, 10))
        cv2.ellipse(img, px(cx, 0.405), (length(ident.eye_width / 2), length(ident.eye_height / 2)),
                    0, 180, 360, tuple(c * 0.4 for c in ident.skin), thick(0.008), cv2.LINE_AA, shift)
    # Nose: bridge shading and nostrils around y 0.58.
    nose_dark = tuple(c * 0.7 for c in ident.skin)
    cv2.line(img, px(0.47, 0.45), px(0.46, 0.57), nose_dark, thick(0.01), cv2.LINE_AA, shift)
    for cx in (0.45, 0.55):
        ellipse((cx, 0.59), (0.022, 0.012), tuple(c * 0.45 for c in ident.skin))
    # Mouth at y 0.75: upper and lower lip, the lip line.
    half = ident.mouth_width / 2
    ellipse((0.5, 0.735), (half * 0.85, 0.018), ident.lip_color)
    ellipse((0.5, 0.765), (half * 0.8, 0.024), ident.lip_color)
    cv2.line(img, px(0.5 - half, 0.75), px(0.5 + half, 0.75), tuple(c * 0.5 for c in ident.lip_color),
             thick(0.008), cv2.LINE_AA, shift)
    # Chin crease.
    cv2.ellipse(img, px(0.5, 0.88), (length(0.07), length(0.02)), 0, 200, 340, nose_dark,
                thick(0.006), cv2.LINE_AA, shift)
    # Skin texture: multi-scale noise plus pores, so flow has something to track everywhere.
    texture = _smooth_noise(rng, size, (size / 256, size / 96, size / 40)) * ident.texture_strength
    pores = (rng.random((size, size)) < 0.02).astype(np.float32)
    texture -= cv2.GaussianBlur(pores, (0, 0), max(size / 256, 0.6)) * 25
    img += texture[..., None]
    # Alpha: the face ellipse with a soft border; background: static, textured, cooler colour.
    alpha = np.zeros((size, size), np.float32)
    cv2.ellipse(alpha, px(0.5 - ident.feature_dx, 0.53 - ident.feature_dy),
                (length(ident.face_width), length(ident.face_height)), 0, 0, 360, 1.0, -1,
                cv2.LINE_AA, shift)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(size / 128, 0.5))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = 1.0 - 0.25 * ((xx - 0.5) ** 2 / 0.2 + (yy - 0.5) ** 2 / 0.3)
    img *= shade[..., None]
    bg_rng = np.random.default_rng(ident.texture_seed + 1)
    background = np.empty((size, size, 3), np.float32)
    background[:] = bg_rng.uniform(60, 140, 3)
    background += _smooth_noise(bg_rng, size, (size / 64, size / 16))[..., None] * 12
    return img, alpha, background


# --------------------------------------------------------------------------------------------
# AU displacement fields
# --------------------------------------------------------------------------------------------
_EYE_CENTRE_Y = {5: 0.35, 7: 0.7, 43: 0.35, 45: 0.35}  # upper lid vs lower lid, fraction of box


def au_field(au: int, side: str | None, peak_px: float, size: int) -> np.ndarray:
    """Displacement field (size, size, 2) float32 of one AU at ``peak_px`` peak displacement."""
    field_ = np.zeros((size, size, 2), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for region in facs.AUCode(au, side).regions:
        x0, y0, x1, y1 = facs.REGIONS[region]
        w, h = (x1 - x0) * size, (y1 - y0) * size
        cx = (x0 + x1) / 2 * size
        cy = (y0 + _EYE_CENTRE_Y.get(au, 0.5) * (y1 - y0)) * size
        window = np.exp(-0.5 * (((xx - cx) / (0.3 * w)) ** 2 + ((yy - cy) / (0.3 * h)) ** 2))
        direction = facs.au_direction(au, region)
        if direction is not None:
            field_[..., 0] += peak_px * direction[0] * window
            field_[..., 1] += peak_px * direction[1] * window
        else:
            # AU23 lips narrow: horizontal contraction toward the lips' centre; AU24 lips
            # pressed: vertical contraction toward the lip line. Scaled so the largest
            # displacement is peak_px, like the directional AUs.
            axis, offset, scale = (0, xx - cx, 0.3 * w) if au == 23 else (1, yy - cy, 0.3 * h)
            contraction = -(offset / scale) * window
            field_[..., axis] += peak_px * contraction / max(float(np.abs(contraction).max()), 1e-6)
    return field_


# FACS appearance changes: the wrinkles and furrows an AU makes, as polylines on the subject's
# right half of the canonical face (x < 0.5; mirrored for the left), plus midline strokes.
# They darken the skin with the AU's time profile, so they are texture the flow barely sees.
_RIGHT_STROKES: dict[int, list[list[tuple[float, float]]]] = {
    1: [[(0.40, y), (0.45, y - 0.008), (0.50, y - 0.01)] for y in (0.125, 0.155, 0.185)],
    2: [[(0.20, y), (0.27, y - 0.012), (0.35, y - 0.006)] for y in (0.15, 0.18)],
    4: [[(0.475, 0.215), (0.472, 0.265), (0.478, 0.315)]],
    6: [[(0.155, 0.41), (0.095, 0.37)], [(0.15, 0.42), (0.085, 0.425)], [(0.155, 0.43), (0.095, 0.475)]],
    9: [[(0.44, y), (0.47, y - 0.008), (0.50, y - 0.009)] for y in (0.455, 0.48, 0.505)],
    10: [[(0.42, 0.58), (0.395, 0.62), (0.38, 0.665)]],
    12: [[(0.395, 0.62), (0.36, 0.67), (0.335, 0.72)]],
    14: [[(0.31, 0.735), (0.305, 0.755), (0.31, 0.775)]],
    15: [[(0.33, 0.79), (0.345, 0.83)]],
    17: [[(0.44, 0.87), (0.47, 0.875)], [(0.46, 0.90), (0.49, 0.905)], [(0.42, 0.895), (0.44, 0.91)]],
}
WRINKLE_DEPTH = 0.35   # darkening of the skin on a stroke at intensity E (1.8 px); x SynthConfig.wrinkles
WRINKLE_AUS: tuple[int, ...] = tuple(_RIGHT_STROKES)


def wrinkle_map(au: int, side: str | None, size: int) -> np.ndarray:
    """Where AU ``au`` wrinkles the skin, (size, size) float32 in [0, 1], canonical face coords.

    Zero for AUs without a FACS appearance change here (e.g. AU5, AU26: motion only).
    """
    out = np.zeros((size, size), np.float32)
    sides = ("right", "left") if side is None else (side,)
    for stroke in _RIGHT_STROKES.get(au, []):
        for s in sides:
            points = [(x if s == "right" else 1.0 - x, y) for x, y in stroke]
            pts = np.array([[int(round(x * size * 16)), int(round(y * size * 16))] for x, y in points],
                           np.int32)
            cv2.polylines(out, [pts], False, 1.0, max(int(round(size / 128)), 1), cv2.LINE_AA, 4)
    return cv2.GaussianBlur(out, (0, 0), max(size / 256, 0.5))


def _profile(t: np.ndarray, onset: float, apex: float, offset: float) -> np.ndarray:
    """Raised-cosine rise onset -> apex and fall apex -> offset, 0 outside."""
    out = np.zeros_like(t, dtype=np.float64)
    rise = (t >= onset) & (t <= apex)
    out[rise] = 0.5 * (1 - np.cos(np.pi * (t[rise] - onset) / max(apex - onset, 1e-6)))
    fall = (t > apex) & (t <= offset)
    out[fall] = 0.5 * (1 + np.cos(np.pi * (t[fall] - apex) / max(offset - apex, 1e-6)))
    return out


# --------------------------------------------------------------------------------------------
# Sampling a clip
# --------------------------------------------------------------------------------------------
def _pick_aus(rng: np.random.Generator, emotion: str, cfg: SynthConfig) -> list[tuple[int, str | None]]:
    if emotion == "others":
        count = 1 if rng.random() < 0.5 else 2
        numbers = sorted(int(n) for n in rng.choice(OTHERS_POOL, size=count, replace=False))
    else:
        variants = PROTOTYPES[emotion]
        core, optional = variants[int(rng.integers(len(variants)))]
        optional = list(optional)
        if optional and rng.random() < cfg.variation_prob:
            optional.pop(int(rng.integers(len(optional))))          # a missing AU
        numbers = list(core) + optional
        if rng.random() < cfg.variation_prob:                        # an extra AU
            extra = [n for n in EXTRA_POOL if n not in numbers]
            if extra:
                numbers.append(int(rng.choice(extra)))
        numbers = sorted(set(numbers))
    sided = []
    contempt_side = ("left", "right")[int(rng.integers(2))]
    for n in numbers:
        if emotion == "contempt":
            sided.append((n, contempt_side))
        elif n in UNILATERAL_AUS and rng.random() < cfg.unilateral_prob:
            sided.append((n, ("left", "right")[int(rng.integers(2))]))
        else:
            sided.append((n, None))
    return sided


def sample_clip(index: int, cfg: SynthConfig) -> ClipSpec:
    """Decide subject, emotion, AUs, timing and blink of clip ``index`` (deterministic)."""
    rng = np.random.default_rng([cfg.seed, 104729, index])
    subject = index % cfg.n_subjects
    emotion = cfg.emotions[int(rng.integers(len(cfg.emotions)))]
    aus = []
    letters = list(INTENSITY_WEIGHTS)
    weights = np.array(list(INTENSITY_WEIGHTS.values()))
    for number, side in _pick_aus(rng, emotion, cfg):
        letter = letters[int(rng.choice(len(letters), p=weights / weights.sum()))]
        peak = float(np.clip(INTENSITY_PX[letter] * rng.uniform(0.9, 1.1), 0.3, 2.0)) * cfg.scale
        aus.append(RenderedAU(number, side, letter, peak))
    labels = [a.code for a in aus]
    if cfg.label_noise > 0 and rng.random() < cfg.label_noise:
        if len(labels) > 1 and rng.random() < 0.4:
            labels.pop(int(rng.integers(len(labels))))               # a rendered AU not labelled
        else:
            rendered = {a.number for a in aus}
            spurious = [n for n in RENDERED_AUS if n not in rendered]
            labels.append(str(int(rng.choice(spurious))))            # a labelled AU never rendered
    fps = cfg.fps
    duration = rng.uniform(0.20, 0.45)
    onset = PRE_FRAMES
    offset = onset + max(int(round(duration * fps)), 4)
    apex = onset + max(int(round(rng.uniform(0.35, 0.55) * (offset - onset))), 2)
    num_frames = offset + 1 + POST_FRAMES
    blink = None
    if rng.random() < cfg.nuisances.blink_prob:
        length = max(int(round(rng.uniform(0.10, 0.15) * fps)), 3)
        start = int(rng.integers(0, max(num_frames - length, 1)))
        blink = (start, start + length)
    return ClipSpec(index=index, subject=f"sub{subject + 1:02d}", clip=f"clip{index:05d}",
                    emotion=emotion, aus=aus, label_aus=labels, onset=onset, apex=apex,
                    offset=offset, num_frames=num_frames, blink=blink,
                    seed=int(rng.integers(2**31)))


_IDENTITY_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _identity(subject: str, cfg: SynthConfig) -> Identity:
    """The identity of ``subject`` ("sub01", ...) under ``cfg.seed``."""
    return make_identity(int(subject[3:]) - 1, cfg.seed)


def _face_layers(subject: str, cfg: SynthConfig, size: int):
    key = (subject, cfg.seed, size)
    if key not in _IDENTITY_CACHE:
        if len(_IDENTITY_CACHE) >= 32:  # bounded: memory must not grow with the number of clips
            _IDENTITY_CACHE.clear()
        _IDENTITY_CACHE[key] = render_face(_identity(subject, cfg), size)
    return _IDENTITY_CACHE[key]


def _crop_transform(subject: str, cfg: SynthConfig, size: int) -> np.ndarray:
    """The subject's 2x3 affine from canonical face to crop pixels (scale about the centre + shift)."""
    ident = _identity(subject, cfg)
    scale = 1.0 + (ident.crop_scale - 1.0) * cfg.crop_jitter
    shift_x, shift_y = (ident.crop_dx * cfg.crop_jitter * size, ident.crop_dy * cfg.crop_jitter * size)
    centre = size / 2.0
    return np.array([[scale, 0.0, centre * (1 - scale) + shift_x],
                     [0.0, scale, centre * (1 - scale) + shift_y]], np.float32)


def render_clip(spec: ClipSpec, cfg: SynthConfig) -> SynthClip:
    """Render the frames of ``spec``: warp the neutral face by AU field + nuisances per frame.

    The AU fields and wrinkles live in canonical face coordinates; the subject's crop transform
    (:func:`_crop_transform`) maps them into the frame, so the true flow is in frame pixels.
    """
    ss = max(int(cfg.supersample), 1)
    big = cfg.image_size * ss
    face, alpha, background = _face_layers(spec.subject, cfg, big)
    layer = np.dstack([face * alpha[..., None], alpha])  # premultiplied, so edges blend cleanly
    nuisance = cfg.nuisances
    rng = np.random.default_rng(spec.seed)
    crop = _crop_transform(spec.subject, cfg, big)
    scale = float(crop[0, 0])
    to_frame = lambda f: cv2.warpAffine(f, crop, (big, big), flags=cv2.INTER_LINEAR)  # noqa: E731
    expression = np.zeros((big, big, 2), np.float32)   # canonical coords and px (to_frame below)
    wrinkles = np.zeros((big, big), np.float32)        # canonical face coords
    for au in spec.aus:
        expression += au_field(au.number, au.side, au.peak_px * ss, big)
        if cfg.wrinkles > 0 and au.number in WRINKLE_AUS:
            depth = WRINKLE_DEPTH * cfg.wrinkles * min(au.peak_px / cfg.scale / 1.8, 1.0)
            wrinkles += wrinkle_map(au.number, au.side, big) * np.float32(depth)
    wrinkles = np.minimum(wrinkles, 0.8)[..., None]
    expression = to_frame(expression)
    blink_field = to_frame(au_field(45, None, nuisance.blink_amplitude * cfg.scale * ss, big))
    t = np.arange(spec.num_frames, dtype=np.float64)
    weight = _profile(t, spec.onset, spec.apex, spec.offset)
    blink_weight = np.zeros_like(t)
    if spec.blink:
        start, end = spec.blink
        blink_weight = _profile(t, start, (start + end) / 2, end)
    # Smooth random head motion: low-pass filtered noise, scaled to the documented std.
    def smooth_walk(std: float) -> np.ndarray:
        if std <= 0:
            return np.zeros(spec.num_frames)
        walk = cv2.GaussianBlur(rng.standard_normal((spec.num_frames, 1)), (1, 0), 2.0).ravel()
        return walk / max(float(walk.std()), 1e-6) * std
    tx = smooth_walk(nuisance.head_translation * cfg.scale * ss)
    ty = smooth_walk(nuisance.head_translation * cfg.scale * ss)
    rot = smooth_walk(nuisance.head_rotation)
    drift_sign = 1.0 if rng.random() < 0.5 else -1.0
    ramp = (np.arange(cfg.image_size, dtype=np.float32) / cfg.image_size - 0.5)[None, :, None]
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    centre = big / 2.0
    frames = np.empty((spec.num_frames, cfg.image_size, cfg.image_size, 3), np.uint8)
    for i in range(spec.num_frames):
        disp = expression * np.float32(weight[i])
        if blink_weight[i] > 0:
            disp = disp + blink_field * np.float32(blink_weight[i])
        # Backward map: output pixel y undoes the head motion (R^-1 (y - c - t) + c), then the
        # crop transform, then the expression displacement D: it samples the face there.
        theta = math.radians(rot[i])
        cos, sin = math.cos(theta), math.sin(theta)
        X, Y = xx - float(centre + tx[i]), yy - float(centre + ty[i])
        head_x, head_y = cos * X + sin * Y + centre, -sin * X + cos * Y + centre
        map_x = ((head_x - crop[0, 2]) / scale - disp[..., 0]).astype(np.float32, copy=False)
        map_y = ((head_y - crop[1, 2]) / scale - disp[..., 1]).astype(np.float32, copy=False)
        shaded = layer
        if weight[i] > 0 and cfg.wrinkles > 0:
            shaded = layer.copy()
            shaded[..., :3] *= 1.0 - wrinkles * np.float32(weight[i])
        warped = cv2.remap(shaded, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        image = warped[..., :3] + background * (1.0 - warped[..., 3:])
        if ss > 1:
            image = cv2.resize(image, (cfg.image_size, cfg.image_size), interpolation=cv2.INTER_AREA)
        progress = i / max(spec.num_frames - 1, 1)
        drift = nuisance.lighting_drift * progress * drift_sign
        image = image * (1.0 + drift + drift * ramp)
        if nuisance.noise_std > 0:
            image = image + rng.standard_normal(image.shape).astype(np.float32) * nuisance.noise_std
        frames[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    flow_true = expression * np.float32(weight[spec.apex] * scale)
    if ss > 1:
        flow_true = cv2.resize(flow_true, (cfg.image_size, cfg.image_size),
                               interpolation=cv2.INTER_AREA) / ss
    return SynthClip(spec=spec, frames=frames, flow_true=flow_true.astype(np.float32), fps=cfg.fps)


class SynthMER:
    """The generator as a sequence: ``SynthMER(config, n_clips)[i]`` renders clip i on demand."""

    def __init__(self, config: SynthConfig | None = None, n_clips: int = 100):
        self.config = config or SynthConfig()
        self.n_clips = int(n_clips)

    def __len__(self) -> int:
        return self.n_clips

    def spec(self, index: int) -> ClipSpec:
        return sample_clip(index, self.config)

    def __getitem__(self, index: int) -> SynthClip:
        if not 0 <= index < self.n_clips:
            raise IndexError(f"SynthMER has {self.n_clips} clips, asked for {index}")
        return render_clip(self.spec(index), self.config)

    def __iter__(self):
        for i in range(self.n_clips):
            yield self[i]

    def records(self):
        """The clips as reader records (frames rendered lazily), for the Uni-MER builder."""
        from .readers import ClipRecord
        for i in range(self.n_clips):
            yield ClipRecord.from_synth_spec(self.spec(i), self.config, loader=self._loader(i))

    def _loader(self, index: int):
        return lambda: self[index]

    def difficulty(self, sample: int | None = None) -> dict:
        """Difficulty report: mean apex displacement (from the specs) and the nuisance levels."""
        n = self.n_clips if sample is None else min(sample, self.n_clips)
        specs = [self.spec(i) for i in range(n)]
        return difficulty_report(specs, self.config)


def difficulty_report(specs: list[ClipSpec], cfg: SynthConfig) -> dict:
    """Mean/min/max apex displacement (px at ``image_size`` and at 128 px) and nuisance levels."""
    peaks = [a.peak_px for s in specs for a in s.aus]
    return {
        "clips": len(specs),
        "image_size": cfg.image_size,
        "fps": cfg.fps,
        "mean_apex_displacement_px": float(np.mean(peaks)) if peaks else 0.0,
        "mean_apex_displacement_px_at_128": float(np.mean(peaks)) / cfg.scale if peaks else 0.0,
        "min_apex_displacement_px": float(np.min(peaks)) if peaks else 0.0,
        "max_apex_displacement_px": float(np.max(peaks)) if peaks else 0.0,
        "mean_aus_per_clip": float(np.mean([len(s.aus) for s in specs])) if specs else 0.0,
        "blink_rate": float(np.mean([s.blink is not None for s in specs])) if specs else 0.0,
        "label_noise": cfg.label_noise,
        "difficulty": cfg.difficulty if cfg.nuisance is None else "custom",
        "nuisance": asdict(cfg.nuisances),
    }


# --------------------------------------------------------------------------------------------
# Lossless video I/O (PyAV, FFV1 in Matroska)
# --------------------------------------------------------------------------------------------
def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """Write RGB uint8 frames (N, H, W, 3) losslessly (FFV1, RGB) to ``path``."""
    import av

    path = str(path)
    with av.open(path, "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(int(fps), 1))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "bgr0"   # packed RGB: lossless (gbrp 8-bit is not offered by FFV1 here)
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24").reformat(format="bgr0")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a video into RGB uint8 frames (N, H, W, 3) with PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"cannot decode video {path}: {err}") from err
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def write_synthmer(out_dir: str | os.PathLike, n_clips: int, config: SynthConfig | None = None,
                   progress: bool = True) -> dict:
    """Write ``n_clips`` clips to ``out_dir``: per clip ``<subject>/<clip>/`` with ``video.mkv``
    (lossless), ``labels.json`` and ``flow_apex.npy`` (true expression flow at the apex,
    (S, S, 2) float32 px); plus ``index.jsonl`` (all labels), ``config.json`` and
    ``difficulty.json``. Returns the difficulty report."""
    from tqdm.auto import tqdm

    cfg = config or SynthConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    synth = SynthMER(cfg, n_clips)
    specs = []
    with open(out / "index.jsonl", "w", encoding="utf-8") as index:
        for i in tqdm(range(n_clips), desc="SynthMER", disable=not progress):
            clip = synth[i]
            folder = out / clip.spec.subject / clip.spec.clip
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / "video.mkv", clip.frames, cfg.fps)
            np.save(folder / "flow_apex.npy", clip.flow_true)
            labels = clip.labels()
            (folder / "labels.json").write_text(json.dumps(labels, indent=1), encoding="utf-8")
            index.write(json.dumps(labels) + "\n")
            specs.append(clip.spec)
    config_dict = asdict(cfg) | {"nuisance": asdict(cfg.nuisances)}
    (out / "config.json").write_text(json.dumps(config_dict, indent=1), encoding="utf-8")
    report = difficulty_report(specs, cfg)
    (out / "difficulty.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def config_from_dict(data: dict) -> SynthConfig:
    """Rebuild a :class:`SynthConfig` from ``config.json``."""
    data = dict(data)
    # Folders written before wrinkles and crop jitter existed were rendered without them.
    data.setdefault("wrinkles", 0.0)
    data.setdefault("crop_jitter", 0.0)
    if data.get("nuisance") is not None:
        data["nuisance"] = Nuisance(**data["nuisance"])
    if "emotions" in data:
        data["emotions"] = tuple(data["emotions"])
    return SynthConfig(**data)


__all__ = [
    "DIFFICULTY", "INTENSITY_PX", "Nuisance", "SynthConfig", "RenderedAU", "ClipSpec", "SynthClip",
    "Identity", "make_identity", "render_face", "au_field", "sample_clip", "render_clip", "SynthMER",
    "difficulty_report", "write_video", "read_video", "write_synthmer", "config_from_dict",
    "PROTOTYPES", "OTHERS_POOL", "RENDERED_AUS", "WRINKLE_AUS", "WRINKLE_DEPTH", "wrinkle_map",
]
