"""Uni-MER: the instruction dataset whose text agrees with both the AU labels and the flow.

For every clip (from a reader or SynthMER) the builder

1. runs the processor's own analysis (:meth:`DeftVideoProcessor.analyze`: face crop, apex
   spotting when the label has none, onset -> apex flow with head motion removed, the noise
   floor from the frame after the onset) and reads the AU evidence
   (:func:`optical_flow.au_evidence`) off the region statistics;
2. applies the **dual constraint** (:func:`dual_constraint`): an AU is written into the text
   only when it is labelled AND its region moved in its FACS direction (one side only for
   ``L``/``R`` codes); every clip records the AUs kept, labelled-but-not-seen,
   moved-but-not-labelled (motion in a region no kept AU explains) and unverifiable (labelled
   AUs outside the FACS table of :mod:`facs`);
3. writes one chat example (emotion question, AU description or explain-then-answer, each
   from several templates) whose answer is :func:`facs.format_answer` text, so
   :func:`facs.parse_answer` reads it back;
4. stores the clip losslessly: the face crops (PNG) of the onset, the apex and the K texture
   frames the processor samples (``onset + (offset - onset) * k / K``), with their frame
   numbers, so the processor rebuilds exactly the same expert inputs from the dataset
   (:func:`example_frames`); the flow as a float16 array; labels and provenance.

The dataset is written in the Hugging Face Hub layout (``data/<split>-0000i-of-0000N.parquet``
+ ``README.md`` card with YAML configs / features / splits), streaming clip by clip, one shard
at a time; ``.build_state.json`` lists finished shards, so an interrupted build resumes
without redoing them. ``datasets.load_dataset(folder)`` reads it back; :func:`push_to_hub`
uploads it, private by default (the source datasets' licences forbid public redistribution).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from .. import facs
from ..optical_flow import au_evidence
from .readers import ClipRecord

BLINK_AUS = (43, 45)
INSTRUCTION_TYPES = ("emotion", "au_description", "explain_then_answer")
STATE_FILE = ".build_state.json"
BUILDER_VERSION = "1"

# --------------------------------------------------------------------------------------------
# The dual constraint
# --------------------------------------------------------------------------------------------
def au_code_text(number: int, side: str | None) -> str:
    """Dataset-style AU code without intensity: ``R12``, ``L2``, ``4``."""
    return {"left": "L", "right": "R"}.get(side, "") + str(number)


@dataclass
class DualConstraint:
    """The decision for one clip (codes in dataset style: ``R12``, ``6``)."""

    kept: list[facs.AUEvidence]            # labelled AND moved the AU's way: goes into the text
    labelled_not_seen: list[str]
    moved_not_labelled: list[str]
    unverifiable: list[str]                # labelled AUs without a region in facs.ACTION_UNITS

    @property
    def kept_codes(self) -> list[str]:
        return _codes_of(self.kept)


def _codes_of(evidence: Iterable[facs.AUEvidence]) -> list[str]:
    """``R12`` when only the subject's right moved, ``12`` when both sides (or a midline region)."""
    sides: dict[int, set] = {}
    for e in evidence:
        sides.setdefault(int(e.au[2:]), set()).add(facs.region_side(e.region))
    out = []
    for number in sorted(sides):
        s = sides[number]
        out.append(au_code_text(number, next(iter(s)) if len(s) == 1 and None not in s else None))
    return out


