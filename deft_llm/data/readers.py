"""Readers for the licensed MER datasets (and SynthMER folders) into one clip record.

Each reader takes the user's local copy in its *official* layout (../shared/mer-facts.md) and
returns a :class:`ReadResult`: a list of :class:`ClipRecord` plus the clips it skipped and why.
Quirks handled (tests build fixtures with each of them):

* CASME II: ``CASME2-coding-*.xlsx`` with blank columns (``Unnamed: 2`` / ``Unnamed: 6``),
  integer subjects (``1`` -> ``sub01``), ``?`` AU cells, ``/`` apex cells (missing apex), the
  known offset error of pandas row 60 (-> 91, patched only while that row still has the
  impossible offset), raw (``CASME2_RAW_selected/sub01/EP02_01f/img46.jpg``) or cropped
  (``Cropped/sub01/EP02_01f/reg_img46.jpg``) frames.
* SAMM: a title block above the header row (found anywhere in the first 20 rows, usually
  sheet row 13), ``R12 + R15`` / ``R14A`` / ``A1+2`` AU strings, ``Other`` capitalised,
  zero-padded subjects (``6`` -> ``006``), frames ``SAMM/006/006_1_2/006_05562.jpg``.
* SMIC-HS: no label file; classes from folders ``HS/s03/micro/<class>/s03_po_11/*.bmp``
  (any capitalisation); onset/offset = first/last frame, **no apex** (``apex=None``).
* CAS(ME)^3 Part A: ``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx`` sheet ``label`` with
  ``Subject`` (``spNO.1``), ``Filename`` (``a``), ``Onset``/``Apex``/``Offset``, an AU column, an
  emotion column and an occlusion flag; frames ``part_A/.../{Subject}/{Filename}/color/N.jpg``;
  the official error list is passed as ``exclude``.
* 4DME: ``4DME_Labelling_Micro_release v1.xlsx`` (``sub_ID, fold_name, Emotion, Onset, Apex,
  Offset, AUs``); frames: the folder ``fold_name`` found anywhere under the root (the release's
  folder layout is not fixed in our sources, so the reader searches).

Frame numbers are the dataset's own (the integers in the file names), never 0-based positions.
Missing clips or frames raise one :class:`MissingDataError` that lists every problem, or, with
``on_missing="skip"``, are left out and listed in ``ReadResult.skipped``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from .. import facs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DATASETS = ("casme2", "samm", "smic_hs", "casme3_a", "4dme", "synthmer")

# Native emotion classes per dataset (as the datasets write them, lower-cased).
NATIVE_CLASSES: dict[str, tuple[str, ...]] = {
    "casme2": ("happiness", "disgust", "repression", "surprise", "fear", "sadness", "others"),
    "samm": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "other"),
    "smic_hs": ("positive", "negative", "surprise"),
    "casme3_a": ("anger", "disgust", "fear", "happy", "others", "sad", "surprise"),
    "4dme": ("positive", "negative", "surprise", "repression", "others"),
    "synthmer": tuple(facs.EMOTIONS),
}


class MissingDataError(FileNotFoundError):
    """Clips or frames named by a label file are not on disk (the message lists all of them)."""


class LabelError(ValueError):
    """A label file that cannot be read as the official layout."""


@dataclass
class ClipRecord:
    """One micro-expression clip, whatever dataset it came from.

    ``onset``/``apex``/``offset`` are the dataset's frame numbers (``apex=None`` when the
    dataset gives none); ``frame_files`` maps every available frame number to its file (empty
    for video / in-memory clips). ``emotion`` is the :data:`facs.EMOTIONS` word, or ``None``
    when the dataset only has a coarse class (SMIC ``negative``); ``composite`` is the MEGC2019
    3-class label (``None`` for others).
    """

    dataset: str
    subject: str
    clip: str
    onset: int
    apex: int | None
    offset: int
    aus: list[facs.AUCode]
    au_string: str
    native_emotion: str
    emotion: str | None
    composite: str | None
    frame_dir: str | None = None
    frame_files: dict[int, str] = field(default_factory=dict)
    video: str | None = None
    fps: float | None = None
    extra: dict = field(default_factory=dict)
    loader: Callable | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.clip}"

    @property
    def frame_numbers(self) -> list[int]:
        if self.frame_files:
            return sorted(self.frame_files)
        return list(range(self.extra["num_frames"])) if "num_frames" in self.extra else []

    def read_frames(self, numbers: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """RGB uint8 frames by frame number (all frames onset..offset when ``numbers`` is None)."""
        numbers = list(range(self.onset, self.offset + 1)) if numbers is None else list(numbers)
        if self.frame_files:
            out = {}
            for n in numbers:
                if n not in self.frame_files:
                    raise MissingDataError(f"{self.id}: frame {n} is not in {self.frame_dir}")
                image = cv2.imread(self.frame_files[n], cv2.IMREAD_COLOR)
                if image is None:
                    raise ValueError(f"{self.id}: cannot read frame file {self.frame_files[n]}")
                out[n] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            return out
        frames = self._all_frames()
        missing = [n for n in numbers if not 0 <= n < len(frames)]
        if missing:
            raise MissingDataError(f"{self.id}: frames {missing} are outside the clip's "
                                   f"{len(frames)} frames")
        return {n: frames[n] for n in numbers}

    def _all_frames(self) -> np.ndarray:
        if self.loader is not None:
            clip = self.loader()
            return clip.frames if hasattr(clip, "frames") else np.asarray(clip)
        if self.video:
            from .synthmer import read_video
            return read_video(self.video)
        raise MissingDataError(f"{self.id}: the record has no frames, video or loader")

    def ground_truth(self, clip=None) -> dict | None:
        """SynthMER only: true AUs, emotion, blink and ``flow_true`` (the true apex flow, taken
        from ``clip`` when given, else rendered / loaded now; never cached on the record, so a
        long list of records stays small)."""
        truth = self.extra.get("ground_truth")
        if truth is None:
            return None
        truth = dict(truth)
        if clip is not None and hasattr(clip, "flow_true"):
            truth["flow_true"] = clip.flow_true
        elif self.loader is not None:
            truth["flow_true"] = self.loader().flow_true
        elif truth.get("flow_file"):
            truth["flow_true"] = np.load(truth["flow_file"])
        return truth

    @classmethod
    def from_synth_spec(cls, spec, config, loader=None, video=None, flow_file=None) -> "ClipRecord":
        """A record for a SynthMER clip (in memory through ``loader``, or on disk)."""
        return cls(
            dataset="synthmer", subject=spec.subject, clip=spec.clip, onset=spec.onset,
            apex=spec.apex, offset=spec.offset,
            aus=facs.parse_au_string(spec.au_string, f"SynthMER {spec.clip}"),
            au_string=spec.au_string, native_emotion=spec.emotion, emotion=spec.emotion,
            composite=facs.composite_class(spec.emotion), video=video, fps=float(config.fps),
            extra={"num_frames": spec.num_frames,
                   "ground_truth": {"aus": [a.code for a in spec.aus], "emotion": spec.emotion,
                                    "blink": spec.blink, **({"flow_file": flow_file} if flow_file else {})}},
            loader=loader)


@dataclass
class ReadResult:
    """What a reader found: the records, and the clips it skipped (``on_missing="skip"``)."""

    dataset: str
    records: list[ClipRecord]
    skipped: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"{self.dataset}: {len(self.records)} clips read, {len(self.skipped)} skipped"]
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
_TRAILING_INT = re.compile(r"(\d+)(?=\.[A-Za-z]+$)")


def index_frames(folder: str | os.PathLike, prefix: str | None = None) -> dict[int, str]:
    """Frame number -> file for the images in ``folder`` (number = trailing integer of the name).

    ``prefix`` keeps only names starting with it (CASME II cropped ``reg_img``)."""
    out: dict[int, str] = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return out
    for name in names:
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if prefix and not name.startswith(prefix):
            continue
        match = _TRAILING_INT.search(name)
        if match:
            out[int(match.group(1))] = os.path.join(folder, name)
    return out


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip() in ("", "/", "-", "?", "nan", "None", "-1")


def _frame_number(value, what: str, source: str, allow_missing: bool = False) -> int | None:
    if _is_missing(value):
        if allow_missing:
            return None
        raise LabelError(f"{source}: {what} is missing ({value!r})")
    try:
        number = float(str(value).strip())
    except ValueError:
        if allow_missing:
            return None
        raise LabelError(f"{source}: {what} {value!r} is not a frame number") from None
    if number != int(number) or number < 0:
        raise LabelError(f"{source}: {what} {value!r} is not a frame number")
    return int(number)


def _check_frames(record: ClipRecord, problems: list[str]) -> bool:
    """Append the record's problems (missing folder / frames); True when it is usable."""
    if not record.frame_files:
        problems.append(f"{record.id}: no frames in {record.frame_dir}")
        return False
    needed = {record.onset, record.offset} | ({record.apex} if record.apex is not None else set())
    missing = sorted(n for n in needed if n not in record.frame_files)
    gaps = [n for n in range(record.onset, record.offset + 1) if n not in record.frame_files]
    if missing:
        problems.append(f"{record.id}: frames {missing} (onset/apex/offset) missing in {record.frame_dir}")
        return False
    if gaps:
        problems.append(f"{record.id}: {len(gaps)} frames between onset {record.onset} and offset "
                        f"{record.offset} missing in {record.frame_dir} (first {gaps[:5]})")
        return False
    if not record.onset <= (record.apex if record.apex is not None else record.onset) <= record.offset:
        problems.append(f"{record.id}: apex {record.apex} outside onset {record.onset} .. offset {record.offset}")
        return False
    return True


