"""The shared vocabulary of deft-llm: facial regions, Action Units, emotions, and the answer format.

Everything that names a facial movement lives here, so the processor, the SynthMER generator,
the dataset builder, the model's AU head and the demo all speak about the same regions, the
same AUs and the same emotions. Only the standard library and numpy are used: this file is
part of the remote code that ``save_pretrained`` copies next to a checkpoint.

Conventions
-----------
* Image coordinates: x to the right, y **down**, in pixels; region boxes are fractions of a
  face crop (``x0, y0, x1, y1`` in ``[0, 1]``).
* Sides are the **subject's** sides, as in FACS and the datasets' ``L12`` / ``R12`` codes: the
  subject's left appears on the image's right.
* An AU direction is given as ``(outward, down)``: ``outward`` is the component away from the
  face's vertical midline, ``down`` the image-y component. :func:`au_direction` turns it into
  an image-space unit vector for a given region.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------
# Facial regions of a canonical face crop (roughly brow line at y=0.28, eyes at 0.40, nose tip
# at 0.60, mouth at 0.75, chin at 0.92), as a Haar-cascade face box frames a frontal face.
# --------------------------------------------------------------------------------------------
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "brow_outer_right": (0.12, 0.20, 0.30, 0.34),
    "brow_inner_right": (0.30, 0.20, 0.46, 0.34),
    "brow_inner_left": (0.54, 0.20, 0.70, 0.34),
    "brow_outer_left": (0.70, 0.20, 0.88, 0.34),
    "eye_right": (0.16, 0.34, 0.44, 0.47),
    "eye_left": (0.56, 0.34, 0.84, 0.47),
    "cheek_right": (0.12, 0.48, 0.36, 0.64),
    "cheek_left": (0.64, 0.48, 0.88, 0.64),
    "nose": (0.40, 0.42, 0.60, 0.62),
    "upper_lip": (0.38, 0.63, 0.62, 0.71),
    "mouth_corner_right": (0.24, 0.68, 0.38, 0.82),
    "mouth_corner_left": (0.62, 0.68, 0.76, 0.82),
    "lips": (0.38, 0.71, 0.62, 0.83),
    "chin": (0.36, 0.84, 0.64, 0.97),
}
REGION_NAMES: list[str] = list(REGIONS)


def region_side(region: str) -> str | None:
    """``"left"``/``"right"`` (subject's side) for bilateral regions, ``None`` on the midline."""
    if region.endswith("_left"):
        return "left"
    if region.endswith("_right"):
        return "right"
    return None


def region_label(region: str) -> str:
    """Human text for a region, e.g. ``mouth_corner_left`` -> ``left mouth corner``."""
    side = region_side(region)
    base = region.removesuffix("_left").removesuffix("_right").replace("_", " ")
    base = base.replace("brow outer", "outer brow").replace("brow inner", "inner brow")
    return f"{side} {base}" if side else base


def region_pixel_box(region: str, height: int, width: int) -> tuple[int, int, int, int]:
    """The region's box in pixels of a ``height x width`` face crop: ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = REGIONS[region]
    return (int(round(x0 * width)), int(round(y0 * height)),
            max(int(round(x1 * width)), int(round(x0 * width)) + 1),
            max(int(round(y1 * height)), int(round(y0 * height)) + 1))


# --------------------------------------------------------------------------------------------
# Action Units: the FACS table of ../shared/mer-facts.md, made concrete.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionUnit:
    number: int
    name: str
    regions: tuple[str, ...]          # bilateral AUs list both sides
    direction: tuple[float, float] | None  # (outward, down) unit vector; None: no net shift
    motion_text: str                  # the direction in words, as written in answers


def _unit(outward: float, down: float) -> tuple[float, float]:
    norm = math.hypot(outward, down)
    return (outward / norm, down / norm)


_BROW_INNER = ("brow_inner_left", "brow_inner_right")
_BROW_OUTER = ("brow_outer_left", "brow_outer_right")
_EYES = ("eye_left", "eye_right")
_CHEEKS = ("cheek_left", "cheek_right")
_CORNERS = ("mouth_corner_left", "mouth_corner_right")

ACTION_UNITS: dict[int, ActionUnit] = {au.number: au for au in [
    ActionUnit(1, "inner brow raiser", _BROW_INNER, _unit(0, -1), "up"),
    ActionUnit(2, "outer brow raiser", _BROW_OUTER, _unit(0, -1), "up"),
    ActionUnit(4, "brow lowerer", _BROW_INNER, _unit(-0.5, 1), "down and toward the midline"),
    ActionUnit(5, "upper lid raiser", _EYES, _unit(0, -1), "up"),
    ActionUnit(6, "cheek raiser", _CHEEKS, _unit(0, -1), "up"),
    ActionUnit(7, "lid tightener", _EYES, _unit(-0.3, -1), "up and inward"),
    ActionUnit(9, "nose wrinkler", ("nose",), _unit(0, -1), "up"),
    ActionUnit(10, "upper lip raiser", ("upper_lip",), _unit(0, -1), "up"),
    ActionUnit(12, "lip corner puller", _CORNERS, _unit(1, -1), "up and outward"),
    ActionUnit(14, "dimpler", _CORNERS, _unit(-1, 0), "inward"),
    ActionUnit(15, "lip corner depressor", _CORNERS, _unit(0, 1), "down"),
    ActionUnit(17, "chin raiser", ("chin",), _unit(0, -1), "up"),
    ActionUnit(20, "lip stretcher", _CORNERS, _unit(1, 0), "outward"),
    ActionUnit(23, "lip tightener", ("lips",), None, "lips narrow"),
    ActionUnit(24, "lip pressor", ("lips",), None, "lips pressed together"),
    ActionUnit(25, "lips part", ("lips",), _unit(0, 1), "apart"),
    ActionUnit(26, "jaw drop", ("chin",), _unit(0, 1), "down"),
    ActionUnit(43, "eyes closed", _EYES, _unit(0, 1), "down"),
    ActionUnit(45, "blink", _EYES, _unit(0, 1), "down"),
]}

# The AUs the model's AU head predicts (blinks 43/45 are nuisances, not micro-expressions).
AU_VOCAB: list[str] = [f"AU{n}" for n in ACTION_UNITS if n not in (43, 45)]


def au_direction(au: int, region: str) -> np.ndarray | None:
    """The AU's skin-motion direction in ``region`` as an image-space unit vector ``(dx, dy)``."""
    direction = ACTION_UNITS[au].direction
    if direction is None:
        return None
    outward, down = direction
    side = region_side(region)
    # The subject's left is the image's right: outward there is +x; on the subject's right, -x.
    dx = outward if side == "left" else -outward if side == "right" else 0.0
    vec = np.array([dx, down], dtype=np.float32)
    return vec / max(float(np.linalg.norm(vec)), 1e-8)


@dataclass(frozen=True)
class AUCode:
    """One parsed AU code from a dataset label, e.g. ``R12`` -> AUCode(12, side="right")."""

    number: int
    side: str | None = None        # "left" / "right" (subject's side) or None for both
    intensity: str | None = None   # FACS intensity letter A-E

    @property
    def name(self) -> str:
        return f"AU{self.number}"

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions this code moves: one side only for L/R codes."""
        regions = ACTION_UNITS[self.number].regions if self.number in ACTION_UNITS else ()
        if self.side:
            regions = tuple(r for r in regions if region_side(r) in (self.side, None))
        return regions


class AUCodeError(ValueError):
    """An AU label that is not a FACS code."""


_AU_TOKEN = re.compile(r"^(?P<side>[LRBT]?)(?:AU)?(?P<number>\d{1,2})(?P<intensity>[A-E]?)$", re.I)


def parse_au_string(text: str, source: str = "") -> list[AUCode]:
    """Parse dataset AU strings such as ``4+7``, ``R12 + R15``, ``R14A``, ``AU1+AU2``, ``L10``.

    ``?`` parts (uncertain codes) are skipped; an empty cell or a lone ``?``/``/`` gives ``[]``.
    Anything else that is not a FACS code raises :class:`AUCodeError` naming ``source``.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    text = str(text).strip()
    if isinstance(text, str) and text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]  # spreadsheets store a lone "12" as 12.0
    codes: list[AUCode] = []
    for part in re.split(r"[+,;/]", text):
        part = part.strip().replace(" ", "")
        if part in ("", "?", "-") or part.lower() in ("nan", "none", "n/a"):
            continue
        match = _AU_TOKEN.match(part)
        if not match:
            where = f" in {source}" if source else ""
            raise AUCodeError(f"unknown AU code {part!r} in AU string {text!r}{where}")
        side = {"L": "left", "R": "right"}.get(match["side"].upper())
        intensity = match["intensity"].upper() or None
        codes.append(AUCode(int(match["number"]), side, intensity))
    return codes


