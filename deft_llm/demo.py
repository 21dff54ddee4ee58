"""The DEFT-LLM Gradio demo: upload a face clip, see the micro-expression and the motion behind it.

    deft-llm demo [--checkpoint PATH_OR_HUB_ID] [--port 7860] [--share]
    python space/app.py                       # the same app, as a Hugging Face Space runs it
    deft-llm predict CLIP [--onset N --apex N] [--face none]   # the same analysis, as JSON

What one run does (each stage is timed and shown under "Details"):

1. **decode**: the upload is checked (size, a readable video stream, 2 to ``max_frames``
   frames) and decoded with PyAV (:mod:`video_io`);
2. **preprocessing**: the checkpoint's own processor finds the face, the apex (unless given),
   and measures the onset -> apex optical flow and strain (:mod:`optical_flow`) - the same
   numbers the model sees and the AU evidence table reports;
3. **experts + heads**: one forward pass gives the emotion head's class probabilities and the
   AU head's probabilities;
4. **generation**: the language model writes the explanation (greedy), AU-grounded: where it
   leaves out an AU the AU head finds, it writes on from where that AU belongs
   (:func:`evaluate.ground_answers`), so the explanation and the AU column agree.

Checkpoint, first match wins: ``--checkpoint`` / ``build_demo(checkpoint=...)``, the
``DEFT_CHECKPOINT`` environment variable, the SynthMER checkpoint bundled in the package
(``deft_llm/assets/deft-tiny-synthmer``). Folders and Hub ids both load through
``AutoModelForImageTextToText`` / ``AutoProcessor`` with ``trust_remote_code=True``.

Example clips are SynthMER clips rendered on first start (a few seconds) into
``DEFT_EXAMPLES_DIR`` or a folder in the system temp dir, so the repository carries no videos.
They are written as VP9 *lossless* WebM: a browser can play them and their luma, which the
optical flow reads, is exact (lossy codecs erase sub-pixel micro-motion). They come from a
SynthMER seed (:data:`EXAMPLE_SEED`) other than the training default, i.e. faces the bundled
checkpoint has not seen, and they are face crops already, so they run with ``face="none"``.

Bad input never shows a stack trace: every problem becomes a :class:`gradio.Error` whose message
names the file and what is wrong, and the server keeps serving.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import facs
from .data.uni_mer import PROMPTS
from .optical_flow import au_evidence
from .video_io import ClipError, Frames, crop_resize, load_clip

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "DEFT_CHECKPOINT"
EXAMPLES_ENV = "DEFT_EXAMPLES_DIR"
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "deft-tiny-synthmer"
MAX_UPLOAD_MB = 50.0        # larger files are refused before decoding
MAX_FRAMES = 2000           # ~7 s at 300 fps, 20 s at 100 fps: MER clips are short
MAX_NEW_TOKENS = 160        # room for evidence + emotion + reason lines
# Below this many parameters the model runs on one CPU thread: its matrices are so small that
# thread hand-offs cost more than they save (tiny checkpoint, 2 busy cores: 0.02 s vs 1.4 s per
# forward pass). Larger models keep torch's default.
SINGLE_THREAD_MAX_PARAMS = 50_000_000
# Uni-MER's first explain-then-answer question: the model was trained to answer it with the
# evidence line, the emotion and a reason.
PROMPT = PROMPTS["explain_then_answer"][0]
BLINK_AUS = ("AU43", "AU45")  # eye closure / blink: nuisances, not micro-expressions
EXAMPLE_SEED = 2026
EXAMPLE_EMOTIONS = ("happiness", "surprise", "disgust", "sadness")
FACE_CHOICES = [("detect the face (camera footage)", "detect"),
                ("none: the clip is already a face crop", "none")]
EVIDENCE_HEADERS = ["AU", "action", "region", "direction", "size (px)", "AU head p"]
STAGES = ("decode", "preprocessing", "experts + heads", "generation", "pictures")


class DemoInputError(ValueError):
    """An upload or setting the demo cannot use; the message is shown to the user as is."""


# ---------------------------------------------------------------------------------------------
# Checkpoint and example clips
# ---------------------------------------------------------------------------------------------
def resolve_checkpoint(checkpoint: str | os.PathLike | None = None) -> str:
    """``checkpoint`` if given, else ``$DEFT_CHECKPOINT``, else the bundled SynthMER checkpoint."""
    if checkpoint:
        return str(checkpoint)
    if os.environ.get(CHECKPOINT_ENV):
        return os.environ[CHECKPOINT_ENV]
    if not (BUNDLED_CHECKPOINT / "config.json").exists():
        raise FileNotFoundError(
            f"the bundled checkpoint {BUNDLED_CHECKPOINT} is missing; pass --checkpoint "
            f"PATH_OR_HUB_ID or set {CHECKPOINT_ENV} (train one with `python -m deft_llm.sft "
            "--config configs/sft_synth_tiny.yaml`)")
    return str(BUNDLED_CHECKPOINT)


def write_lossless_webm(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """RGB uint8 frames ``(N, H, W, 3)`` -> VP9 lossless WebM (playable in browsers, exact luma)."""
    import av

    tmp = Path(f"{path}.{os.getpid()}.part")   # unique per process; renamed when complete
    with av.open(str(tmp), "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=Fraction(int(fps), 1),
                                      options={"lossless": "1", "row-mt": "1"})
        stream.width, stream.height, stream.pix_fmt = int(frames.shape[2]), int(frames.shape[1]), "yuv420p"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24").reformat(format="yuv420p")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def default_examples_dir() -> Path:
    return Path(os.environ.get(EXAMPLES_ENV) or Path(tempfile.gettempdir()) / "deft-llm-examples")


@dataclass(frozen=True)
class ExampleClip:
    """A rendered SynthMER example and the labels SynthMER knows about it."""

    path: Path
    emotion: str
    onset: int          # frame indices (0-based), as the demo's onset / apex inputs take them
    apex: int
    aus: str            # the rendered AUs as FACS codes, e.g. "6C+12B"


def make_examples(folder: str | os.PathLike | None = None, emotions=EXAMPLE_EMOTIONS,
                  seed: int = EXAMPLE_SEED) -> list[ExampleClip]:
    """One SynthMER clip per emotion, 128 px at 100 fps: the first under ``seed`` whose AUs are
    all of intensity C or stronger and that has no blink (clear examples, not hard cases).

    Deterministic; files already there are reused. Returned in ``emotions`` order, files named
    ``synthmer_<emotion>_<clip>.webm``.
    """
    from .data.synthmer import SynthConfig, SynthMER

    folder = Path(folder) if folder else default_examples_dir()
    folder.mkdir(parents=True, exist_ok=True)
    synth = SynthMER(SynthConfig(image_size=128, fps=100, seed=seed), n_clips=2000)
    found: dict[str, ExampleClip] = {}
    for index in range(len(synth)):
        spec = synth.spec(index)
        if (spec.emotion not in emotions or spec.emotion in found or spec.blink is not None
                or any(au.intensity in "AB" for au in spec.aus)):
            continue
        path = folder / f"synthmer_{spec.emotion}_{spec.clip}.webm"
        if not path.exists():
            write_lossless_webm(path, synth[index].frames, synth.config.fps)
        found[spec.emotion] = ExampleClip(path, spec.emotion, spec.onset, spec.apex, spec.au_string)
        if len(found) == len(emotions):
            break
    return [found[e] for e in emotions if e in found]


# ---------------------------------------------------------------------------------------------
# The engine (no Gradio): checks, model, pictures
# ---------------------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """Everything one analysis shows."""

    emotion: str                         # the emotion head's top class
    probabilities: dict[str, float]      # emotion head, all classes
    evidence: list[list]                 # rows of EVIDENCE_HEADERS
    explanation: str                     # the generated text
    parsed: dict                         # processor.post_process: {emotion, aus, text}
    apex_image: np.ndarray               # RGB face crop at the apex
    motion_image: np.ndarray             # RGB picture: flow, strain, regions
    details: str                         # markdown: frames, face, noise floor, timings, notes
    timings: dict[str, float] = field(default_factory=dict)   # seconds per STAGES entry
    new_tokens: int = 0                  # the answer's length in tokens
    analysis: object = None              # the processor's ClipAnalysis


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def check_upload(path: str | os.PathLike | None, max_upload_mb: float = MAX_UPLOAD_MB,
                 max_frames: int = MAX_FRAMES) -> int:
    """Refuse what the demo cannot analyse before decoding it; returns the frame count.

    Frames are counted from the container's packets (no decoding), so a long video is refused
    without filling memory.
    """
    import av

    if path is None or str(path) == "":
        raise DemoInputError("No clip: upload a video, record one with the webcam or pick an example.")
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DemoInputError(f"{name}: file not found.")
    size = _size_mb(path)
    if size > max_upload_mb:
        raise DemoInputError(f"{name}: the file is {size:.1f} MB; this demo takes videos up to "
                             f"{max_upload_mb:g} MB. Trim the clip to the micro-expression.")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        raise DemoInputError(f"{name}: this file is not a video that can be read (not a video, or "
                             "corrupt). Upload an mp4, webm, avi, mov or mkv clip.") from None
    with container:
        if not container.streams.video:
            raise DemoInputError(f"{name}: the file has no video stream.")
        count = 0
        try:
            for packet in container.demux(container.streams.video[0]):
                if packet.size:
                    count += 1
                if count > max_frames:
                    raise DemoInputError(f"{name}: the clip is longer than {max_frames} frames; "
                                         "trim it to the micro-expression (onset to offset).")
        except av.FFmpegError:
            raise DemoInputError(f"{name}: the video is corrupt (its data cannot be read).") from None
    if count < 2:
        raise DemoInputError(f"{name}: the clip is too short: {count} frame(s); onset -> apex motion "
                             "needs at least 2 frames.")
    return count


def _optional_frame(value, what: str) -> int | None:
    """A frame index from the UI (text) or the API (int / text); empty -> None (automatic)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        number = None
    if number is None or not number.is_integer() or number < 0:
        raise DemoInputError(f"{what} frame must be a frame index (0, 1, 2, ...) or empty, got {value!r}")
    return int(number)