def _finish(dataset: str, records: list[ClipRecord], problems: list[str], on_missing: str) -> ReadResult:
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if problems and on_missing == "error":
        raise MissingDataError(f"{dataset}: {len(problems)} clip(s) with missing data "
                               f"(pass on_missing='skip' to leave them out):\n  " + "\n  ".join(problems))
    return ReadResult(dataset, records, problems)


def _find_label_file(root: Path, patterns: tuple[str, ...], label_file, dataset: str) -> Path:
    if label_file is not None:
        path = Path(label_file)
        if not path.is_absolute() and not path.exists():
            path = root / path
        if not path.exists():
            raise FileNotFoundError(f"{dataset}: label file {path} does not exist")
        return path
    for pattern in patterns:
        found = sorted(root.glob(pattern)) or sorted(root.glob(f"*/{pattern}"))
        if found:
            return found[0]
    raise FileNotFoundError(f"{dataset}: no label file matching {list(patterns)} in {root}")


def _emotion(native: str, dataset: str, source: str) -> tuple[str | None, str | None]:
    """(facs.EMOTIONS word or None, composite class or None) for a native label."""
    key = str(native).strip().lower()
    if key in ("negative",):
        return None, "negative"
    emotion = facs.normalize_emotion(key, source)
    return emotion, facs.composite_class(emotion)


