"""Onset -> apex optical flow, head-motion removal, optical strain and per-region motion.

This is the one place that measures facial motion. The processor turns its output into the
motion expert's input map, the dataset builder turns it into Uni-MER's motion-evidence text,
and the demo draws it, so all three describe the same numbers.

Conventions (as in :mod:`facs`): frames are uint8 grayscale face crops ``(H, W)``; flow is
``(H, W, 2)`` float32 in pixels of that crop, ``u`` to the right and ``v`` **down**, mapping
the onset frame to the apex frame (``onset[y, x]`` moved to ``apex[y + v, x + u]``).

Choices, documented here because they shape every number downstream:

* **Flow methods.** ``"dis"`` (default): OpenCV's Dense Inverse Search, ``MEDIUM`` preset
  (the finest this OpenCV ships) taken down to full resolution: finest scale 0 (the preset
  stops at half resolution, which halves a small, local micro-movement), patch 8, stride 4,
  5 variational-refinement iterations; ~5 ms on a 128 px crop, sub-pixel accurate.
  ``"tvl1"``: ``cv2.optflow.DualTVL1OpticalFlow`` with OpenCV defaults, the field's habit
  (accurate, ~100x slower). ``"farneback"``: ``cv2.calcOpticalFlowFarneback`` (pyramid 0.5,
  3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2). ``benchmarks/results_processing.md``
  compares their speed and end-point error.
* **Head motion** is removed by subtracting a robust *affine* fit of the whole flow field
  (translation + small rotation / scale / shear of a rigid head seen frontally): least squares
  on a pixel grid, refitted twice on the pixels whose residual is under 2.5 robust standard
  deviations (MAD). A micro-expression moves a small part of the face, so those pixels are
  rejected as outliers and survive the subtraction; a pure translation, rotation or zoom of
  the head is removed exactly. (A median flow would remove only translation.)
* **Optical strain**: ``exx = du/dx``, ``eyy = dv/dy``, ``exy = (du/dy + dv/dx) / 2``,
  magnitude ``sqrt(exx^2 + eyy^2 + 2 exy^2)`` (central differences, unitless).
* **Region statistics** (:class:`RegionMotion`) over the :data:`facs.REGIONS` boxes scaled to
  the crop: ``(dx, dy)`` is the *magnitude-weighted* mean flow vector, i.e. the motion of the
  part of the region that moves (a uniform shift gives exactly that shift; a bump filling a
  third of the box is not diluted three-fold); ``magnitude`` is the mean per-pixel flow
  magnitude (also sees motion that cancels in the mean, e.g. lips parting); ``strain`` the
  mean strain.
* **Noise floor**: the median per-pixel flow magnitude of the onset -> ``reference`` flow
  (a frame with no expression change) when given; otherwise the median per-pixel magnitude of
  the onset -> apex flow itself (a micro-expression moves well under half the face, so the
  median pixel is not moving and its flow is estimation noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .facs import ACTION_UNITS, REGIONS, AUEvidence, au_direction, region_pixel_box

FLOW_METHODS = ("dis", "tvl1", "farneback")

# AU evidence must exceed this many pixels whatever the noise floor (noise-free synthetic
# clips have a floor near zero, where interpolation residue would otherwise count as motion).
MIN_EVIDENCE_PX = 0.05


def _as_gray_uint8(frame: np.ndarray, what: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        frame = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2GRAY)
    elif frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim != 2:
        raise ValueError(f"{what} frame must be a grayscale (H, W) image, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{what} frame must be uint8, got {frame.dtype}")
    return np.ascontiguousarray(frame)


def compute_flow(onset: np.ndarray, apex: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow ``(H, W, 2)`` float32 in pixels from the onset to the apex frame.

    Frames are uint8 grayscale ``(H, W)`` (RGB ``(H, W, 3)`` is converted). Deterministic.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {FLOW_METHODS}")
    onset = _as_gray_uint8(onset, "onset")
    apex = _as_gray_uint8(apex, "apex")
    if onset.shape != apex.shape:
        raise ValueError(f"onset {onset.shape} and apex {apex.shape} frames differ in size")
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setFinestScale(0)
        dis.setPatchSize(8)
        dis.setPatchStride(4)
        dis.setVariationalRefinementIterations(5)
        flow = dis.calc(onset, apex, None)
    elif method == "tvl1":
        flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(onset, apex, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(onset, apex, None, pyr_scale=0.5, levels=3,
                                            winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                                            flags=0)
    return np.ascontiguousarray(flow, dtype=np.float32)


def fast_flow(onset: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """DIS as in :func:`compute_flow` but without variational refinement (~3x faster, a
    little noisier): for apex spotting, which computes one flow per frame."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    dis.setPatchSize(8)
    dis.setPatchStride(4)
    dis.setVariationalRefinementIterations(0)
    return dis.calc(_as_gray_uint8(onset, "onset"), _as_gray_uint8(frame, "frame"), None)