class DeftDemo:
    """The demo's work without the UI: load a checkpoint once, analyse clips.

    ``max_new_tokens`` caps the explanation; ``max_upload_mb`` / ``max_frames`` bound uploads;
    ``num_threads``: torch threads while the model runs ("auto": 1 for models under
    :data:`SINGLE_THREAD_MAX_PARAMS` parameters, else torch's default), set around each call
    and restored after. Calls are serialised (one model, CPU): Gradio queues requests anyway.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                 max_upload_mb: float = MAX_UPLOAD_MB, max_frames: int = MAX_FRAMES,
                 num_threads: int | str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.checkpoint = resolve_checkpoint(checkpoint)
        self.model = AutoModelForImageTextToText.from_pretrained(self.checkpoint, trust_remote_code=True)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(self.checkpoint, trust_remote_code=True)
        self.max_new_tokens = int(max_new_tokens)
        self.max_upload_mb = float(max_upload_mb)
        self.max_frames = int(max_frames)
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.au_labels = list(getattr(self.model.config, "au_labels", []) or [])
        self.prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}],
            tokenize=False, add_generation_prompt=True)
        self.prompt_ids = self.processor.tokenizer(self.processor.expand_placeholders(self.prompt),
                                                   return_tensors="pt")
        self._lock = threading.Lock()
        self._torch = torch
        if num_threads == "auto":
            small = sum(p.numel() for p in self.model.parameters()) < SINGLE_THREAD_MAX_PARAMS
            num_threads = 1 if small else None
        self.num_threads = None if num_threads is None else int(num_threads)

    @contextlib.contextmanager
    def _threads(self):
        """torch's intra-op threads set to ``num_threads`` for one model call, then restored."""
        if self.num_threads is None:
            yield
            return
        previous = self._torch.get_num_threads()
        self._torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            self._torch.set_num_threads(previous)

    # -- stages --------------------------------------------------------------------------------
    def decode(self, path: str | os.PathLike) -> Frames:
        """Check and decode an upload (raises :class:`DemoInputError` with a readable message)."""
        check_upload(path, self.max_upload_mb, self.max_frames)
        try:
            frames = load_clip(str(path), name=Path(path).name)
            frames.size   # decode the first frame now: a corrupt stream fails here, not later
        except ClipError as err:
            raise DemoInputError(str(err)) from None
        return frames

    def preprocess(self, frames: Frames, onset: int | None = None, apex: int | None = None,
                   face: str = "detect"):
        """The processor's :class:`ClipAnalysis` (face, apex, flow, expert tensors) + warnings."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                analysis = self.processor.image_processor.analyze(frames, onset=onset, apex=apex, face=face)
            except ValueError as err:   # ClipError, also a Hub checkpoint's own copy of it
                raise DemoInputError(str(err)) from None
        return analysis, [str(w.message) for w in caught]

    @staticmethod
    def clip_tensors(analysis) -> dict[str, np.ndarray]:
        """The three experts' inputs of one clip (numpy, unbatched), keyed as the model takes them."""
        return {"structure_pixels": analysis.structure, "texture_pixels": analysis.texture,
                "motion_map": analysis.motion}

    def model_inputs(self, analysis) -> dict:
        batch = {k: self._torch.from_numpy(v[None]) for k, v in self.clip_tensors(analysis).items()}
        return {**self.prompt_ids, **batch}

    def heads(self, inputs: dict) -> tuple[dict[str, float], dict[str, float]]:
        """Emotion class probabilities and AU head probabilities from one forward pass."""
        with self._threads(), self._torch.inference_mode():
            out = self.model(**inputs)
        probs = out.emotion_logits.float().softmax(-1)[0].tolist()
        emotions = {self.id2label[i]: float(p) for i, p in enumerate(probs)}
        aus = {}
        if getattr(out, "au_logits", None) is not None and self.au_labels:
            aus = dict(zip(self.au_labels, out.au_logits.float().sigmoid()[0].tolist()))
        return emotions, aus

    def generate(self, analysis, au_probabilities: dict[str, float]) -> tuple[dict, int]:
        """The answer, parsed (``{emotion, aus, text}``), and its length in tokens.

        AU-grounded, as in the LOSO results (:func:`evaluate.ground_answers`): the evidence
        names every AU the AU head gives p > 0.5, so the explanation and the AU column agree.
        """
        from .evaluate import generate_answers, ground_answers

        clip = self.clip_tensors(analysis)
        required = {au for au, p in au_probabilities.items() if p > 0.5}
        with self._threads(), self._torch.inference_mode():
            free = generate_answers(self.model, self.processor, [self.prompt], [clip], self.max_new_tokens,
                                    stop_strings=())
            answer = ground_answers(self.model, self.processor, [self.prompt], [clip], free, [required],
                                    self.max_new_tokens, stop_strings=())[0]
        return facs.parse_answer(answer.strip()), len(self.processor.tokenizer(answer)["input_ids"])

    # -- one clip ------------------------------------------------------------------------------
    def run(self, path, onset=None, apex=None, face: str = "detect", progress=None) -> DemoResult:
        """Analyse one clip; ``progress(fraction, desc)`` is called between stages."""
        step = progress or (lambda *a, **k: None)
        if face not in ("detect", "none"):
            raise DemoInputError(f"face must be 'detect' or 'none', got {face!r}")
        onset, apex = _optional_frame(onset, "onset"), _optional_frame(apex, "apex")
        with self._lock:
            timings = {}
            step(0.0, desc="decoding the clip")
            start = time.perf_counter()
            frames = self.decode(path)
            timings["decode"] = time.perf_counter() - start

            step(0.15, desc="face, apex and optical flow")
            start = time.perf_counter()
            analysis, notes = self.preprocess(frames, onset, apex, face)
            timings["preprocessing"] = time.perf_counter() - start

            step(0.4, desc="experts and emotion head")
            start = time.perf_counter()
            inputs = self.model_inputs(analysis)
            probabilities, au_probabilities = self.heads(inputs)
            timings["experts + heads"] = time.perf_counter() - start

            step(0.55, desc="writing the explanation")
            start = time.perf_counter()
            parsed, new_tokens = self.generate(analysis, au_probabilities)
            timings["generation"] = time.perf_counter() - start

            step(0.9, desc="drawing the motion")
            start = time.perf_counter()
            apex_idx = frames.index_of(analysis.apex, "apex")
            apex_image = crop_resize(frames.rgb(apex_idx), analysis.crop_box, 256)
            evidence = measured_evidence(analysis.measurement)
            rows = evidence_rows(evidence, au_probabilities)
            motion_image = motion_picture(analysis, evidence)
            timings["pictures"] = time.perf_counter() - start
        emotion = max(probabilities, key=probabilities.get)
        details = describe(analysis, emotion, parsed, timings, notes, len(frames), new_tokens)
        return DemoResult(emotion, probabilities, rows, parsed["text"], parsed, apex_image,
                          motion_image, details, timings, new_tokens, analysis)


