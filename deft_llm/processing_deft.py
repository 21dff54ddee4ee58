"""DEFT-LLM processing: a clip -> the three experts' tensors; text -> expanded, tokenized prompts.

Two classes, used the transformers way (``save_pretrained`` / ``from_pretrained`` /
``AutoProcessor``):

* :class:`DeftVideoProcessor` reads a clip (video file, video bytes, frame folder or array; see
  :mod:`video_io`), crops the face, finds onset / apex / offset, measures the onset -> apex
  motion (:mod:`optical_flow`) and returns

  - ``structure_pixels`` ``(B, 3, S, S)``: the onset face crop, RGB (gray repeated), scaled to
    [-1, 1] (``x / 127.5 - 1``);
  - ``texture_pixels`` ``(B, K, 3, T, T)``: K frames numbered ``onset + (offset - onset) * k / K``,
    k = 1..K (rounded half up, nearest existing frame; the last is the offset; short clips
    repeat frames), each minus the onset frame, in [0, 1] units times ``texture_gain``
    (default 4: a change of a quarter of the intensity range saturates), clipped to [-1, 1];
  - ``motion_map`` ``(B, 3, M, M)``: ``u``, ``v`` of the onset -> apex flow (head motion
    removed), in pixels of the ``flow_size`` face crop times ``motion_scale`` (default 0.5),
    and optical strain times ``strain_scale`` (default 5); area-resized to M. The map covers
    the face crop, so :data:`facs.REGIONS` boxes apply to it directly.

  Clips of any length and size give fixed-shape tensors, so they batch without padding.
  :meth:`DeftVideoProcessor.analyze` returns the same work as a :class:`ClipAnalysis`
  (onset / apex / offset used, whether the apex was estimated, the face box, the
  :class:`optical_flow.MotionMeasurement` with its region statistics) for the dataset builder
  and the demo; ``return_motion=True`` adds those analyses to a processor call.

* :class:`DeftProcessor` = video processor + tokenizer + ChatML chat template. A
  ``{"type": "video"}`` item becomes ``<|structure|><|texture|><|motion|>``; the processor
  expands each placeholder to that expert's token count (0 for a disabled expert: removed)
  and adds one ``<|clip|>`` after them (the model puts its summary of the clip there),
  pads the batch, can build training ``labels`` (-100 everywhere but assistant answers) and
  parses generated answers back to ``{emotion, aus, text}`` (:func:`facs.parse_answer`).

Frame numbers: onset / apex / offset are the dataset's own frame numbers: for frame folders
the numbers in the file names (CASME II ``reg_img46.jpg`` is frame 46); for videos and arrays
0-based indices, or counted from ``first_frame_number`` when given. A number inside a gap of a
folder's numbering uses the nearest frame. Defaults: onset = first frame, offset = last frame.

Face: the Haar cascade shipped with OpenCV runs on the onset frame (downscaled to at most
320 px for speed; faces at least a quarter of the frame's shorter side, as in MER close-ups);
the largest face box, made square, crops every frame (so crop jitter never becomes motion). ``face="none"`` uses whole frames (pre-cropped datasets such as CASME II
``Cropped``). No face found -> a centred square crop and a warning naming the clip.

Apex spotting (when no apex is given): for every frame after the onset up to the offset, the
DIS flow from the onset (:func:`optical_flow.fast_flow`) at ``spot_size`` px, head motion
removed (affine fit); its motion energy is the largest mean flow magnitude over the facial
regions except the eyes (a micro-expression is local, and blinks are the largest
non-expression motion). The energies are smoothed with a [1, 2, 1] / 4 filter and the apex is
their maximum. On SynthMER (medium nuisances) 58 % of spotted apexes fall within 10 % of the
clip's length of the true apex (whole-face mean energy: 25 %).

Everything is deterministic: same clip and settings, same tensors.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .facs import REGIONS, parse_answer, region_pixel_box
from .optical_flow import FLOW_METHODS, MotionMeasurement, fast_flow, measure_motion, remove_head_motion
from .video_io import ClipError, Frames, crop_resize, load_clip

EXPERTS = ("structure", "texture", "motion")
PLACEHOLDERS = {"structure": "<|structure|>", "texture": "<|texture|>", "motion": "<|motion|>"}
CLIP_TOKEN = "<|clip|>"
DEFAULT_EXPERT_NUM_TOKENS = {"structure": 4, "texture": 8, "motion": len(REGIONS)}
FACE_MODES = ("detect", "none")
_VIDEO_KEYS = ("video", "path", "url")

# ChatML. A {"type": "video"} item is one placeholder per expert; the assistant turn is wrapped
# in {% generation %} so transformers' assistant masks also work.
CHAT_TEMPLATE = (
    "{% macro render(content) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for item in content %}"
    "{% if item['type'] == 'video' %}{{ '<|structure|><|texture|><|motion|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endmacro %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ render(message['content']) + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ render(message['content']) + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CASCADE = None


def _face_cascade() -> cv2.CascadeClassifier:
    global _CASCADE
    if _CASCADE is None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's Haar face cascade is missing at {path}; install "
                               "opencv-contrib-python-headless 4.x")
        _CASCADE = cascade
    return _CASCADE


def detect_face(gray: np.ndarray, max_side: int = 320) -> tuple[int, int, int, int] | None:
    """The largest frontal face in a uint8 gray frame as a square box ``(x0, y0, x1, y1)``."""
    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    small = cv2.resize(gray, (round(width * scale), round(height * scale)),
                       interpolation=cv2.INTER_AREA) if scale < 1 else gray
    min_side = max(24, min(small.shape) // 4)   # MER clips are close-ups: faces are large
    faces = _face_cascade().detectMultiScale(small, scaleFactor=1.2, minNeighbors=5,
                                            minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, w, h = (float(v) / scale for v in max(faces, key=lambda f: (f[2] * f[3], -f[0], -f[1])))
    return _square_box(x + w / 2, y + h / 2, max(w, h), height, width)


def _square_box(cx: float, cy: float, side: float, height: int, width: int):
    side = int(round(min(side, height, width)))
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return (x0, y0, x0 + side, y0 + side)


def _spot_boxes(size: int) -> list[tuple[int, int, int, int]]:
    """Facial regions searched for the apex: all but the eyes (blinks are the largest
    non-expression motion)."""
    return [region_pixel_box(r, size, size) for r in REGIONS if not r.startswith("eye")]


@dataclass
class ClipAnalysis:
    """What the video processor measured on one clip (frame numbers are the dataset's)."""

    name: str
    frame_numbers: list[int]
    onset: int
    apex: int
    offset: int
    apex_estimated: bool
    crop_box: tuple[int, int, int, int]     # (x0, y0, x1, y1) in source pixels
    face_detected: bool | None             # None with face="none"
    flow_method: str
    measurement: MotionMeasurement         # at flow_size x flow_size (pixels of that crop)
    texture_frame_numbers: list[int]
    onset_face: np.ndarray                 # uint8 gray flow_size crops, for pictures
    apex_face: np.ndarray
    motion_energy: np.ndarray | None = None  # apex spotting curve, frames onset+1..offset
    structure: np.ndarray = field(default=None, repr=False)  # (3, S, S) float32
    texture: np.ndarray = field(default=None, repr=False)    # (K, 3, T, T) float32
    motion: np.ndarray = field(default=None, repr=False)     # (3, M, M) float32


def _per_clip(value, count: int, what: str) -> list:
    if value is None or np.isscalar(value):
        return [value] * count
    value = list(value)
    if len(value) != count:
        raise ClipError(f"{what}: got {len(value)} values for {count} clips")
    return value


def _as_clip_list(videos) -> list:
    """One clip, a list of clips, or apply_chat_template's per-sample lists -> flat list."""
    if isinstance(videos, (str, bytes, bytearray, os.PathLike, dict, Frames)) or hasattr(videos, "shape"):
        if hasattr(videos, "shape") and len(videos.shape) == 5:
            return list(videos)
        return [videos]
    clips = []
    for item in videos:
        if isinstance(item, (list, tuple)):
            if len(item) != 1:
                raise ClipError(f"each sample takes exactly one clip, got a sample with {len(item)}")
            clips.append(item[0])
        else:
            clips.append(item)
    return clips


class DeftVideoProcessor(BaseImageProcessor):
    """Clip -> structure / texture / motion tensors (see the module docstring)."""

    model_input_names = ["structure_pixels", "texture_pixels", "motion_map"]

    def __init__(self, structure_size: int = 64, texture_size: int = 64, num_texture_frames: int = 8,
                 motion_size: int = 64, flow_size: int = 128, flow_method: str = "dis",
                 face: str = "detect", texture_gain: float = 4.0, motion_scale: float = 0.5,
                 strain_scale: float = 5.0, spot_size: int = 64, noise_reference: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.structure_size = int(structure_size)
        self.texture_size = int(texture_size)
        self.num_texture_frames = int(num_texture_frames)
        self.motion_size = int(motion_size)
        self.flow_size = int(flow_size)
        self.flow_method = self._check_method(flow_method, "DeftVideoProcessor")
        self.face = self._check_face(face, "DeftVideoProcessor")
        self.texture_gain = float(texture_gain)
        self.motion_scale = float(motion_scale)
        self.strain_scale = float(strain_scale)
        self.spot_size = int(spot_size)
        # True (default, as the Uni-MER builder): noise floor from the onset -> next-frame flow
        # (when that frame is before the apex; one more flow), so the demo's AU evidence uses the
        # same rule as the dataset's dual constraint. False: from the onset -> apex flow's
        # median pixel, which also carries the drift accumulated up to the apex; it halves false
        # evidence but also recall (benchmarks/results_uni_mer.md).
        self.noise_reference = bool(noise_reference)

    @staticmethod
    def _check_method(method: str, where: str) -> str:
        if method not in FLOW_METHODS:
            raise ClipError(f"{where}: unknown flow method {method!r}; choose one of {FLOW_METHODS}")
        return method

    @staticmethod
    def _check_face(face: str, where: str) -> str:
        if face not in FACE_MODES:
            raise ClipError(f"{where}: unknown face mode {face!r}; choose one of {FACE_MODES}")
        return face

    @classmethod
    def from_config(cls, config, **kwargs) -> "DeftVideoProcessor":
        """Sizes from a DeftConfig (``*_config.image_size``, ``texture_config.num_frames``)."""
        sizes = {}
        for key, sub, attr in (("structure_size", "structure_config", "image_size"),
                               ("texture_size", "texture_config", "image_size"),
                               ("num_texture_frames", "texture_config", "num_frames"),
                               ("motion_size", "motion_config", "image_size")):
            value = getattr(getattr(config, sub, None), attr, None)
            if value is not None:
                sizes[key] = value
        return cls(**{**sizes, **kwargs})

    # ----------------------------------------------------------------------------------------
    def analyze(self, video, onset: int | None = None, apex: int | None = None,
                offset: int | None = None, first_frame_number: int | None = None,
                flow_method: str | None = None, face: str | None = None,
                name: str | None = None, measure_noise: bool = True) -> ClipAnalysis:
        """Read one clip, crop the face, resolve onset/apex/offset, measure motion, build tensors.

        ``measure_noise=False`` skips the reference flow of ``noise_reference`` (the noise floor
        then comes from the apex flow): the model's tensors do not depend on it, only the
        AU evidence does.
        """
        if isinstance(video, dict):
            spec = dict(video)
            sources = [spec.pop(k) for k in _VIDEO_KEYS if k in spec]
            if len(sources) != 1:
                raise ClipError(f"a video item needs exactly one of {_VIDEO_KEYS}, got {sorted(video)}")
            onset = spec.pop("onset", onset)
            apex = spec.pop("apex", apex)
            offset = spec.pop("offset", offset)
            first_frame_number = spec.pop("first_frame_number", first_frame_number)
            name = spec.pop("name", name)
            if spec:
                raise ClipError(f"{sources[0]}: unknown video item keys {sorted(spec)}")
            video = sources[0]
        frames = load_clip(video, first_frame_number, name)
        name = frames.name
        method = self._check_method(flow_method or self.flow_method, name)
        face = self._check_face(face or self.face, name)

        onset_idx = frames.index_of(frames.numbers[0] if onset is None else onset, "onset")
        offset_idx = frames.index_of(frames.numbers[-1] if offset is None else offset, "offset")
        if apex is not None:
            apex_idx = frames.index_of(apex, "apex")
            if onset_idx >= apex_idx:
                raise ClipError(f"{name}: onset frame {frames.numbers[onset_idx]} must come before "
                                f"apex frame {frames.numbers[apex_idx]}")
            if apex_idx > offset_idx:
                raise ClipError(f"{name}: apex frame {frames.numbers[apex_idx]} is out of range: "
                                f"after the offset frame {frames.numbers[offset_idx]}")
        elif onset_idx >= offset_idx:
            raise ClipError(f"{name}: onset frame {frames.numbers[onset_idx]} must come before the "
                            f"offset frame {frames.numbers[offset_idx]} to spot an apex")

        crop_box, face_detected = self._face_box(frames, onset_idx, face)

        energy = None
        if apex is None:
            apex_idx, energy = self._spot_apex(frames, crop_box, onset_idx, offset_idx)

        onset_face = crop_resize(frames.gray(onset_idx), crop_box, self.flow_size)
        apex_face = crop_resize(frames.gray(apex_idx), crop_box, self.flow_size)
        reference = None
        if measure_noise and self.noise_reference and onset_idx + 1 < apex_idx:
            reference = crop_resize(frames.gray(onset_idx + 1), crop_box, self.flow_size)
        measurement = measure_motion(onset_face, apex_face, method, reference=reference)

        k = self.num_texture_frames
        # by frame number (the nearest frame where the numbering has gaps, e.g. stored subsets)
        first, last = frames.numbers[onset_idx], frames.numbers[offset_idx]
        texture_idx = [frames.index_of(int(np.floor(first + (last - first) * (j + 1) / k + 0.5)), "texture")
                       for j in range(k)]
        analysis = ClipAnalysis(
            name=name, frame_numbers=frames.numbers, onset=frames.numbers[onset_idx],
            apex=frames.numbers[apex_idx], offset=frames.numbers[offset_idx],
            apex_estimated=apex is None, crop_box=tuple(int(v) for v in crop_box),
            face_detected=face_detected, flow_method=method, measurement=measurement,
            texture_frame_numbers=[frames.numbers[i] for i in texture_idx],
            onset_face=onset_face, apex_face=apex_face, motion_energy=energy)
        analysis.structure = self._structure(frames, crop_box, onset_idx)
        analysis.texture = self._texture(frames, crop_box, onset_idx, texture_idx)
        analysis.motion = self._motion(measurement)
        return analysis

    def _face_box(self, frames: Frames, onset_idx: int, face: str):
        height, width = frames.size
        if face == "none":
            return (0, 0, width, height), None
        box = detect_face(frames.gray(onset_idx))
        if box is None:
            warnings.warn(f"{frames.name}: no face found on the onset frame; using a centred "
                          "square crop", stacklevel=3)
            return _square_box(width / 2, height / 2, min(height, width), height, width), False
        return box, True

    def _spot_apex(self, frames: Frames, box, onset_idx: int, offset_idx: int):
        size = self.spot_size
        boxes = _spot_boxes(size)
        onset = crop_resize(frames.gray(onset_idx), box, size)
        energy = []
        for i in range(onset_idx + 1, offset_idx + 1):
            flow = remove_head_motion(fast_flow(onset, crop_resize(frames.gray(i), box, size)))
            magnitude = np.linalg.norm(flow, axis=2)
            energy.append(max(float(magnitude[y0:y1, x0:x1].mean()) for x0, y0, x1, y1 in boxes))
        energy = np.asarray(energy, dtype=np.float32)
        padded = np.pad(energy, 1, mode="edge")
        smoothed = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
        return onset_idx + 1 + int(np.argmax(smoothed)), energy

    def _structure(self, frames: Frames, box, onset_idx: int) -> np.ndarray:
        face = frames.face_rgb(onset_idx, box, self.structure_size)
        return (face.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)

    def _texture(self, frames: Frames, box, onset_idx: int, texture_idx: list[int]) -> np.ndarray:
        size = self.texture_size
        onset = frames.face_rgb(onset_idx, box, size).astype(np.float32)
        out = np.empty((len(texture_idx), 3, size, size), dtype=np.float32)
        for j, i in enumerate(texture_idx):
            frame = frames.face_rgb(i, box, size).astype(np.float32)
            diff = (frame - onset) * (self.texture_gain / 255.0)
            out[j] = np.clip(diff, -1.0, 1.0).transpose(2, 0, 1)
        return out

    def _motion(self, measurement: MotionMeasurement) -> np.ndarray:
        size = self.motion_size
        interpolation = cv2.INTER_AREA if self.flow_size > size else cv2.INTER_LINEAR
        flow = cv2.resize(measurement.flow, (size, size), interpolation=interpolation)
        strain = cv2.resize(measurement.strain, (size, size), interpolation=interpolation)
        return np.stack([flow[..., 0] * self.motion_scale, flow[..., 1] * self.motion_scale,
                         strain * self.strain_scale]).astype(np.float32)

    # ----------------------------------------------------------------------------------------
    def preprocess(self, videos, onsets=None, apexes=None, offsets=None, first_frame_numbers=None,
                   names=None, flow_method: str | None = None, face: str | None = None,
                   return_tensors=None, return_motion: bool = False, **kwargs) -> BatchFeature:
        """Clips -> ``structure_pixels``, ``texture_pixels``, ``motion_map`` (batched).

        ``videos``: one clip or a list (paths, bytes, folders, arrays, or dicts with
        ``video``/``path`` and optional ``onset``/``apex``/``offset``/``first_frame_number``);
        ``onsets`` / ``apexes`` / ``offsets``: per-clip frame numbers (None: default/estimated).
        ``return_motion=True`` adds ``clip_analyses`` (a list of :class:`ClipAnalysis`).
        """
        if kwargs:
            raise TypeError(f"DeftVideoProcessor.preprocess got unexpected arguments {sorted(kwargs)}")
        clips = _as_clip_list(videos)
        if not clips:
            raise ClipError("no clips given")
        per_clip = [_per_clip(v, len(clips), what) for v, what in (
            (onsets, "onsets"), (apexes, "apexes"), (offsets, "offsets"),
            (first_frame_numbers, "first_frame_numbers"), (names, "names"))]
        analyses = []
        iterator = logging.tqdm(list(zip(clips, *per_clip)), desc="clips", disable=len(clips) < 32)
        for clip, onset, apex, offset, first, name in iterator:
            analyses.append(self.analyze(clip, onset, apex, offset, first, flow_method, face, name,
                                         measure_noise=return_motion))
        data = {"structure_pixels": np.stack([a.structure for a in analyses]),
                "texture_pixels": np.stack([a.texture for a in analyses]),
                "motion_map": np.stack([a.motion for a in analyses])}
        if return_motion:
            data["clip_analyses"] = analyses
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["clip_analyses"])

    def __call__(self, videos=None, *args, **kwargs) -> BatchFeature:
        if videos is None:
            videos = kwargs.pop("images", None)
        return self.preprocess(videos, *args, **kwargs)


class DeftProcessor(ProcessorMixin):
    """Video processor + tokenizer + chat template for DEFT-LLM (see the module docstring).

    ``expert_num_tokens``: the enabled experts' token counts (a DeftConfig's
    ``expert_num_tokens()``); a placeholder of an expert not listed is removed.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None,
                 expert_num_tokens: dict | None = None):
        self.expert_num_tokens = {k: int(v) for k, v in (expert_num_tokens or DEFAULT_EXPERT_NUM_TOKENS).items()}
        unknown = set(self.expert_num_tokens) - set(EXPERTS)
        if unknown:
            raise ValueError(f"unknown experts {sorted(unknown)}; known: {EXPERTS}")
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        self._newline_ids = None

    @classmethod
    def from_config(cls, config, tokenizer, **video_kwargs) -> "DeftProcessor":
        """The processor a DeftConfig expects: sizes, enabled experts' token counts, token ids.

        Reads the config's attributes with ``getattr`` (any object with the DeftConfig
        attributes works). ``tokenizer``: e.g. ``tokenizer_build.build_tokenizer()``.
        """
        counts = None
        if callable(getattr(config, "expert_num_tokens", None)):
            counts = dict(config.expert_num_tokens())
        elif getattr(config, "experts", None) is not None:
            counts = {e: int(getattr(config, f"num_{e}_tokens", DEFAULT_EXPERT_NUM_TOKENS[e]))
                      for e in config.experts}
        for name, token in {**PLACEHOLDERS, "clip": CLIP_TOKEN}.items():
            expected = getattr(config, f"{name}_token_id", None)
            actual = tokenizer.convert_tokens_to_ids(token)
            if expected is not None and actual != expected:
                raise ValueError(f"tokenizer maps {token} to id {actual} but the config expects {expected}")
        return cls(DeftVideoProcessor.from_config(config, **video_kwargs), tokenizer,
                   expert_num_tokens=counts)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", *DeftVideoProcessor.model_input_names]

    # ----------------------------------------------------------------------------------------
    def expand_placeholders(self, text: str) -> str:
        """Each expert placeholder -> that expert's token count of copies (0: removed), then
        one ``<|clip|>`` right after the clip's last expert token."""
        ends = [text.rfind(token) + len(token) for token in PLACEHOLDERS.values() if token in text]
        if ends:
            text = text[:max(ends)] + CLIP_TOKEN + text[max(ends):]
        for expert, token in PLACEHOLDERS.items():
            text = text.replace(token, token * self.expert_num_tokens.get(expert, 0))
        return text

    def __call__(self, images=None, text=None, videos=None, audio=None, *, onsets=None, apexes=None,
                 offsets=None, first_frame_numbers=None, return_tensors=None, padding=True,
                 return_labels: bool = False, return_motion: bool = False,
                 flow_method: str | None = None, **kwargs) -> BatchFeature:
        """``text`` (str or list) with video placeholders + ``videos`` (one clip per sample).

        Returns ``input_ids``, ``attention_mask`` (padded), ``labels`` when ``return_labels``,
        and the video processor's tensors. Extra keyword arguments go to the tokenizer.
        """
        if images is not None or audio is not None:
            raise ValueError("DeftProcessor takes clips through `videos=`, not images or audio")
        for key in ("return_text_replacement_offsets", "return_mm_token_type_ids"):
            kwargs.pop(key, None)
        data = {}
        clips = _as_clip_list(videos) if videos is not None else []
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            with_video = []
            for i, sample in enumerate(texts):
                counts = {t: sample.count(t) for t in PLACEHOLDERS.values()}
                if max(counts.values()) > 1:
                    raise ValueError(f"sample {i} has more than one video; each sample takes one clip")
                with_video.append(max(counts.values()) == 1)
            if clips and len(clips) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(clips)} clips: give one clip per sample")
            if clips and not all(with_video):
                raise ValueError("every sample with a clip needs the video placeholders "
                                 "<|structure|><|texture|><|motion|> in its text")
            if not clips and any(with_video):
                raise ValueError("the text has video placeholders but no `videos` were given")
            encoded = self.tokenizer([self.expand_placeholders(t) for t in texts], padding=padding,
                                     **kwargs)
            data.update(encoded)
            if return_labels:
                data["labels"] = self.build_labels(encoded["input_ids"], encoded["attention_mask"])
        if clips:
            video_features = self.image_processor.preprocess(
                clips, onsets=onsets, apexes=apexes, offsets=offsets,
                first_frame_numbers=first_frame_numbers, flow_method=flow_method,
                return_motion=return_motion)
            data.update(video_features)
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["clip_analyses"])

    def build_labels(self, input_ids, attention_mask=None):
        """Training labels: the assistant answers (and their ``<|im_end|>``), -100 elsewhere.

        Works on lists or tensors of ids (a tensor in -> a tensor out).
        """
        as_tensor = isinstance(input_ids, torch.Tensor)
        ids = input_ids.tolist() if as_tensor else [list(s) for s in input_ids]
        if attention_mask is not None:
            mask = attention_mask.tolist() if isinstance(attention_mask, torch.Tensor) else attention_mask
        else:
            mask = [[1] * len(s) for s in ids]
        tok = self.tokenizer
        im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
        if self._newline_ids is None:
            self._newline_ids = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
        labels = []
        for seq, seq_mask in zip(ids, mask):
            out = [-100] * len(seq)
            i = 0
            while i < len(seq):
                if seq[i] == im_start and seq_mask[i]:
                    j = i + 1    # the role runs to the first newline token
                    while j < len(seq) and seq[j] not in self._newline_ids and seq[j] not in (im_start, im_end):
                        j += 1
                    if j < len(seq) and tok.decode(seq[i + 1:j + 1]).strip() == "assistant":
                        k = j + 1
                        while k < len(seq) and seq_mask[k] and seq[k] != im_start:
                            out[k] = seq[k]
                            if seq[k] == im_end:
                                break
                            k += 1
                        i = k
                    else:
                        i = j
                i += 1
            labels.append(out)
        return torch.tensor(labels, dtype=torch.long) if as_tensor else labels

    # ----------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, chat_template=None, return_labels: bool = False, **kwargs):
        """transformers' ``apply_chat_template``; a ``{"type": "video"}`` item carries the clip as
        ``video`` or ``path`` (or ``url``) and optional ``onset``/``apex``/``offset``/
        ``first_frame_number``/``name``. ``return_labels=True`` adds training labels.
        """
        if kwargs.get("return_assistant_tokens_mask"):
            raise ValueError("DeftProcessor expands video placeholders after rendering, which "
                             "return_assistant_tokens_mask does not track; use return_labels=True")
        if return_labels:
            processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
            processor_kwargs["return_labels"] = True
            kwargs["processor_kwargs"] = processor_kwargs
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def _multimodal_inputs_from_conversations(self, conversations, audio_loading_params=None,
                                              load_audio_from_video=False):
        """Video items pass to the video processor whole (with their onset/apex/offset)."""
        batch_videos = []
        for conversation in conversations:
            videos = []
            for message in conversation:
                content = message.get("content")
                if not content or isinstance(content, str):
                    continue
                for block in content:
                    kind = block.get("type")
                    if kind == "video":
                        spec = {k: v for k, v in block.items() if k != "type"}
                        if not any(k in spec for k in _VIDEO_KEYS):
                            raise ClipError("a {'type': 'video'} item needs the clip as 'video' or 'path'")
                        videos.append(spec)
                    elif kind in ("image", "audio"):
                        raise ValueError(f"DeftProcessor does not take {kind} items; use a video")
            batch_videos.append(videos)
        return [[] for _ in conversations], batch_videos, [], {}

    # ----------------------------------------------------------------------------------------
    def batch_decode(self, sequences, skip_special_tokens: bool = True, parse: bool = False, **kwargs):
        """Token ids -> strings; with ``parse=True`` -> ``{emotion, aus, text}`` dicts."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [parse_answer(t.strip()) for t in texts] if parse else texts

    def post_process(self, generated_ids, input_ids=None) -> list[dict]:
        """Generated ids -> ``{emotion, aus, text}`` per sample (:func:`facs.parse_answer`).

        ``input_ids``: the prompt, when ``generated_ids`` still starts with it (as
        ``model.generate`` returns it); its length is cut off first.
        """
        if input_ids is not None:
            generated_ids = generated_ids[:, input_ids.shape[1]:]
        return self.batch_decode(generated_ids, skip_special_tokens=True, parse=True)


DeftVideoProcessor.register_for_auto_class("AutoImageProcessor")
DeftProcessor.register_for_auto_class("AutoProcessor")