def _parse_aus(text, source: str) -> tuple[list[facs.AUCode], str]:
    if _is_missing(text) and str(text).strip() != "?":
        return [], ""
    raw = str(text).strip()
    if raw.endswith(".0") and raw[:-2].isdigit():
        raw = raw[:-2]
    return facs.parse_au_string(raw, source), raw


# --------------------------------------------------------------------------------------------
# CASME II
# --------------------------------------------------------------------------------------------
CASME2_OFFSET_FIX = {60: 91}  # pandas row -> corrected offset frame (known label error)


def read_casme2(root: str | os.PathLike, label_file: str | os.PathLike | None = None,
                frames: str = "auto", on_missing: str = "error") -> ReadResult:
    """CASME II from ``root`` (holding the xlsx and ``CASME2_RAW_selected/`` or ``Cropped/``).

    ``frames``: ``"raw"``, ``"cropped"`` or ``"auto"`` (cropped when present: already aligned)."""
    import pandas as pd

    root = Path(root)
    path = _find_label_file(root, ("CASME2-coding-*.xlsx", "CASME2*coding*.xlsx"), label_file, "CASME II")
    df = pd.read_excel(path)
    needed = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units",
              "Estimated Emotion"]
    canonical = {n.lower().replace(" ", ""): n for n in needed}   # tolerate case and spacing
    df.columns = [canonical.get(str(c).strip().lower().replace(" ", ""), str(c).strip()) for c in df.columns]
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise LabelError(f"{path}: columns {absent} not found (have {list(df.columns)})")
    if frames == "auto":
        frames = "cropped" if (root / "Cropped").is_dir() else "raw"
    if frames not in ("raw", "cropped"):
        raise ValueError(f"frames must be 'raw', 'cropped' or 'auto', got {frames!r}")
    base = root / ("Cropped" if frames == "cropped" else "CASME2_RAW_selected")
    records, problems = [], []
    for row_index, row in df.iterrows():
        if _is_missing(row["Subject"]) or _is_missing(row["Filename"]):
            continue
        source = f"{path.name} row {row_index} ({row['Filename']})"
        subject_value = str(row["Subject"]).strip()
        subject = subject_value if subject_value.lower().startswith("sub") else f"sub{int(float(subject_value)):02d}"
        clip = str(row["Filename"]).strip()
        onset = _frame_number(row["OnsetFrame"], "OnsetFrame", source)
        apex = _frame_number(row["ApexFrame"], "ApexFrame", source, allow_missing=True)
        offset = _frame_number(row["OffsetFrame"], "OffsetFrame", source)
        patched = None
        if row_index in CASME2_OFFSET_FIX and offset < max(onset, apex or onset):
            patched, offset = offset, CASME2_OFFSET_FIX[row_index]
        aus, au_string = _parse_aus(row["Action Units"], source)
        native = str(row["Estimated Emotion"]).strip().lower()
        emotion, composite = _emotion(native, "casme2", source)
        folder = base / subject / clip
        record = ClipRecord(
            dataset="casme2", subject=subject, clip=clip, onset=onset, apex=apex, offset=offset,
            aus=aus, au_string=au_string, native_emotion=native, emotion=emotion,
            composite=composite, frame_dir=str(folder), fps=200.0,
            frame_files=index_frames(folder, "reg_img" if frames == "cropped" else None),
            extra={"frames": frames, "cropped": frames == "cropped",
                   **({"offset_patched_from": patched} if patched is not None else {})})
        if _check_frames(record, problems):
            records.append(record)
    return _finish("casme2", records, problems, on_missing)