def dual_constraint(labelled: Sequence[facs.AUCode], evidence: Sequence[facs.AUEvidence],
                    min_px: float = 0.0) -> DualConstraint:
    """Keep the evidence of labelled AUs; report what disagrees (see the module docstring).

    ``evidence``: :func:`optical_flow.au_evidence` output (already above ``min_snr`` x noise
    floor); items smaller than ``min_px`` are ignored too. Blinks (AU43/45) count as motion
    only when labelled: otherwise they are nuisances, never "moved but not labelled".
    """
    labelled_numbers = {code.number for code in labelled}
    moved = [e for e in evidence if e.size >= min_px
             and (int(e.au[2:]) not in BLINK_AUS or int(e.au[2:]) in labelled_numbers)]
    kept: list[facs.AUEvidence] = []
    not_seen, unverifiable, done = [], [], set()
    for code in labelled:
        key = (code.number, code.side)
        if key in done:
            continue
        done.add(key)
        text = au_code_text(code.number, code.side)
        if code.number not in facs.ACTION_UNITS:
            unverifiable.append(text)
            continue
        regions = set(code.regions)
        matches = [e for e in moved if e.au == code.name and e.region in regions and e not in kept]
        if matches:
            kept.extend(matches)
        else:
            not_seen.append(text)
    explained = {e.region for e in kept}
    unexplained = [e for e in moved if e not in kept and e.region not in explained]
    kept.sort(key=lambda e: (int(e.au[2:]), e.region))
    return DualConstraint(kept, not_seen, _codes_of(unexplained), unverifiable)


# --------------------------------------------------------------------------------------------
# Instruction templates
# --------------------------------------------------------------------------------------------
PROMPTS: dict[str, tuple[str, ...]] = {
    "emotion": (
        "What micro-expression does this clip show?",
        "Watch the face from onset to offset. Which emotion is briefly expressed?",
        "Classify the micro-expression in this video and name the facial motion behind it.",
        "Which emotion leaks out in this short facial movement?",
    ),
    "au_description": (
        "Describe the facial Action Units that move in this clip, then name the emotion.",
        "Which facial muscles move between the onset and the apex? Give the AUs, where they move "
        "and how far, then the emotion.",
        "List the local facial movements (FACS Action Units) in this micro-expression and the "
        "emotion they express.",
    ),
    "explain_then_answer": (
        "Explain which facial movements you see, step by step, and then answer: what is the "
        "emotion?",
        "First describe the motion evidence in each facial region, then decide the emotion and "
        "justify it.",
        "Reason about the micro-movements of the brows, eyes, cheeks and mouth before you "
        "classify the micro-expression.",
    ),
}
_EMOTION_SENTENCES = {
    "happiness": "raised cheeks and pulled lip corners are the signature of happiness",
    "surprise": "raised brows and opened eyes or jaw are the signature of surprise",
    "disgust": "a wrinkled nose or raised upper lip signals disgust",
    "repression": "a tightened or depressed mouth with a raised chin suggests a repressed reaction",
    "sadness": "raised inner brows with lowered lip corners signal sadness",
    "fear": "raised and drawn-together brows with stretched lips signal fear",
    "anger": "lowered brows with tightened lids and lips signal anger",
    "contempt": "a one-sided movement of the mouth corner signals contempt",
    "others": "the movement does not match a basic-emotion prototype, so it is labelled others",
}


def _describe(kept: list[facs.AUEvidence]) -> str:
    parts = []
    for e in kept:
        unit = facs.ACTION_UNITS[int(e.au[2:])]
        if unit.direction is None:  # a contraction ("lips narrow"): no direction to move along
            parts.append(f"{e.au} ({unit.name}): {e.direction} by {e.size:.2f} px")
        else:
            parts.append(f"{e.au} ({unit.name}) moves the {facs.region_label(e.region)} {e.direction} by "
                         f"{e.size:.2f} px")
    return "; ".join(parts)


def make_reason(kind: str, emotion_word: str, kept: list[facs.AUEvidence]) -> str | None:
    """The reason line (mentions only kept AUs), or None for plain emotion questions."""
    if kind == "emotion":
        return None
    if not kept:
        return ("no labelled Action Unit moved clearly above the noise floor, so the answer rests "
                f"on the label alone: {emotion_word}.")
    if kind == "au_description":
        return _describe(kept) + "."
    sentence = _EMOTION_SENTENCES.get(emotion_word, f"this pattern is typical of {emotion_word}")
    names = ", ".join(dict.fromkeys(e.au for e in kept))
    return f"The measured movements ({names}) agree with the labels; {sentence}."


