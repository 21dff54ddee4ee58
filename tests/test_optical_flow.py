"""Optical flow, head-motion removal, strain and region statistics on known displacements."""

import cv2
import numpy as np
import pytest

from deft_llm import facs
from deft_llm import optical_flow as of

SIZE = 128


def textured_face(size=SIZE, seed=0):
    """A smooth random texture (float32, 20..235): enough detail for flow everywhere."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.2)
    return cv2.normalize(img, None, 20, 235, cv2.NORM_MINMAX)


def local_shift(img, region, direction, amplitude, sigma_frac=0.06):
    """Warp ``img`` by a Gaussian-windowed displacement centred on ``region``.

    Returns the warped image and the true forward flow field (H, W, 2).
    """
    size = img.shape[0]
    x0, y0, x1, y1 = facs.region_pixel_box(region, size, size)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    window = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (sigma_frac * size) ** 2))
    unit = np.asarray(direction, np.float32) / np.linalg.norm(direction)
    flow = (window[..., None] * unit * amplitude).astype(np.float32)
    warped = cv2.remap(img, xs - flow[..., 0], ys - flow[..., 1], cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REFLECT)
    return warped, flow


def to_u8(img):
    return np.clip(img, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def smile_pair():
    """Left mouth corner moves up and outward (AU12 on the subject's left = image +x)."""
    base = textured_face()
    apex, true_flow = local_shift(base, "mouth_corner_left", (1.0, -1.0), 1.5)
    return to_u8(base), to_u8(apex), true_flow


@pytest.mark.parametrize("method", of.FLOW_METHODS)
def test_flow_recovers_local_shift(smile_pair, method):
    onset, apex, true_flow = smile_pair
    flow = of.compute_flow(onset, apex, method)
    assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
    moving = np.linalg.norm(true_flow, axis=2) > 0.3
    epe = np.linalg.norm(flow - true_flow, axis=2)
    assert epe[moving].mean() < 0.35, method
    assert epe.mean() < 0.05, method

    measurement = of.measure_motion(onset, apex, method)
    truth = of.region_motion(true_flow, of.optical_strain(true_flow))["mouth_corner_left"]
    corner = measurement.regions["mouth_corner_left"]
    assert corner.dx > 0 and corner.dy < 0          # up and outward on the image's right
    assert corner.dx == pytest.approx(truth.dx, rel=0.3)
    assert corner.dy == pytest.approx(truth.dy, rel=0.3)
    for far in ("brow_outer_right", "brow_inner_right", "eye_right", "mouth_corner_right"):
        assert measurement.regions[far].magnitude < 0.05, (method, far)
    assert set(measurement.regions) == set(facs.REGIONS)


def test_au_evidence_names_the_moving_au(smile_pair):
    onset, apex, _ = smile_pair
    evidence = of.au_evidence(of.measure_motion(onset, apex, "dis"))
    pairs = {(e.au, e.region): e for e in evidence}
    assert ("AU12", "mouth_corner_left") in pairs
    assert pairs["AU12", "mouth_corner_left"].direction == "up and outward"
    assert pairs["AU12", "mouth_corner_left"].size == pytest.approx(1.5 * 0.65, rel=0.35)
    assert ("AU15", "mouth_corner_left") not in pairs          # down: opposite direction
    assert not any(e.region.endswith("_right") for e in evidence)
    numbers = [int(e.au[2:]) for e in evidence]
    assert numbers == sorted(numbers)


def test_au_evidence_respects_noise_floor(smile_pair):
    onset, apex, _ = smile_pair
    measurement = of.measure_motion(onset, apex, "dis")
    measurement.noise_floor = 10.0
    assert of.au_evidence(measurement) == []


def test_head_motion_removed_keeps_local_motion(smile_pair):
    onset, apex, true_flow = smile_pair
    size = SIZE
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    # A rigid head motion: translation + 0.5 degree rotation about the centre.
    angle = np.deg2rad(0.5)
    head = np.stack([1.2 + (np.cos(angle) - 1) * (xs - 64) - np.sin(angle) * (ys - 64),
                     -0.7 + np.sin(angle) * (xs - 64) + (np.cos(angle) - 1) * (ys - 64)], -1)
    cleaned = of.remove_head_motion(true_flow + head.astype(np.float32))
    assert np.abs(cleaned - true_flow).max() < 0.02
    np.testing.assert_allclose(of.head_motion(head.astype(np.float32)), head, atol=1e-3)


def test_head_translation_in_real_frames_is_removed(smile_pair):
    onset, apex, _ = smile_pair
    moved = cv2.warpAffine(apex, np.float32([[1, 0, 1.3], [0, 1, 0.6]]), (SIZE, SIZE),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    measurement = of.measure_motion(onset, moved, "dis")
    corner = measurement.regions["mouth_corner_left"]
    assert corner.dx > 0.4 and corner.dy < -0.4
    assert measurement.regions["nose"].magnitude < 0.1
    assert measurement.regions["brow_outer_right"].magnitude < 0.1


def test_strain_of_linear_fields():
    ys, xs = np.mgrid[0:32, 0:32].astype(np.float32)
    stretch = np.stack([0.1 * xs, np.zeros_like(xs)], -1)
    np.testing.assert_allclose(of.optical_strain(stretch), 0.1, atol=1e-5)
    shear = np.stack([0.2 * ys, np.zeros_like(xs)], -1)   # exy = 0.1 -> sqrt(2) * 0.1
    np.testing.assert_allclose(of.optical_strain(shear), np.sqrt(2) * 0.1, atol=1e-5)
    translation = np.full((32, 32, 2), 3.0, np.float32)
    assert of.optical_strain(translation).max() == 0.0


def test_noise_floor_from_reference(smile_pair):
    onset, apex, _ = smile_pair
    rng = np.random.default_rng(1)
    noisy = to_u8(onset.astype(np.float32) + rng.normal(0, 3.0, onset.shape))
    clean = of.measure_motion(onset, apex, "dis", reference=onset)
    assert clean.noise_floor < 1e-3
    with_noise = of.measure_motion(onset, apex, "dis", reference=noisy)
    assert with_noise.noise_floor > 0.01
    np.testing.assert_array_equal(clean.flow, with_noise.flow)


def test_deterministic(smile_pair):
    onset, apex, _ = smile_pair
    for method in ("dis", "farneback"):
        np.testing.assert_array_equal(of.compute_flow(onset, apex, method),
                                      of.compute_flow(onset, apex, method))


def test_bad_inputs():
    frame = np.zeros((16, 16), np.uint8)
    with pytest.raises(ValueError, match="unknown flow method 'raft'"):
        of.compute_flow(frame, frame, "raft")
    with pytest.raises(ValueError, match="uint8"):
        of.compute_flow(frame.astype(np.float32), frame)
    with pytest.raises(ValueError, match="differ in size"):
        of.compute_flow(frame, np.zeros((8, 8), np.uint8))
    rgb = np.zeros((16, 16, 3), np.uint8)
    assert of.compute_flow(rgb, rgb).shape == (16, 16, 2)