# --------------------------------------------------------------------------------------------
# SAMM
# --------------------------------------------------------------------------------------------
def _read_with_header_search(path: Path, required: tuple[str, ...], sheet=0, rows: int = 20):
    """Read an xlsx whose header row is somewhere in the first ``rows`` rows."""
    import pandas as pd

    raw = pd.read_excel(path, sheet_name=sheet, header=None, nrows=rows)
    wanted = {r.lower() for r in required}
    for i in range(len(raw)):
        cells = {str(v).strip().lower() for v in raw.iloc[i].tolist()}
        if wanted <= cells:
            df = pd.read_excel(path, sheet_name=sheet, skiprows=i)
            df.columns = [str(c).strip() for c in df.columns]
            return df
    raise LabelError(f"{path}: no header row with {sorted(required)} in the first {rows} rows")


def _column(df, *names: str, contains: str | None = None) -> str:
    lower = {c.lower(): c for c in df.columns}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    if contains:
        for c in df.columns:
            if contains in c.lower():
                return c
    raise LabelError(f"no column {names} (have {list(df.columns)})")


_SAMM_AU_PREFIX = re.compile(r"(?<![A-Za-z])A(\d)")  # "A1+2": a bare "A" stands for "AU"


def read_samm(root: str | os.PathLike, label_file: str | os.PathLike | None = None,
              on_missing: str = "error") -> ReadResult:
    """SAMM from ``root`` (holding ``SAMM_Micro_FACS_Codes_*.xlsx`` and ``SAMM/``)."""
    root = Path(root)
    path = _find_label_file(root, ("SAMM_Micro_FACS_Codes*.xlsx", "SAMM*.xlsx"), label_file, "SAMM")
    df = _read_with_header_search(path, ("Subject", "Filename"))
    onset_c = _column(df, "Onset Frame", "Onset")
    apex_c = _column(df, "Apex Frame", "Apex")
    offset_c = _column(df, "Offset Frame", "Offset")
    au_c = _column(df, "Action Units", contains="action unit")
    emotion_c = _column(df, "Estimated Emotion", contains="emotion")
    objective_c = next((c for c in df.columns if c.lower().startswith("objective")), None)
    base = root / "SAMM" if (root / "SAMM").is_dir() else root
    records, problems = [], []
    for row_index, row in df.iterrows():
        if _is_missing(row["Subject"]) or _is_missing(row["Filename"]):
            continue
        clip = str(row["Filename"]).strip()
        source = f"{path.name} row {row_index} ({clip})"
        subject_value = str(row["Subject"]).strip()
        subject = f"{int(float(subject_value)):03d}" if re.fullmatch(r"\d+(\.0)?", subject_value) else subject_value
        onset = _frame_number(row[onset_c], "Onset Frame", source)
        apex = _frame_number(row[apex_c], "Apex Frame", source, allow_missing=True)
        offset = _frame_number(row[offset_c], "Offset Frame", source)
        au_text = row[au_c]
        if not _is_missing(au_text):
            au_text = re.sub(r"\(.*?\)", "", _SAMM_AU_PREFIX.sub(r"AU\1", str(au_text)))
        aus, au_string = _parse_aus(au_text, source)
        native = str(row[emotion_c]).strip().lower()
        emotion, composite = _emotion(native, "samm", source)
        folder = base / subject / clip
        record = ClipRecord(
            dataset="samm", subject=subject, clip=clip, onset=onset, apex=apex, offset=offset,
            aus=aus, au_string=str(row[au_c]).strip(), native_emotion=native, emotion=emotion,
            composite=composite, frame_dir=str(folder), frame_files=index_frames(folder),
            fps=200.0, extra={"objective_class": None if objective_c is None else str(row[objective_c])})
        if _check_frames(record, problems):
            records.append(record)
    return _finish("samm", records, problems, on_missing)