def measured_evidence(measurement) -> list[facs.AUEvidence]:
    """:func:`optical_flow.au_evidence` without the blink AUs (43/45), sorted by AU then region."""
    return [e for e in au_evidence(measurement) if e.au not in BLINK_AUS]


def evidence_rows(evidence: list[facs.AUEvidence], au_probabilities: dict | None = None) -> list[list]:
    """Table rows (:data:`EVIDENCE_HEADERS`); the last column is the model's AU head probability."""
    au_probabilities = au_probabilities or {}
    rows = []
    for e in evidence:
        number = int(e.au[2:])
        p = au_probabilities.get(e.au)
        rows.append([e.au, facs.ACTION_UNITS[number].name, facs.region_label(e.region), e.direction,
                     round(float(e.size), 2), None if p is None else round(float(p), 2)])
    return rows


def describe(analysis, emotion: str, parsed: dict, timings: dict, notes: list[str], num_frames: int,
             new_tokens: int = 0) -> str:
    """The details panel (markdown)."""
    apex_how = "estimated from motion energy" if analysis.apex_estimated else "given"
    face = {True: "face detected", False: "no face found: centre crop", None: "whole frame (face crop given)"}
    lines = [
        f"**Frames**: {num_frames} · onset {analysis.onset} · apex {analysis.apex} ({apex_how}) · "
        f"offset {analysis.offset}",
        f"**Face**: {face[analysis.face_detected]}, box {list(analysis.crop_box)} · "
        f"**flow**: {analysis.flow_method}, noise floor {analysis.measurement.noise_floor:.3f} px "
        f"at {analysis.measurement.flow.shape[0]} px",
        "**Time**: " + " · ".join(f"{k} {timings[k]:.2f} s" for k in STAGES if k in timings)
        + f" · total {sum(timings.values()):.2f} s (answer: {new_tokens} tokens)",
    ]
    text_emotion = parsed.get("emotion")
    if text_emotion is None:
        lines.append("**Note**: the explanation names no emotion the parser recognises.")
    elif text_emotion != emotion:
        lines.append(f"**Note**: the explanation says *{text_emotion}*; the emotion head says *{emotion}*.")
    lines += [f"**Warning**: {n}" for n in notes]
    return "\n\n".join(lines)


