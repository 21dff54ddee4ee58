"""Reading a clip, whatever form it comes in, as numbered frames.

A clip is a video file (mp4/avi/mov/mkv/..., decoded with PyAV), the raw bytes of one, a
folder of frame images, or an array ``(T, H, W)`` / ``(T, H, W, C)``. Every form becomes a
:class:`Frames`: the frames in time order plus the **dataset's own frame numbers**, so that
onset / apex / offset labels can be used as the dataset wrote them:

* frame folders: the number in each file name (the last run of digits: CASME II
  ``reg_img46.jpg`` -> 46, SAMM ``006_05562.jpg`` -> 5562, SMIC ``image0581263.bmp``), frames
  sorted by that number;
* videos and arrays: 0-based frame indices, shifted by ``first_frame_number`` when given
  (e.g. ``first_frame_number=1`` for labels that count from 1).

Frames are decoded/read lazily where the source allows (folder images are read only when
used; video frames are decoded once and converted to arrays only when used), because a
labelled clip needs only its onset, apex and a few texture frames.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import threading
import warnings
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class ClipError(ValueError):
    """A clip that cannot be used as given; the message names the clip and the problem."""


class Frames:
    """Frames of one clip in time order, with the dataset's frame numbers.

    ``rgb(i)`` / ``gray(i)`` return uint8 ``(H, W, 3)`` / ``(H, W)`` arrays of the i-th frame
    (a position, not a frame number); ``index_of(number)`` maps a frame number to a position.
    """

    def __init__(self, name: str, numbers: list[int], loader, size: tuple[int, int] | None = None,
                 gray_loader=None, scaled_loader=None):
        self.name = name
        self.numbers = list(numbers)
        self._loader = loader          # position -> uint8 (H, W) or (H, W, 3) RGB array
        self._gray_loader = gray_loader  # position -> uint8 (H, W), when cheaper than via RGB
        self._scaled_loader = scaled_loader  # (position, width, height) -> frame scaled on decode
        self._cache: dict[int, np.ndarray] = {}   # frames as loaded (gray or RGB)
        self._rgb: dict[int, np.ndarray] = {}
        self._gray: dict[int, np.ndarray] = {}
        self._size = size
        if len(self.numbers) == 0:
            raise ClipError(f"{name}: the clip has no frames")
        if len(self.numbers) < 2:
            raise ClipError(f"{name}: the clip has only 1 frame; onset -> apex motion needs at least 2")

    def __len__(self) -> int:
        return len(self.numbers)

    def _raw(self, i: int) -> np.ndarray:
        frame = self._loader(i)
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ClipError(f"{self.name}: frame {self.numbers[i]} is {frame.shape[1]}x{frame.shape[0]}"
                            f" but earlier frames are {self._size[1]}x{self._size[0]}")
        return frame

    def _cached_raw(self, i: int) -> np.ndarray:
        if i not in self._cache:
            self._cache[i] = self._raw(i)
        return self._cache[i]

    def rgb(self, i: int) -> np.ndarray:
        if i not in self._rgb:
            frame = self._cached_raw(i)
            self._rgb[i] = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return self._rgb[i]

    def gray(self, i: int) -> np.ndarray:
        if i not in self._gray:
            if self._gray_loader is not None:
                self._gray[i] = self._gray_loader(i)
                return self._gray[i]
            frame = self._cached_raw(i)
            self._gray[i] = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return self._gray[i]

    def face_rgb(self, i: int, box: tuple[int, int, int, int], size: int) -> np.ndarray:
        """RGB crop ``box`` of frame ``i`` resized to ``size x size``.

        Videos shrunk at least 2x scale the whole frame while converting it from YUV (one
        swscale pass converts only the pixels kept) and then crop; otherwise (swscale's
        unscaled conversion is faster for small frames) and for other sources: the RGB frame
        is cropped, then resized.
        """
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0)
        if self._scaled_loader is None or side < 2 * size:
            return crop_resize(self.rgb(i), box, size)
        height, width = self.size
        scale = size / side
        scaled_w, scaled_h = max(size, round(width * scale)), max(size, round(height * scale))
        frame = self._scaled_loader(i, scaled_w, scaled_h)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        sx0 = min(max(int(round(x0 * scale)), 0), scaled_w - size)
        sy0 = min(max(int(round(y0 * scale)), 0), scaled_h - size)
        return np.ascontiguousarray(frame[sy0:sy0 + size, sx0:sx0 + size])

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the frames."""
        if self._size is None:
            self._raw(0)
        return self._size

    def index_of(self, number: int, what: str) -> int:
        """Position of frame ``number``; the nearest frame inside a gap in the numbering."""
        first, last = self.numbers[0], self.numbers[-1]
        if isinstance(number, float) and not number.is_integer():
            raise ClipError(f"{self.name}: {what} frame {number} is not a whole frame number")
        number = int(number)
        if not first <= number <= last:
            raise ClipError(f"{self.name}: {what} frame {number} is out of range: the clip's frames "
                            f"are numbered {first}..{last}")
        pos = bisect.bisect_left(self.numbers, number)
        if self.numbers[pos] != number and pos > 0 and number - self.numbers[pos - 1] <= self.numbers[pos] - number:
            pos -= 1
        return pos