# --------------------------------------------------------------------------------------------
# SMIC-HS
# --------------------------------------------------------------------------------------------
def read_smic_hs(root: str | os.PathLike, on_missing: str = "error") -> ReadResult:
    """SMIC-HS from ``root`` (holding ``HS/`` or being it): classes from the folder names.

    SMIC has no apex label: ``apex=None`` (the builder estimates it from motion)."""
    root = Path(root)
    base = root / "HS" if (root / "HS").is_dir() else root
    subjects = sorted(p for p in base.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name, re.I))
    if not subjects:
        raise MissingDataError(f"SMIC-HS: no subject folders s01, s02, ... in {base}")
    records, problems = [], []
    for subject_dir in subjects:
        micro = next((p for p in subject_dir.iterdir() if p.is_dir() and p.name.lower() == "micro"), None)
        if micro is None:
            problems.append(f"smic_hs/{subject_dir.name}: no micro/ folder in {subject_dir}")
            continue
        for class_dir in sorted(p for p in micro.iterdir() if p.is_dir()):
            native = class_dir.name.lower()
            if native not in NATIVE_CLASSES["smic_hs"]:
                raise LabelError(f"SMIC-HS: unknown class folder {class_dir} "
                                 f"(expected {NATIVE_CLASSES['smic_hs']})")
            for clip_dir in sorted(p for p in class_dir.iterdir() if p.is_dir()):
                files = index_frames(clip_dir)
                subject = subject_dir.name.lower()
                if not files:
                    problems.append(f"smic_hs/{subject}/{clip_dir.name}: no frames in {clip_dir}")
                    continue
                emotion, composite = _emotion(native, "smic_hs", str(clip_dir))
                record = ClipRecord(
                    dataset="smic_hs", subject=subject, clip=clip_dir.name, onset=min(files),
                    apex=None, offset=max(files), aus=[], au_string="", native_emotion=native,
                    emotion=emotion, composite=composite, frame_dir=str(clip_dir),
                    frame_files=files, fps=100.0)
                if _check_frames(record, problems):
                    records.append(record)
    return _finish("smic_hs", records, problems, on_missing)