def motion_picture(analysis, evidence: list[facs.AUEvidence] | None = None) -> np.ndarray:
    """Onset face with the onset -> apex flow arrows | flow colour | optical strain, facial regions
    boxed (regions with AU evidence in red, labelled with their AUs). RGB uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import hsv_to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    m = analysis.measurement
    flow, strain, face = m.flow, m.strain, analysis.onset_face
    height, width = strain.shape
    magnitude = np.linalg.norm(flow, axis=2)
    peak = max(float(np.percentile(magnitude, 99.5)), 1e-6)

    moved: dict[str, list[str]] = {}
    for e in evidence or []:
        moved.setdefault(e.region, []).append(e.au)

    fig = Figure(figsize=(10.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    # 1: arrows on the onset face
    axes[0].imshow(face, cmap="gray", vmin=0, vmax=255)
    stride = max(4, width // 16)
    ys, xs = np.mgrid[stride // 2:height:stride, stride // 2:width:stride]
    u, v = flow[ys, xs, 0], flow[ys, xs, 1]
    axes[0].quiver(xs, ys, u, v, color="#ffd400", angles="xy", scale_units="xy",
                   scale=peak / (stride * 0.9), width=0.008, headwidth=4)
    axes[0].set_title(f"flow arrows, frame {analysis.onset} -> {analysis.apex}", fontsize=9)
    # 2: flow colour: hue = direction, brightness = size
    hsv = np.zeros((height, width, 3), np.float32)
    hsv[..., 0] = (np.arctan2(flow[..., 1], flow[..., 0]) + np.pi) / (2 * np.pi)
    hsv[..., 1] = 1.0
    hsv[..., 2] = np.clip(magnitude / peak, 0, 1)
    axes[1].imshow(hsv_to_rgb(hsv))
    axes[1].set_title(f"flow colour: hue = direction, max {peak:.2f} px", fontsize=9)
    # 3: strain
    image = axes[2].imshow(strain, cmap="inferno", vmin=0, vmax=max(float(np.percentile(strain, 99.5)), 1e-6))
    axes[2].set_title("optical strain", fontsize=9)
    fig.colorbar(image, ax=axes[2], fraction=0.046, pad=0.03)
    for ax in axes:
        for region in facs.REGIONS:
            x0, y0, x1, y1 = facs.region_pixel_box(region, height, width)
            hit = region in moved
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.4 if hit else 0.6,
                                   edgecolor="#ff3030" if hit else "#7fd3ff", alpha=1.0 if hit else 0.7))
            if hit and ax is axes[0]:
                ax.text(x0, y0 - 1, "+".join(dict.fromkeys(moved[region])), color="#ff3030", fontsize=7,
                        va="bottom", fontweight="bold")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(rect=(0, 0, 1, 0.88))   # room for the image component's label
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# ---------------------------------------------------------------------------------------------
# The Gradio app
# ---------------------------------------------------------------------------------------------
CSS = """
#emotion textarea {font-size: 1.6rem; font-weight: 600; text-align: center;}
"""

INTRO = """# DEFT-LLM micro-expression demo
Upload a short face clip (or record one, or pick a SynthMER example): DEFT-LLM names the
micro-expression, shows the facial Action Units that moved (measured by optical flow from the
onset to the apex frame) and explains its answer. Onset / apex are frame indices counted from 0;
leave them empty to use the first frame and to estimate the apex.