# --------------------------------------------------------------------------------------------
# Emotions and class mappings
# --------------------------------------------------------------------------------------------
EMOTIONS: list[str] = ["happiness", "surprise", "disgust", "repression", "sadness", "fear",
                       "anger", "contempt", "others"]

_EMOTION_ALIASES = {
    "happy": "happiness", "happiness": "happiness", "positive": "happiness",
    "surprise": "surprise", "surprised": "surprise",
    "disgust": "disgust", "disgusted": "disgust",
    "repression": "repression", "sad": "sadness", "sadness": "sadness",
    "fear": "fear", "anger": "anger", "angry": "anger", "contempt": "contempt",
    "other": "others", "others": "others",
}

COMPOSITE_CLASSES: list[str] = ["negative", "positive", "surprise"]
_COMPOSITE = {"happiness": "positive", "surprise": "surprise", "disgust": "negative",
              "repression": "negative", "sadness": "negative", "fear": "negative",
              "anger": "negative", "contempt": "negative"}


def normalize_emotion(label: str, source: str = "") -> str:
    """Map a dataset's emotion spelling (``Happy``, ``Other``, ``sad``) to :data:`EMOTIONS`."""
    key = str(label).strip().lower()
    if key not in _EMOTION_ALIASES:
        where = f" in {source}" if source else ""
        raise ValueError(f"unknown emotion label {label!r}{where}; known: {sorted(_EMOTION_ALIASES)}")
    return _EMOTION_ALIASES[key]