# --------------------------------------------------------------------------------------------
# CAS(ME)^3 Part A
# --------------------------------------------------------------------------------------------
def _index_color_dirs(root: Path) -> dict[tuple[str, str], Path]:
    """(subject, filename) -> ``.../{subject}/{filename}/color`` anywhere under ``root``."""
    found = {}
    for dirpath, dirnames, _ in os.walk(root):
        if os.path.basename(dirpath) == "color":
            path = Path(dirpath)
            found[(path.parent.parent.name, path.parent.name)] = path
            dirnames[:] = []
    return found


def read_casme3_a(root: str | os.PathLike, label_file: str | os.PathLike | None = None,
                  exclude: Iterable[tuple[str, str]] = (), on_missing: str = "error",
                  include_occluded: bool = True) -> ReadResult:
    """CAS(ME)^3 Part A from ``root`` (holding the xlsx and ``part_A/``).

    ``exclude``: (subject, filename) pairs of the official error list, left out silently."""
    import pandas as pd

    root = Path(root)
    path = _find_label_file(root, ("cas(me)3_part_A_ME_label*.xlsx", "*part_A*label*.xlsx"),
                            label_file, "CAS(ME)^3")
    try:
        df = pd.read_excel(path, sheet_name="label")
    except ValueError as err:
        raise LabelError(f"{path}: no sheet 'label' ({err})") from err
    df.columns = [str(c).strip() for c in df.columns]
    subject_c, file_c = _column(df, "Subject", "sub"), _column(df, "Filename", "filename")
    onset_c, apex_c, offset_c = _column(df, "Onset"), _column(df, "Apex"), _column(df, "Offset")
    au_c = _column(df, "AU", "AUs", "Action Units", contains="au")
    emotion_c = _column(df, "emotion", "Emotion", contains="emotion")
    occlusion_c = next((c for c in df.columns if "occlu" in c.lower()), None)
    excluded = {(str(s), str(f)) for s, f in exclude}
    base = root / "part_A" if (root / "part_A").is_dir() else root
    color_dirs = _index_color_dirs(base)
    records, problems = [], []
    for row_index, row in df.iterrows():
        if _is_missing(row[subject_c]) or _is_missing(row[file_c]):
            continue
        subject, clip = str(row[subject_c]).strip(), str(row[file_c]).strip()
        if (subject, clip) in excluded:
            continue
        source = f"{path.name} row {row_index} ({subject}/{clip})"
        occluded = bool(occlusion_c and not _is_missing(row[occlusion_c]) and float(row[occlusion_c]) != 0)
        if occluded and not include_occluded:
            continue
        aus, au_string = _parse_aus(row[au_c], source)
        native = str(row[emotion_c]).strip().lower()
        emotion, composite = _emotion(native, "casme3_a", source)
        folder = color_dirs.get((subject, clip))
        record = ClipRecord(
            dataset="casme3_a", subject=subject, clip=clip,
            onset=_frame_number(row[onset_c], "Onset", source),
            apex=_frame_number(row[apex_c], "Apex", source, allow_missing=True),
            offset=_frame_number(row[offset_c], "Offset", source),
            aus=aus, au_string=au_string, native_emotion=native, emotion=emotion,
            composite=composite,
            frame_dir=str(folder) if folder else str(base / "..." / subject / clip / "color"),
            frame_files=index_frames(folder) if folder else {}, fps=30.0,
            extra={"occluded": occluded})
        if _check_frames(record, problems):
            records.append(record)
    return _finish("casme3_a", records, problems, on_missing)