def make_messages(kind: str, template: int, emotion_word: str, kept: list[facs.AUEvidence]) -> tuple[list, str]:
    """Chat messages (user: video + prompt; assistant: the parseable answer) and the answer."""
    prompts = PROMPTS[kind]
    answer = facs.format_answer(emotion_word, kept, make_reason(kind, emotion_word, kept))
    messages = [
        {"role": "user", "content": [{"type": "video", "text": None},
                                     {"type": "text", "text": prompts[template % len(prompts)]}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return messages, answer


def _stable_int(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


# --------------------------------------------------------------------------------------------
# Build configuration and features
# --------------------------------------------------------------------------------------------
@dataclass
class BuildConfig:
    """Knobs of a Uni-MER build (all recorded in the card)."""

    image_size: int = 128          # stored face crops and the flow analysis size (px)
    flow_method: str = "dis"
    flow_store_size: int = 64      # stored flow array side (values stay in px of image_size)
    num_texture_frames: int = 8
    min_snr: float = 2.0           # evidence must exceed min_snr x the clip's noise floor
    min_px: float = 0.12           # ... and this many px at 128 px (scaled with image_size)
    shard_size: int = 100          # clips per parquet shard (the resume unit)
    instruction_types: tuple[str, ...] = INSTRUCTION_TYPES
    test_subjects: tuple[str, ...] = ()   # subjects put in the "test" split
    face: str | None = None        # "detect" / "none"; None: "none" for pre-cropped clips
    noise_reference: bool = True   # noise floor from the onset -> next-frame flow (see card)
    pretty_name: str = "Uni-MER"

    def __post_init__(self):
        from ..optical_flow import FLOW_METHODS
        if self.flow_method not in FLOW_METHODS:
            raise ValueError(f"BuildConfig.flow_method must be one of {FLOW_METHODS}")
        unknown = [t for t in self.instruction_types if t not in INSTRUCTION_TYPES]
        if unknown or not self.instruction_types:
            raise ValueError(f"BuildConfig.instruction_types: unknown {unknown}; known {INSTRUCTION_TYPES}")
        if self.shard_size < 1:
            raise ValueError("BuildConfig.shard_size must be >= 1")
        self.instruction_types = tuple(self.instruction_types)
        self.test_subjects = tuple(self.test_subjects)


def features(config: BuildConfig):
    """The ``datasets.Features`` of Uni-MER (see the dataset card for their meaning)."""
    from datasets import Array3D, Features, Image, List, Value

    f = config.flow_store_size
    text_item = {"type": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"), "dataset": Value("string"), "subject": Value("string"),
        "clip": Value("string"), "source_path": Value("string"),
        "frames": List(Image()), "frame_numbers": List(Value("int32")),
        "onset": Value("int32"), "apex": Value("int32"), "offset": Value("int32"),
        "apex_estimated": Value("bool"), "fps": Value("float32"),
        "face_box": List(Value("int32")),
        "flow": Array3D((f, f, 2), "float16"), "flow_method": Value("string"),
        "noise_floor": Value("float32"),
        "region_motion": List({"region": Value("string"), "dx": Value("float32"),
                               "dy": Value("float32"), "magnitude": Value("float32"),
                               "strain": Value("float32")}),
        "au_string": Value("string"), "labelled_aus": List(Value("string")),
        "kept_aus": List(Value("string")),
        "evidence": List({"au": Value("string"), "region": Value("string"),
                          "direction": Value("string"), "size": Value("float32")}),
        "labelled_not_seen": List(Value("string")), "moved_not_labelled": List(Value("string")),
        "unverifiable_aus": List(Value("string")),
        "au_targets": List(Value("int8")),
        "native_emotion": Value("string"), "emotion": Value("string"),
        "emotion_id": Value("int32"), "composite": Value("string"),
        "instruction_type": Value("string"),
        "messages": List({"role": Value("string"), "content": List(text_item)}),
        "true_aus": List(Value("string")), "flow_true": Array3D((f, f, 2), "float16"),
    })


# --------------------------------------------------------------------------------------------
# One clip
# --------------------------------------------------------------------------------------------
def record_frames(record: ClipRecord, loaded=None):
    """The record's frames as a lazily loading :class:`video_io.Frames` (dataset frame numbers).

    ``loaded``: the record's already rendered clip (SynthMER), to avoid rendering it twice."""
    from ..video_io import Frames, array_frames, read_video

    if record.frame_files:
        numbers = sorted(record.frame_files)

        def load(i: int) -> np.ndarray:
            path = record.frame_files[numbers[i]]
            image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"{record.id}: cannot read frame file {path}")
            if image.ndim == 2:
                return image
            return cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
        return Frames(record.id, numbers, load)
    if loaded is not None or record.loader is not None:
        frames = loaded.frames if loaded is not None else record._all_frames()
        return array_frames(frames, 0, record.id)
    if record.video:
        return read_video(record.video, 0, record.id)
    raise ValueError(f"{record.id}: the record has no frames, video or loader")


def _png(image: np.ndarray) -> bytes:
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def _resize_flow(flow: np.ndarray, size: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if flow.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(flow.astype(np.float32), (size, size), interpolation=interpolation).astype(np.float16)


def _make_processor(config: BuildConfig):
    from ..processing_deft import DeftVideoProcessor

    return DeftVideoProcessor(structure_size=config.image_size, texture_size=config.image_size,
                              num_texture_frames=config.num_texture_frames,
                              motion_size=config.flow_store_size, flow_size=config.image_size,
                              flow_method=config.flow_method, noise_reference=config.noise_reference)


def process_clip(record: ClipRecord, config: BuildConfig, processor=None) -> dict:
    """One Uni-MER row for ``record`` (see :func:`features`)."""
    from ..video_io import crop_resize

    processor = processor or _make_processor(config)
    loaded = record.loader() if record.loader is not None else None   # render SynthMER once
    frames = record_frames(record, loaded)
    face = config.face or ("none" if record.dataset == "synthmer" or record.extra.get("cropped") else "detect")
    apex = record.apex if record.apex is not None and record.apex > record.onset else None
    analysis = processor.analyze(frames, onset=record.onset, apex=apex, offset=record.offset,
                                 face=face, name=record.id)
    measurement = analysis.measurement
    evidence = au_evidence(measurement, config.min_snr)
    decision = dual_constraint(record.aus, evidence, min_px=config.min_px * config.image_size / 128)

    numbers = sorted({analysis.onset, analysis.apex, *analysis.texture_frame_numbers})
    images = []
    for number in numbers:
        crop = crop_resize(frames.rgb(frames.index_of(number, "stored")), analysis.crop_box, config.image_size)
        images.append({"bytes": _png(crop), "path": None})

    emotion_word = record.emotion or record.composite or record.native_emotion
    kind = config.instruction_types[_stable_int(record.id) % len(config.instruction_types)]
    messages, _ = make_messages(kind, _stable_int(record.id + "/template"), emotion_word, decision.kept)

    kept_names = {e.au for e in decision.kept}
    not_seen_names = {f"AU{c.lstrip('LR')}" for c in decision.labelled_not_seen}
    targets = [1 if au in kept_names else -1 if au in not_seen_names else 0 for au in facs.AU_VOCAB]

    truth = record.ground_truth(loaded)
    true_aus, flow_true = [], None
    if truth is not None:
        true_aus = [c.rstrip("ABCDE") for c in truth["aus"]]
        flow_true = _resize_flow(truth["flow_true"], config.flow_store_size)

    source_path = record.frame_dir or record.video or ""
    return {
        "id": record.id, "dataset": record.dataset, "subject": record.subject, "clip": record.clip,
        "source_path": str(source_path),
        "frames": images, "frame_numbers": numbers,
        "onset": analysis.onset, "apex": analysis.apex, "offset": analysis.offset,
        "apex_estimated": bool(analysis.apex_estimated), "fps": float(record.fps or 0.0),
        "face_box": list(analysis.crop_box),
        "flow": _resize_flow(measurement.flow, config.flow_store_size),
        "flow_method": config.flow_method, "noise_floor": float(measurement.noise_floor),
        "region_motion": [asdict(r) for r in measurement.regions.values()],
        "au_string": record.au_string,
        "labelled_aus": [au_code_text(c.number, c.side) for c in record.aus],
        "kept_aus": decision.kept_codes,
        "evidence": [asdict(e) for e in decision.kept],
        "labelled_not_seen": decision.labelled_not_seen,
        "moved_not_labelled": decision.moved_not_labelled,
        "unverifiable_aus": decision.unverifiable,
        "au_targets": targets,
        "native_emotion": record.native_emotion, "emotion": record.emotion,
        "emotion_id": facs.EMOTIONS.index(record.emotion) if record.emotion in facs.EMOTIONS else -100,
        "composite": record.composite, "instruction_type": kind, "messages": messages,
        "true_aus": true_aus, "flow_true": flow_true,
    }


def example_frames(example: dict):
    """A dataset row's stored frames as :class:`video_io.Frames` for ``DeftVideoProcessor``
    (use ``face="none"``: the frames are already face crops) with its onset/apex/offset."""
    from ..video_io import Frames

    images = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else
              cv2.cvtColor(cv2.imdecode(np.frombuffer(im["bytes"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for im in example["frames"]]
    return Frames(example["id"], list(example["frame_numbers"]), lambda i: images[i])


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def _empty_stats() -> dict:
    return {"clips": 0, "kept": 0, "labelled": 0, "labelled_not_seen": 0, "moved_not_labelled": 0,
            "unverifiable": 0, "clips_without_kept_au": 0, "apex_estimated": 0,
            "emotions": {}, "composite": {}, "instruction_types": {}, "datasets": {},
            "truth_tp": 0, "truth_fp": 0, "truth_fn": 0, "label_tp": 0, "label_fp": 0,
            "seconds": 0.0}


def _truth_pairs(codes: Iterable[str]) -> set[tuple[int, str]]:
    pairs = set()
    for code in codes:
        for au in facs.parse_au_string(code):
            pairs |= {(au.number, r) for r in au.regions}
    return pairs


def _add_row_stats(stats: dict, row: dict) -> None:
    stats["clips"] += 1
    stats["kept"] += len(row["kept_aus"])
    stats["labelled"] += len(row["labelled_aus"])
    stats["labelled_not_seen"] += len(row["labelled_not_seen"])
    stats["moved_not_labelled"] += len(row["moved_not_labelled"])
    stats["unverifiable"] += len(row["unverifiable_aus"])
    stats["clips_without_kept_au"] += not row["kept_aus"]
    stats["apex_estimated"] += bool(row["apex_estimated"])
    for key, value in (("emotions", row["emotion"] or row["native_emotion"]),
                       ("composite", row["composite"] or "none"),
                       ("instruction_types", row["instruction_type"]), ("datasets", row["dataset"])):
        stats[key][value] = stats[key].get(value, 0) + 1
    if row["dataset"] == "synthmer":
        truth = _truth_pairs(row["true_aus"])
        kept = {(int(e["au"][2:]), e["region"]) for e in row["evidence"]}
        labels = _truth_pairs(row["labelled_aus"])
        stats["truth_tp"] += len(kept & truth)
        stats["truth_fp"] += len(kept - truth)
        stats["truth_fn"] += len(truth - kept)
        stats["label_tp"] += len(labels & truth)
        stats["label_fp"] += len(labels - truth)


def _merge(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            for k, v in value.items():
                total[key][k] = total[key].get(k, 0) + v
        else:
            total[key] += value


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------
@dataclass
class BuildReport:
    out_dir: str
    splits: dict[str, int]
    stats: dict
    shards_written: int
    shards_reused: int
    clips_processed: int
    seconds: float
    skipped_sources: list[str] = field(default_factory=list)
    split_bytes: dict[str, int] = field(default_factory=dict)   # parquet bytes per split

    def summary(self) -> str:
        s = self.stats
        lines = [f"Uni-MER at {self.out_dir}: {s['clips']} clips {self.splits}; shards written "
                 f"{self.shards_written}, reused {self.shards_reused}; {self.seconds:.1f} s",
                 f"AUs labelled {s['labelled']}, kept {s['kept']}, labelled-not-seen "
                 f"{s['labelled_not_seen']}, moved-not-labelled {s['moved_not_labelled']}, "
                 f"unverifiable {s['unverifiable']}"]
        if s["truth_tp"] + s["truth_fp"] + s["truth_fn"]:
            lines.append(f"kept AUs vs SynthMER truth: precision {precision(s):.3f}, recall {recall(s):.3f}")
        return "\n".join(lines)


def precision(stats: dict) -> float:
    return stats["truth_tp"] / max(stats["truth_tp"] + stats["truth_fp"], 1)


def recall(stats: dict) -> float:
    return stats["truth_tp"] / max(stats["truth_tp"] + stats["truth_fn"], 1)


def _fingerprint(config: BuildConfig, ids: list[str]) -> str:
    blob = json.dumps({"config": asdict(config), "ids": ids, "version": BUILDER_VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def _plan(records: Sequence[ClipRecord], config: BuildConfig) -> dict[str, list[list[int]]]:
    """split -> shards -> record positions (deterministic: the resume unit)."""
    test = set(config.test_subjects)
    by_split: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_split.setdefault("test" if record.subject in test else "train", []).append(i)
    return {split: [positions[k:k + config.shard_size] for k in range(0, len(positions), config.shard_size)]
            for split, positions in by_split.items()}


def build_uni_mer(records: Sequence[ClipRecord], out_dir: str | os.PathLike,
                  config: BuildConfig | None = None, *, progress: bool = True,
                  overwrite: bool = False, source_description: str = "",
                  license_note: str | None = None, skipped_sources: Sequence[str] = (),
                  extra_card: dict | None = None) -> BuildReport:
    """Build (or resume) Uni-MER from ``records`` into ``out_dir`` (Hub layout).

    Finished shards listed in ``.build_state.json`` are kept when the same records and
    config are built again; a different build in the same folder needs ``overwrite=True``.
    """
    import datasets
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    config = config or BuildConfig()
    records = list(records)
    if not records:
        raise ValueError("build_uni_mer: no records to build from")
    out = Path(out_dir)
    data_dir = out / "data"
    state_path = out / STATE_FILE
    fingerprint = _fingerprint(config, [r.id for r in records])
    state = {"fingerprint": fingerprint, "shards": {}}
    if state_path.exists():
        old = json.loads(state_path.read_text(encoding="utf-8"))
        if old.get("fingerprint") == fingerprint:
            state = old
        elif not overwrite:
            raise FileExistsError(f"{out} holds a different Uni-MER build (other records or config); "
                                  "pass overwrite=True to replace it")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    elif data_dir.exists() and any(data_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{data_dir} already holds files not made by this build; pass "
                                  "overwrite=True to replace them")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)

    plan = _plan(records, config)
    feats = features(config)
    processor = _make_processor(config)
    start = time.perf_counter()
    written = reused = processed = 0
    total = sum(len(p) for shards in plan.values() for p in shards)
    bar = tqdm(total=total, desc="Uni-MER", unit="clip", disable=not progress)
    for split, shards in plan.items():
        for k, positions in enumerate(shards):
            name = f"{split}-{k:05d}-of-{len(shards):05d}"
            path = data_dir / f"{name}.parquet"
            if name in state["shards"] and path.exists():
                reused += 1
                bar.update(len(positions))
                continue
            t0 = time.perf_counter()
            rows, stats = [], _empty_stats()
            for i in positions:
                row = process_clip(records[i], config, processor)
                _add_row_stats(stats, row)
                rows.append(row)
                processed += 1
                bar.update(1)
            stats["seconds"] = time.perf_counter() - t0
            tmp = path.with_suffix(".parquet.tmp")
            table = datasets.Dataset.from_list(rows, features=feats).data.table  # keeps the features
            pq.write_table(table, str(tmp))
            os.replace(tmp, path)
            del rows, table
            state["shards"][name] = {"split": split, "clips": len(positions), "stats": stats,
                                     "num_bytes": path.stat().st_size}
            state_path.write_text(json.dumps(state, indent=1), encoding="utf-8")
            written += 1
    bar.close()
    expected = {f"{s}-{k:05d}-of-{len(sh):05d}.parquet" for s, sh in plan.items() for k in range(len(sh))}
    for stale in data_dir.glob("*.parquet"):
        if stale.name not in expected:
            stale.unlink()
    totals = _empty_stats()
    splits: dict[str, int] = {}
    split_bytes: dict[str, int] = {}
    for info in state["shards"].values():
        _merge(totals, info["stats"])
        splits[info["split"]] = splits.get(info["split"], 0) + info["clips"]
        split_bytes[info["split"]] = split_bytes.get(info["split"], 0) + info["num_bytes"]
    report = BuildReport(str(out), splits, totals, written, reused, processed,
                         time.perf_counter() - start, list(skipped_sources), split_bytes)
    datasets_used = sorted(totals["datasets"])
    write_card(out, config, report, feats, datasets_used, source_description, license_note, extra_card)
    return report


# --------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------
LICENSED_NOTE = (
    "Derived from licensed research datasets ({names}). Their licences forbid public "
    "redistribution of the frames: keep this dataset private and share it only with people who "
    "hold the same licences. The labels, templates and code are Apache-2.0.")
SYNTH_NOTE = ("Fully synthetic (SynthMER, generated by deft-llm); no real faces. Apache-2.0.")


def write_card(out: Path, config: BuildConfig, report: BuildReport, feats, datasets_used: list[str],
               source_description: str = "", license_note: str | None = None,
               extra_card: dict | None = None) -> Path:
    """README.md with the Hub YAML header (configs, features, splits) and the statistics."""
    import yaml

    s = report.stats
    licensed = [d for d in datasets_used if d != "synthmer"]
    note = license_note or (LICENSED_NOTE.format(names=", ".join(licensed)) if licensed else SYNTH_NOTE)
    header = {
        "pretty_name": config.pretty_name,
        "license": "other" if licensed else "apache-2.0",
        "language": ["en"],
        "tags": ["micro-expression", "facs", "optical-flow", "instruction-tuning", "deft-llm"]
        + (["synthetic"] if not licensed else []),
        "task_categories": ["video-text-to-text"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": split, "path": f"data/{split}-*.parquet"}
                                    for split in sorted(report.splits)]}],
        "dataset_info": {"features": feats._to_yaml_list(),
                         "splits": [{"name": split, "num_bytes": report.split_bytes.get(split, 0),
                                     "num_examples": n}
                                    for split, n in sorted(report.splits.items())]},
    }
    if licensed:
        header["license_name"] = "source-dataset-licences"
    pr = ""
    if s["truth_tp"] + s["truth_fp"] + s["truth_fn"]:
        label_precision = s["label_tp"] / max(s["label_tp"] + s["label_fp"], 1)
        pr = (f"| kept AUs vs SynthMER ground truth (per AU and region) | precision {precision(s):.3f}, "
              f"recall {recall(s):.3f} |\n| labelled AUs vs ground truth | precision {label_precision:.3f} |\n")
    table = "\n".join(f"| {k} | {v} |" for k, v in sorted(s["emotions"].items()))
    body = f"""
# {config.pretty_name}

Instruction data for micro-expression recognition whose text agrees with **both** the source
AU labels and the optical flow measured in the clip (the Uni-MER idea of DEFT-LLM), built by
`deft_llm.data` ({', '.join(datasets_used)}). {source_description}

**Licence.** {note}

## How it was built
For every clip, `DeftVideoProcessor.analyze` cropped the face ({config.face or 'whole frame for pre-cropped clips, Haar cascade otherwise'}),
took the labelled apex (or spotted it from motion when absent), measured the onset -> apex
optical flow ({config.flow_method}) at {config.image_size} px with head motion removed, and the noise
floor from {'the onset -> next-frame flow' if config.noise_reference else "the onset -> apex flow's median pixel"}. `optical_flow.au_evidence` (min SNR {config.min_snr})
lists the (AU, region) pairs that moved in their FACS direction; the **dual constraint** keeps
an AU in the text only when it is labelled AND moved (side-aware for L/R codes, and at least
{config.min_px} px at 128 px). Each clip records `kept_aus`, `labelled_not_seen`,
`moved_not_labelled` (motion in regions that no kept AU explains; blinks excluded) and
`unverifiable_aus` (labelled AUs outside the FACS table). One conversation per clip, type chosen
by a hash of the clip id among {list(config.instruction_types)}, prompt from several templates;
answers are `facs.format_answer` text (`Motion evidence: ... / Emotion: ... / Reason: ...`),
read back by `facs.parse_answer`.

## Columns
- `frames`: lossless PNG face crops ({config.image_size} px, RGB) of the onset, the apex and the
  {config.num_texture_frames} texture frames the processor samples; `frame_numbers` are the source
  dataset's frame numbers of those images; `onset`/`apex`/`offset` likewise (`apex_estimated`
  when spotted). `deft_llm.data.example_frames(row)` turns a row back into the processor's clip.
- `flow`: onset -> apex flow, head motion removed, float16 ({config.flow_store_size}x{config.flow_store_size}x2, values in
  px of the {config.image_size} px crop); `noise_floor` (px); `region_motion` per `facs.REGIONS` box.
- `au_string` (as labelled), `labelled_aus`, `kept_aus`, `evidence` (kept AU, region,
  direction, size px), `labelled_not_seen`, `moved_not_labelled`, `unverifiable_aus`,
  `au_targets` (per `facs.AU_VOCAB`: 1 kept, -1 labelled but not seen, 0 otherwise).
- `native_emotion`, `emotion` (`facs.EMOTIONS`, null when only a coarse class exists),
  `emotion_id` (-100 unknown), `composite` (MEGC2019 3-class, null for others).
- `messages`: chat format (user: video + text; assistant: answer), `instruction_type`.
- Provenance: `dataset`, `subject`, `clip`, `source_path`, `face_box`, `flow_method`.
- SynthMER only: `true_aus`, `flow_true` (true expression flow at the apex, same layout as `flow`).

## Statistics
| quantity | value |
|---|---|
| clips | {s['clips']} ({', '.join(f'{k}: {v}' for k, v in sorted(report.splits.items()))}) |
| AUs labelled | {s['labelled']} |
| AUs kept (labelled and moved) | {s['kept']} |
| labelled but not seen | {s['labelled_not_seen']} |
| moved but not labelled | {s['moved_not_labelled']} |
| labelled, unverifiable | {s['unverifiable']} |
| clips with no kept AU | {s['clips_without_kept_au']} |
| apex estimated from motion | {s['apex_estimated']} |
{pr}
| emotion | clips |
|---|---|
{table}

Instruction types: {json.dumps(s['instruction_types'])}. Composite classes: {json.dumps(s['composite'])}.
"""
    if report.skipped_sources:
        body += "\nSource clips skipped (missing data):\n" + "\n".join(f"- {x}" for x in report.skipped_sources) + "\n"
    if extra_card:
        body += "\n## Source details\n```json\n" + json.dumps(extra_card, indent=1) + "\n```\n"
    build = {"config": asdict(config), "builder_version": BUILDER_VERSION}
    body += "\n## Build configuration\n```json\n" + json.dumps(build, indent=1) + "\n```\n"
    path = out / "README.md"
    path.write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Loading and publishing
# --------------------------------------------------------------------------------------------
def load_uni_mer(path_or_repo: str, split: str | None = None, **kwargs):
    """``datasets.load_dataset`` on a built folder or a Hub repo (kept for symmetry)."""
    import datasets

    return datasets.load_dataset(str(path_or_repo), split=split, **kwargs)


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = True,
                token: str | None = None, allow_public_licensed: bool = False,
                commit_message: str = "Upload Uni-MER") -> str:
    """Upload a built Uni-MER folder to a Hub dataset repo, **private** unless asked otherwise.

    A public upload of a dataset derived from licensed sources is refused unless
    ``allow_public_licensed=True`` (their licences forbid redistributing the frames)."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    card = folder / "README.md"
    if not card.exists() or not any((folder / "data").glob("*.parquet")):
        raise FileNotFoundError(f"{folder} is not a built Uni-MER folder (README.md + data/*.parquet)")
    if not private and "license: other" in card.read_text(encoding="utf-8") and not allow_public_licensed:
        raise PermissionError(f"{folder} is derived from licensed datasets whose licences forbid public "
                              "redistribution; push it private, or pass allow_public_licensed=True "
                              "if you hold the rights")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                      ignore_patterns=[STATE_FILE, "*.tmp"], commit_message=commit_message)
    return repo_id