def composite_class(emotion: str) -> str | None:
    """MEGC2019 composite 3-class label; ``None`` for ``others`` (left out of that protocol).

    A label that already is a composite class (SMIC's ``negative``) maps to itself."""
    if str(emotion).strip().lower() in COMPOSITE_CLASSES:
        return str(emotion).strip().lower()
    return _COMPOSITE.get(normalize_emotion(emotion))


# --------------------------------------------------------------------------------------------
# The answer format: what Uni-MER answers look like and how generated text is read back.
#
#   Motion evidence: AU6 (left cheek, up, 0.62 px); AU12 (left mouth corner, up and outward, 1.10 px).
#   Emotion: happiness.
#   Reason: ...
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AUEvidence:
    """One AU seen moving: where, which way, how far (pixels at the analysed resolution)."""

    au: str       # "AU12"
    region: str   # a key of REGIONS
    direction: str
    size: float


NO_EVIDENCE = "no AU motion above the noise floor."


def format_evidence(evidence: list[AUEvidence]) -> str:
    if not evidence:
        return f"Motion evidence: {NO_EVIDENCE}"
    parts = [f"{e.au} ({region_label(e.region)}, {e.direction}, {e.size:.2f} px)" for e in evidence]
    return "Motion evidence: " + "; ".join(parts) + "."


def format_answer(emotion: str, evidence: list[AUEvidence], reason: str | None = None) -> str:
    """The canonical answer text: evidence line, emotion line, optional reason line."""
    lines = [format_evidence(evidence), f"Emotion: {emotion}."]
    if reason:
        lines.append(f"Reason: {reason}")
    return "\n".join(lines)


_EMOTION_LINE = re.compile(r"Emotion:\s*([A-Za-z]+)")
_EVIDENCE_LINE = re.compile(r"Motion evidence:([^\n]*)")
_AU_NAME = re.compile(r"\bAU(\d{1,2})\b")


def evidence_mentions(text: str) -> list[tuple[str, int]]:
    """Each AU the evidence line names, in order: ``(name, offset of its number in text)``.

    The offset lets training find the token that names each AU (``DeftDataCollator``).
    """
    evidence = _EVIDENCE_LINE.search(text)
    if not evidence:
        return []
    start = evidence.start(1)
    return [(f"AU{int(m.group(1))}", start + m.start(1)) for m in _AU_NAME.finditer(evidence.group(1))]


_ENTRY = re.compile(r"\bAU(\d{1,2}) \(")


def resume_with_missing_au(text: str, required) -> str | None:
    """``text`` cut where its evidence first leaves out an AU of ``required`` (AU codes in any
    dataset style: ``AU12``, ``12``, ``L12``), with that AU's entry opened (``"...; AU12 ("``), for
    the model to go on writing; None when nothing is left out.

    Entries come in AU order (Uni-MER sorts them), so the lowest missing AU belongs after the last
    entry numbered below it: before the next entry, or at the end of the list. Every AU below the
    missing one stays before the cut, so repeated cuts only ever add AUs. Only whole entries (up to
    their ")") count: an answer that broke off inside an entry (the length cap, or an early end)
    is cut before it, and a line without entries ("no AU motion above the noise floor.") is
    replaced.
    """
    line = _EVIDENCE_LINE.search(text)
    if not line:
        return None
    close = text.rfind(")", line.start(1), line.end(1))
    whole = close + 1 if close >= 0 else line.start(1)  # just after the last whole entry
    entries = list(_ENTRY.finditer(text, line.start(1), whole))
    named = {int(name.removeprefix("AU")) for name, _ in evidence_mentions(text[:whole])}
    missing = sorted({code.number for au in required for code in parse_au_string(str(au).removeprefix("AU"))}
                     - named)
    if not missing:
        return None
    au = f"AU{missing[0]}"
    lower = [k for k, m in enumerate(entries) if int(m.group(1)) < missing[0]]
    later = entries[lower[-1] + 1:] if lower else entries
    if later:
        return f"{text[:later[0].start()]}{au} ("
    if entries:
        return f"{text[:whole]}; {au} ("
    return f"{text[:line.start(1)]} {au} ("


def parse_answer(text: str) -> dict:
    """Read generated text back: ``{"emotion": str | None, "aus": ["AU6", ...], "text": text}``.

    AUs are taken from the evidence line only (the reason may mention AUs that did not move);
    an emotion word outside :data:`EMOTIONS` and :data:`COMPOSITE_CLASSES` gives
    ``emotion=None`` rather than a guess.
    """
    emotion = None
    match = _EMOTION_LINE.search(text)
    if match:
        word = match.group(1).lower()
        if word in COMPOSITE_CLASSES:  # datasets with coarse labels only (SMIC) answer these
            emotion = word
        else:
            try:
                emotion = normalize_emotion(word)
            except ValueError:
                emotion = None
    aus = list(dict.fromkeys(name for name, _ in evidence_mentions(text)))
    return {"emotion": emotion, "aus": aus, "text": text}