# --------------------------------------------------------------------------------------------
# 4DME (optional)
# --------------------------------------------------------------------------------------------
def read_4dme(root: str | os.PathLike, label_file: str | os.PathLike | None = None,
              on_missing: str = "error") -> ReadResult:
    """4DME from ``root``: ``4DME_Labelling_Micro_release*.xlsx``; each ``fold_name`` folder is
    searched under ``root`` (first match; 2D texture frames are expected inside)."""
    import pandas as pd

    root = Path(root)
    path = _find_label_file(root, ("4DME_Labelling_Micro_release*.xlsx",), label_file, "4DME")
    df = pd.read_excel(path)
    df.columns = [str(c).strip() for c in df.columns]
    sub_c, fold_c = _column(df, "sub_ID"), _column(df, "fold_name")
    emotion_c, au_c = _column(df, "Emotion"), _column(df, "AUs", contains="au")
    folders: dict[str, Path] = {}
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            folders.setdefault(d, Path(dirpath) / d)
    records, problems = [], []
    for row_index, row in df.iterrows():
        if _is_missing(row[sub_c]) or _is_missing(row[fold_c]):
            continue
        clip = str(row[fold_c]).strip()
        source = f"{path.name} row {row_index} ({clip})"
        native = str(row[emotion_c]).strip().lower()
        try:  # multi-label cells ("negative+surprise") keep their first class
            emotion, composite = _emotion(re.split(r"[+/,]", native)[0], "4dme", source)
        except ValueError:
            emotion, composite = None, None
        aus, au_string = _parse_aus(row[au_c], source)
        folder = folders.get(clip)
        subject_value = str(row[sub_c]).strip()
        record = ClipRecord(
            dataset="4dme", subject=subject_value, clip=clip,
            onset=_frame_number(row[_column(df, "Onset")], "Onset", source),
            apex=_frame_number(row[_column(df, "Apex")], "Apex", source, allow_missing=True),
            offset=_frame_number(row[_column(df, "Offset")], "Offset", source),
            aus=aus, au_string=au_string, native_emotion=native, emotion=emotion,
            composite=composite, frame_dir=str(folder or root / clip),
            frame_files=index_frames(folder) if folder else {}, fps=60.0)
        if _check_frames(record, problems):
            records.append(record)
    return _finish("4dme", records, problems, on_missing)


# --------------------------------------------------------------------------------------------
# SynthMER folders (written by synthmer.write_synthmer)
# --------------------------------------------------------------------------------------------
def read_synthmer(root: str | os.PathLike, on_missing: str = "error") -> ReadResult:
    """A SynthMER folder: ``index.jsonl`` + ``<subject>/<clip>/video.mkv`` and ``flow_apex.npy``."""
    import json

    from .synthmer import ClipSpec, RenderedAU, config_from_dict

    root = Path(root)
    index = root / "index.jsonl"
    if not index.exists():
        raise MissingDataError(f"SynthMER: no index.jsonl in {root}")
    config = config_from_dict(json.loads((root / "config.json").read_text(encoding="utf-8")))
    records, problems = [], []
    for line in index.read_text(encoding="utf-8").splitlines():
        labels = json.loads(line)
        folder = root / labels["subject"] / labels["clip"]
        video, flow_file = folder / "video.mkv", folder / "flow_apex.npy"
        missing = [p.name for p in (video, flow_file) if not p.exists()]
        if missing:
            problems.append(f"synthmer/{labels['subject']}/{labels['clip']}: {missing} missing in {folder}")
            continue
        spec = ClipSpec(index=int(labels["clip"][4:]), subject=labels["subject"], clip=labels["clip"],
                        emotion=labels["emotion"],
                        aus=[RenderedAU(a["number"], a["side"], a["intensity"], a["peak_px"])
                             for a in labels["true_aus"]],
                        label_aus=labels["au_string"].split("+") if labels["au_string"] else [],
                        onset=labels["onset"], apex=labels["apex"], offset=labels["offset"],
                        num_frames=labels["num_frames"],
                        blink=tuple(labels["blink"]) if labels["blink"] else None, seed=0)
        records.append(ClipRecord.from_synth_spec(spec, config, video=str(video), flow_file=str(flow_file)))
    return _finish("synthmer", records, problems, on_missing)


READERS = {"casme2": read_casme2, "samm": read_samm, "smic_hs": read_smic_hs,
           "casme3_a": read_casme3_a, "4dme": read_4dme, "synthmer": read_synthmer}


def read_dataset(name: str, root: str | os.PathLike, **kwargs) -> ReadResult:
    """Dispatch to the reader of ``name`` (one of :data:`DATASETS`)."""
    key = name.lower().replace("-", "_").replace("(me)^3", "me3")
    aliases = {"casmeii": "casme2", "casme_ii": "casme2", "smic": "smic_hs", "smic_hs": "smic_hs",
               "casme3": "casme3_a", "casme3_a": "casme3_a", "cas_me_3": "casme3_a"}
    key = aliases.get(key, key)
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(READERS)}")
    return READERS[key](root, **kwargs)