def head_motion(flow: np.ndarray) -> np.ndarray:
    """The rigid (affine) head-motion component of ``flow``, ``(H, W, 2)`` float32."""
    flow = np.asarray(flow, dtype=np.float32)
    height, width = flow.shape[:2]
    # affine in coordinates normalised to [-1, 1]: flow ~ c0 + c1 * x + c2 * y (per component)
    xn = np.linspace(-1.0, 1.0, width) if width > 1 else np.zeros(1)
    yn = np.linspace(-1.0, 1.0, height) if height > 1 else np.zeros(1)
    step = max(1, int(round(np.sqrt(height * width / 1024))))   # ~1000 samples
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    ys, xs = ys.ravel(), xs.ravel()
    design = np.stack([np.ones(len(xs)), xn[xs], yn[ys]], axis=1)
    samples = flow[ys, xs].astype(np.float64)
    keep = np.ones(len(samples), dtype=bool)
    coef = np.zeros((3, 2))
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(design[keep], samples[keep], rcond=None)
        residual = np.linalg.norm(samples - design @ coef, axis=1)
        centre = np.median(residual[keep])
        sigma = max(1.4826 * np.median(np.abs(residual[keep] - centre)), 1e-6)
        new_keep = residual <= centre + 2.5 * sigma
        if new_keep.sum() < 6 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    coef = coef.astype(np.float32)
    xn, yn = xn.astype(np.float32), yn.astype(np.float32)
    return (coef[0] + xn[None, :, None] * coef[1] + yn[:, None, None] * coef[2]).astype(np.float32)


def remove_head_motion(flow: np.ndarray) -> np.ndarray:
    """``flow`` minus its robust affine fit (see the module docstring): local motion only."""
    flow = np.asarray(flow, dtype=np.float32)
    return flow - head_motion(flow)


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Optical strain magnitude ``(H, W)`` float32 of a flow field."""
    flow = np.asarray(flow, dtype=np.float32)
    du_dy, du_dx = np.gradient(flow[..., 0])
    dv_dy, dv_dx = np.gradient(flow[..., 1])
    exy = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx ** 2 + dv_dy ** 2 + 2 * exy ** 2).astype(np.float32)


@dataclass
class RegionMotion:
    """Motion of one facial region (pixels of the analysed crop; see the module docstring)."""

    region: str
    dx: float
    dy: float
    magnitude: float
    strain: float


@dataclass
class MotionMeasurement:
    """Everything measured from one onset -> apex pair."""

    flow: np.ndarray                 # (H, W, 2) float32, head motion removed
    strain: np.ndarray               # (H, W) float32
    regions: dict[str, RegionMotion]  # keys: facs.REGIONS, boxes scaled to (H, W)
    noise_floor: float               # pixels: typical flow magnitude with no expression


def region_motion(flow: np.ndarray, strain: np.ndarray) -> dict[str, RegionMotion]:
    """:class:`RegionMotion` for every region of :data:`facs.REGIONS`."""
    height, width = flow.shape[:2]
    flow = flow.astype(np.float64)
    magnitude = np.linalg.norm(flow, axis=2)
    # box sums from one integral image of (m, m*u, m*v, strain)
    channels = np.dstack([magnitude, magnitude * flow[..., 0], magnitude * flow[..., 1],
                          strain.astype(np.float64)])
    integral = cv2.integral(channels)
    stats = {}
    for region in REGIONS:
        x0, y0, x1, y1 = region_pixel_box(region, height, width)
        m, mu, mv, s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        area = (x1 - x0) * (y1 - y0)
        dx, dy = (mu / m, mv / m) if m > 1e-12 else (0.0, 0.0)
        stats[region] = RegionMotion(region, float(dx), float(dy), float(m / area), float(s / area))
    return stats


def measure_motion(onset: np.ndarray, apex: np.ndarray, method: str = "dis",
                   reference: np.ndarray | None = None) -> MotionMeasurement:
    """Flow (head motion removed), strain, region statistics and noise floor of onset -> apex.

    ``reference``: optional frame with no expression change relative to onset (e.g. the frame
    right after onset); the noise floor then comes from the onset -> reference flow.
    """
    flow = remove_head_motion(compute_flow(onset, apex, method))
    strain = optical_strain(flow)
    if reference is not None:
        noise_flow = remove_head_motion(compute_flow(onset, reference, method))
    else:
        noise_flow = flow
    noise_floor = float(np.median(np.linalg.norm(noise_flow, axis=2)))
    return MotionMeasurement(flow, strain, region_motion(flow, strain), noise_floor)


def au_evidence(measurement: MotionMeasurement, min_snr: float = 2.0) -> list[AUEvidence]:
    """The (AU, region) pairs of :data:`facs.ACTION_UNITS` whose region moved the AU's way.

    Size is the region's motion vector projected on :func:`facs.au_direction` (pixels); AUs
    without a direction (23, 24) use the region's mean flow magnitude. A pair counts when its
    size exceeds ``min_snr * noise_floor`` and :data:`MIN_EVIDENCE_PX`. Sorted by AU number
    then region; blinks (AU43/45) are included and left to callers to filter.
    """
    threshold = max(min_snr * measurement.noise_floor, MIN_EVIDENCE_PX)
    evidence = []
    for number in sorted(ACTION_UNITS):
        au = ACTION_UNITS[number]
        for region in sorted(au.regions):
            stats = measurement.regions[region]
            direction = au_direction(number, region)
            if direction is None:
                size = stats.magnitude
            else:
                size = stats.dx * float(direction[0]) + stats.dy * float(direction[1])
            if size > threshold:
                evidence.append(AUEvidence(f"AU{number}", region, au.motion_text, float(size)))
    return evidence