def crop_resize(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """``frame[y0:y1, x0:x1]`` resized to ``size x size`` (area averaging when shrinking)."""
    x0, y0, x1, y1 = box
    crop = frame[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def _frame_number(path: Path) -> int | None:
    match = _LAST_NUMBER.search(path.stem)
    return int(match.group(1)) if match else None


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ClipError(f"{path}: cannot read this frame image (unreadable or corrupt)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)
    return image


def read_folder(folder: str | os.PathLike) -> Frames:
    """Frame images of ``folder``, sorted by the number in their names."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise ClipError(f"{folder}: frame folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
    numbers = [_frame_number(p) for p in files]
    if None in numbers or len(set(numbers)) != len(numbers):
        warnings.warn(f"{folder}: frame names do not all carry distinct numbers; frames are taken in "
                      "name order and numbered from 0", stacklevel=3)
        files = sorted(files, key=lambda p: p.name)
        numbers = list(range(len(files)))
    else:
        files = [p for _, p in sorted(zip(numbers, files))]
        numbers = sorted(numbers)
    return Frames(str(folder), numbers, lambda i: _read_image(files[i]))


def decode_video(source: str | os.PathLike | bytes, name: str | None = None) -> list[av.VideoFrame]:
    """All frames of the first video stream, decoded with PyAV (not yet converted to arrays)."""
    name = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<video bytes>")
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        container = av.open(handle)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise ClipError(f"{name}: cannot open this video (unreadable or corrupt): {err}") from err
    with container:
        if not container.streams.video:
            raise ClipError(f"{name}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            return list(container.decode(stream))
        except (av.FFmpegError, OSError, ValueError) as err:
            raise ClipError(f"{name}: cannot decode this video (corrupt): {err}") from err


_LOCAL = threading.local()


def _reformatter() -> VideoReformatter:
    """One reformatter per thread keeps swscale's context between frames and clips: a fresh
    one per frame (what ``frame.to_ndarray(format=...)`` does) costs ~1 ms per frame."""
    if not hasattr(_LOCAL, "reformatter"):
        _LOCAL.reformatter = VideoReformatter()
    return _LOCAL.reformatter


def read_video(source: str | os.PathLike | bytes, first_frame_number: int = 0,
               name: str | None = None) -> Frames:
    name = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<video bytes>")
    frames = decode_video(source, name)
    pix_fmt = frames[0].format.name if frames else ""
    gray = pix_fmt in ("gray", "gray8", "gray10le", "gray12le", "gray16le", "gray16be")

    reformatter = _reformatter()

    def load(i: int) -> np.ndarray:
        return reformatter.reformat(frames[i], format="gray" if gray else "rgb24").to_ndarray()

    def luma(i: int) -> np.ndarray:
        # The Y plane is the gray image of a YUV frame: no colour conversion for the frames
        # only flow needs (apex spotting reads every frame).
        plane = frames[i].planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        return np.ascontiguousarray(rows[:, :plane.width])

    def scaled(i: int, width: int, height: int) -> np.ndarray:
        return reformatter.reformat(frames[i], format="gray" if gray else "rgb24", width=width,
                                    height=height, interpolation="AREA").to_ndarray()

    yuv8 = pix_fmt in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21")
    size = (frames[0].height, frames[0].width) if frames else None
    numbers = [first_frame_number + i for i in range(len(frames))]
    return Frames(name, numbers, load, size, gray_loader=luma if yuv8 else None, scaled_loader=scaled)


def array_frames(array, first_frame_number: int = 0, name: str = "<array clip>") -> Frames:
    """Frames of an array ``(T, H, W)`` or ``(T, H, W, C)``, C in {1, 3, 4} (RGB(A)).

    Floats in [0, 1] are scaled to 0..255; other values are clipped to 0..255 and rounded.
    """
    if hasattr(array, "detach"):   # a torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] != 3):
        raise ClipError(f"{name}: a clip array must be (T, H, W) or (T, H, W, C) with C in 1/3/4, "
                        f"got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
            raise ClipError(f"{name}: a clip array must be numeric, got {array.dtype}")
        values = array.astype(np.float32)
        if np.issubdtype(array.dtype, np.floating) and values.size and values.max() <= 1.0:
            values = values * 255.0
        array = np.clip(np.round(values), 0, 255).astype(np.uint8)
    numbers = [first_frame_number + i for i in range(array.shape[0])]
    return Frames(name, numbers, lambda i: np.ascontiguousarray(array[i]),
                  array.shape[1:3] if array.shape[0] else None)


def load_clip(clip, first_frame_number: int | None = None, name: str | None = None) -> Frames:
    """Any supported clip form -> :class:`Frames` (see the module docstring)."""
    if isinstance(clip, Frames):
        return clip
    if isinstance(clip, (bytes, bytearray)):
        return read_video(bytes(clip), first_frame_number or 0, name or "<video bytes>")
    if isinstance(clip, (str, os.PathLike)):
        path = Path(clip)
        if path.is_dir():
            if first_frame_number is not None:
                raise ClipError(f"{path}: first_frame_number applies to videos and arrays; a frame "
                                "folder's numbers come from its file names")
            return read_folder(path)
        if not path.exists():
            raise ClipError(f"{path}: no such video file or frame folder")
        return read_video(path, first_frame_number or 0, name or str(path))
    if hasattr(clip, "shape"):
        return array_frames(clip, first_frame_number or 0, name or "<array clip>")
    raise ClipError(f"{name or 'clip'}: unsupported clip type {type(clip).__name__}; give a video "
                    "path, video bytes, a frame folder or a (T, H, W[, C]) array")