*The bundled checkpoint is trained on SynthMER, synthetic faces: it demonstrates the pipeline,
it is not a model of real faces. Never use micro-expression output to judge a person.*"""


def build_demo(checkpoint: str | os.PathLike | None = None, examples_dir: str | os.PathLike | None = None,
               *, max_new_tokens: int = MAX_NEW_TOKENS, max_upload_mb: float = MAX_UPLOAD_MB,
               max_frames: int = MAX_FRAMES, examples: bool = True):
    """The demo as a ``gr.Blocks`` (not launched).

    The analysis endpoint is ``api_name="analyze"``: inputs ``(video, onset, apex, face)``,
    outputs ``(emotion, probabilities, evidence, explanation, apex_frame, motion_picture,
    details)``. Launch with ``launch_kwargs()`` for the theme, CSS and upload limit.
    """
    import gradio as gr

    engine = DeftDemo(checkpoint, max_new_tokens=max_new_tokens, max_upload_mb=max_upload_mb,
                      max_frames=max_frames)
    example_clips = make_examples(examples_dir) if examples else []

    def analyze(video, onset, apex, face, progress=gr.Progress()):
        try:
            result = engine.run(video, onset, apex, face or "detect", progress=progress)
        except DemoInputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:   # a bug or an unforeseen input: a message, not a stack trace
            logger.exception("analysis failed for %s", video)
            raise gr.Error(f"{Path(str(video)).name}: the analysis failed ({type(err).__name__}: {err})",
                           print_exception=False) from None
        return (result.emotion, result.probabilities, result.evidence, result.explanation,
                result.apex_image, result.motion_image, result.details)

    with gr.Blocks(title="DEFT-LLM micro-expression demo") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                # include_audio=True keeps the upload as it is: otherwise Gradio re-encodes it with
                # ffmpeg (lossy, erasing micro-motion; and ffmpeg may not be installed).
                video = gr.Video(label="Clip", sources=["upload", "webcam"], include_audio=True,
                                 elem_id="clip")
                with gr.Row():
                    # Text boxes, not gr.Number: an empty Number sends 0, and "empty" must
                    # mean "first frame" / "estimate the apex".
                    onset = gr.Textbox(label="onset frame (optional)", placeholder="first frame",
                                       elem_id="onset")
                    apex = gr.Textbox(label="apex frame (optional)", placeholder="estimated",
                                      elem_id="apex")
                face = gr.Radio(FACE_CHOICES, value="detect", label="face crop", elem_id="face")
                run = gr.Button("Analyze", variant="primary", elem_id="run")
                if example_clips:
                    gr.Examples([[str(e.path), str(e.onset), str(e.apex), "none"] for e in example_clips],
                                inputs=[video, onset, apex, face],
                                label="SynthMER examples (face crops; onset and apex as labelled)",
                                example_labels=[f"{e.emotion} ({e.aus})" for e in example_clips],
                                cache_examples=False)
                apex_frame = gr.Image(label="Apex frame (face crop)", type="numpy", format="png",
                                      interactive=False, elem_id="apex-frame", height=256)
            with gr.Column(scale=2):
                with gr.Row():
                    emotion = gr.Textbox(label="Emotion", elem_id="emotion", interactive=False)
                    probabilities = gr.Label(label="Class probabilities (emotion head)",
                                             num_top_classes=len(engine.id2label), elem_id="probabilities")
                evidence = gr.Dataframe(headers=EVIDENCE_HEADERS, label="AU evidence (measured motion)",
                                        interactive=False, elem_id="evidence",
                                        datatype=["str", "str", "str", "str", "number", "number"])
                explanation = gr.Textbox(label="Explanation (generated)", lines=4, interactive=False,
                                         elem_id="explanation")
                motion = gr.Image(label="Motion: flow and strain, facial regions", type="numpy",
                                  format="png", interactive=False, elem_id="motion-picture")
                details = gr.Markdown(label="Details", elem_id="details")
        run.click(analyze, inputs=[video, onset, apex, face],
                  outputs=[emotion, probabilities, evidence, explanation, apex_frame, motion, details],
                  api_name="analyze")
    demo.deft_engine = engine   # for callers that want the engine (tests, benchmarks)
    return demo


def launch_kwargs(max_upload_mb: float = MAX_UPLOAD_MB) -> dict:
    """Keyword arguments for ``demo.launch``: theme, CSS (Gradio 6 takes them here), upload cap."""
    import gradio as gr

    return {"theme": gr.themes.Soft(), "css": CSS, "max_file_size": f"{max_upload_mb:g}mb"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deft-llm demo", description="Run the DEFT-LLM Gradio demo.")
    parser.add_argument("--checkpoint", default=None,
                        help=f"checkpoint folder or Hub id (default: ${CHECKPOINT_ENV}, else the bundled "
                             "SynthMER checkpoint)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: Gradio's, 7860)")
    parser.add_argument("--host", default=None, help="server address, e.g. 0.0.0.0 (default: localhost)")
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link")
    parser.add_argument("--examples-dir", default=None,
                        help=f"where the example clips are written (default: ${EXAMPLES_ENV} or a temp folder)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB)
    parser.add_argument("--max-frames", type=int, default=MAX_FRAMES)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``deft-llm demo``: build the demo and serve it until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        demo = build_demo(args.checkpoint, args.examples_dir, max_new_tokens=args.max_new_tokens,
                          max_upload_mb=args.max_upload_mb, max_frames=args.max_frames)
    except FileNotFoundError as err:
        print(f"deft-llm demo: {err}", file=sys.stderr)
        return 2
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                        **launch_kwargs(args.max_upload_mb))
    return 0


def result_json(result: DemoResult, clip: str) -> dict:
    """One analysis as plain JSON-able data (``deft-llm predict``)."""
    a = result.analysis
    return {
        "clip": str(clip), "emotion": result.emotion,
        "probabilities": {k: round(v, 4) for k, v in result.probabilities.items()},
        "evidence": [dict(zip(("au", "action", "region", "direction", "size_px", "au_head_p"), row))
                     for row in result.evidence],
        "explanation": result.explanation, "explanation_emotion": result.parsed.get("emotion"),
        "explanation_aus": result.parsed.get("aus", []),
        "onset": a.onset, "apex": a.apex, "offset": a.offset, "apex_estimated": bool(a.apex_estimated),
        "face_detected": a.face_detected, "noise_floor_px": round(float(a.measurement.noise_floor), 4),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
    }


def predict_main(argv: list[str] | None = None) -> int:
    """``deft-llm predict CLIP``: the demo's analysis of one clip, printed as JSON."""
    parser = argparse.ArgumentParser(prog="deft-llm predict",
                                     description="One clip -> emotion, AU evidence, explanation (JSON).")
    parser.add_argument("clip", help="video file")
    parser.add_argument("--onset", default=None, help="onset frame index (default: first frame)")
    parser.add_argument("--apex", default=None, help="apex frame index (default: estimated)")
    parser.add_argument("--face", choices=["detect", "none"], default="detect",
                        help="detect the face, or none for clips that are already face crops")
    parser.add_argument("--checkpoint", default=None, help=f"folder or Hub id (default: ${CHECKPOINT_ENV} "
                                                           "or the bundled checkpoint)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--pictures", default=None, metavar="DIR",
                        help="also write apex.png and motion.png (flow / strain picture) into DIR")
    args = parser.parse_args(argv)
    try:
        engine = DeftDemo(args.checkpoint, max_new_tokens=args.max_new_tokens)
        result = engine.run(args.clip, args.onset, args.apex, args.face)
    except (DemoInputError, FileNotFoundError) as err:
        print(f"deft-llm predict: {err}", file=sys.stderr)
        return 2
    if args.pictures:
        import cv2

        folder = Path(args.pictures)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "apex.png"), result.apex_image[..., ::-1])
        cv2.imwrite(str(folder / "motion.png"), result.motion_image[..., ::-1])
    print(json.dumps(result_json(result, args.clip), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
