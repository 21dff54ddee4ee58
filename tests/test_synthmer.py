"""SynthMER: determinism, timing, AUs as flow in their regions, nuisances, lossless files."""

import json

import numpy as np
import pytest

from deft_llm import facs
from deft_llm.data import SynthConfig, SynthMER, read_synthmer, write_synthmer
from deft_llm.data.synthmer import (ClipSpec, Nuisance, RenderedAU, au_field, make_identity,
                                    read_video, render_clip, sample_clip, wrinkle_map, write_video)
from deft_llm.optical_flow import au_evidence, measure_motion


def _region_projection(flow, au, region):
    x0, y0, x1, y1 = facs.region_pixel_box(region, *flow.shape[:2])
    mean = flow[y0:y1, x0:x1].reshape(-1, 2).mean(0)
    return float(mean @ facs.au_direction(au, region))


def test_deterministic_per_seed():
    cfg = SynthConfig(image_size=64, fps=30)
    a, b = SynthMER(cfg, 3)[2], SynthMER(cfg, 3)[2]
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.flow_true, b.flow_true)
    other = SynthMER(SynthConfig(image_size=64, fps=30, seed=1), 3)[2]
    assert not np.array_equal(a.frames[0], other.frames[0])


@pytest.mark.parametrize("fps", [30, 200])
def test_timing_and_displacement_bounds(fps):
    cfg = SynthConfig(fps=fps)
    for i in range(40):
        spec = sample_clip(i, cfg)
        assert spec.onset < spec.apex < spec.offset < spec.num_frames
        assert (spec.offset - spec.onset) / fps < 0.5
        assert all(0.3 <= a.peak_px <= 2.0 for a in spec.aus)
    clip = SynthMER(cfg, 1)[0]
    assert clip.frames.shape == (clip.spec.num_frames, 128, 128, 3) and clip.frames.dtype == np.uint8
    assert 0.3 <= np.abs(clip.flow_true).max() <= 2.5


def test_config_validation():
    with pytest.raises(ValueError, match="fps must be an integer in 30-200"):
        SynthConfig(fps=250)
    with pytest.raises(ValueError, match="difficulty"):
        SynthConfig(difficulty="extreme")
    with pytest.raises(ValueError, match="wrinkles and crop_jitter must be >= 0"):
        SynthConfig(wrinkles=-1.0)


def test_emotions_prototypes_and_variation():
    cfg = SynthConfig()
    specs = [sample_clip(i, cfg) for i in range(300)]
    emotions = {s.emotion for s in specs}
    assert len(emotions) >= 5 and "others" in emotions
    for s in specs:
        numbers = {a.number for a in s.aus}
        if s.emotion == "happiness":
            assert 12 in numbers
        if s.emotion == "contempt":
            assert all(a.side is not None for a in s.aus)
        if s.emotion == "others":
            assert 1 <= len(numbers) <= 2 and not numbers & {1, 2, 9, 10, 12, 14, 15, 17, 20}
        assert facs.composite_class(s.emotion) in (None, "positive", "negative", "surprise")
    happy = [frozenset(a.number for a in s.aus) for s in specs if s.emotion == "happiness"]
    assert len(set(happy)) > 1                       # variation: missing / extra AUs
    assert any(a.side for s in specs for a in s.aus if s.emotion != "contempt")  # unilateral
    assert {"R", "L"} & {a.code[0] for s in specs for a in s.aus}


def test_au_fields_point_in_facs_direction():
    for au in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 25, 26):
        flow = au_field(au, None, 1.0, 128)
        for region in facs.ACTION_UNITS[au].regions:
            assert _region_projection(flow, au, region) > 0.2, (au, region)
    right_only = au_field(12, "right", 1.0, 128)
    assert _region_projection(right_only, 12, "mouth_corner_right") > 0.2
    assert abs(_region_projection(right_only, 12, "mouth_corner_left")) < 0.01


def test_true_aus_appear_as_measured_flow_in_their_regions():
    cfg = SynthConfig(fps=60)   # medium nuisances: head jitter, noise, lighting drift
    spec = ClipSpec(index=0, subject="sub02", clip="clip00000", emotion="happiness",
                    aus=[RenderedAU(6, None, "C", 1.0), RenderedAU(12, "right", "D", 1.4),
                         RenderedAU(2, None, "C", 1.0)],
                    label_aus=["6C", "R12D", "2C"], onset=2, apex=10, offset=20, num_frames=23,
                    blink=None, seed=5)
    clip = render_clip(spec, cfg)
    measurement = measure_motion(clip.frames[2], clip.frames[10], "dis", reference=clip.frames[3])
    seen = {(e.au, e.region) for e in au_evidence(measurement)}
    for pair in [("AU12", "mouth_corner_right"), ("AU6", "cheek_left"), ("AU6", "cheek_right"),
                 ("AU2", "brow_outer_left"), ("AU2", "brow_outer_right")]:
        assert pair in seen, pair
    assert ("AU12", "mouth_corner_left") not in seen         # unilateral: the other side is still
    # the measured flow agrees with the true flow where the AU acts
    x0, y0, x1, y1 = facs.region_pixel_box("mouth_corner_right", 128, 128)
    true = clip.flow_true[y0:y1, x0:x1].reshape(-1, 2).mean(0)
    measured = measurement.flow[y0:y1, x0:x1].reshape(-1, 2).mean(0)
    assert np.linalg.norm(true - measured) < 0.5 * np.linalg.norm(true)


def test_nuisances():
    still = SynthConfig(image_size=64, fps=30, nuisance=Nuisance(0, 0, 0, 0, 0, 0))
    clip = SynthMER(still, 1)[0]
    assert np.array_equal(clip.frames[0], clip.frames[1])   # before onset nothing moves
    noisy = SynthConfig(image_size=64, fps=30, nuisance=Nuisance(0.5, 0.3, 1.0, 3.0, 0.05, 2.0))
    clip = SynthMER(noisy, 1)[0]
    assert clip.spec.blink is not None
    assert np.abs(clip.frames[0].astype(int) - clip.frames[1]).mean() > 1.0
    report = SynthMER(noisy, 20).difficulty()
    assert report["blink_rate"] == 1.0 and report["nuisance"]["noise_std"] == 2.0
    assert 0.3 * 0.5 <= report["mean_apex_displacement_px"] <= 2.0 * 0.5   # 64 px: half of 128


def test_label_noise_changes_labels_only():
    cfg = SynthConfig(label_noise=1.0)
    specs = [sample_clip(i, cfg) for i in range(30)]
    assert all(s.label_aus != [a.code for a in s.aus] for s in specs)


def test_lossless_files_and_reader(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "x.mkv", frames, 100)
    assert np.array_equal(read_video(tmp_path / "x.mkv"), frames)

    report = write_synthmer(tmp_path / "s", 3, SynthConfig(image_size=64, fps=30), progress=False)
    assert report["clips"] == 3 and "mean_apex_displacement_px" in report
    labels = json.loads((tmp_path / "s" / "sub02" / "clip00001" / "labels.json").read_text())
    assert set(labels) >= {"subject", "emotion", "au_string", "onset", "apex", "offset", "true_aus"}
    records = read_synthmer(tmp_path / "s").records
    clip = SynthMER(SynthConfig(image_size=64, fps=30), 3)[1]
    assert records[1].apex == clip.spec.apex and records[1].au_string == clip.spec.au_string
    assert np.array_equal(records[1]._all_frames(), clip.frames)
    assert np.array_equal(records[1].ground_truth()["flow_true"], clip.flow_true)


STILL = Nuisance(0, 0, 0, 0, 0, 0)


def _single_au_clip(au, cfg, subject="sub02", side=None):
    spec = ClipSpec(index=0, subject=subject, clip="clip00000", emotion="others",
                    aus=[RenderedAU(au, side, "E", 1.8)], label_aus=[f"{au}E"], onset=2, apex=10,
                    offset=20, num_frames=23, blink=None, seed=5)
    return render_clip(spec, cfg)


def _darkening(clip, mask):
    """Mean gray-level drop from onset to apex where ``mask`` is set."""
    onset, apex = (clip.frames[i].astype(np.float32).mean(-1) for i in (clip.spec.onset, clip.spec.apex))
    return float((onset - apex)[mask].mean())


def test_wrinkles_darken_their_strokes_and_follow_the_au():
    cfg = SynthConfig(nuisance=STILL, crop_jitter=0.0)
    nasal = wrinkle_map(9, None, 128) > 0.5          # AU9's strokes on the nose bridge
    assert 10 < nasal.sum() < 200 and not wrinkle_map(5, None, 128).any()   # AU5: motion only
    with_wrinkles = _single_au_clip(9, cfg)
    motion_only = _single_au_clip(9, SynthConfig(nuisance=STILL, crop_jitter=0.0, wrinkles=0.0))
    assert _darkening(with_wrinkles, nasal) > 8.0        # 1-px strokes, moved up with the nose
    assert abs(_darkening(motion_only, nasal)) < 1.0      # the nose moves, but stays as bright
    assert abs(_darkening(_single_au_clip(10, cfg), nasal)) < 1.0   # AU10 leaves the nose bridge smooth
    # wrinkles add no motion: the true flow is the same with and without them
    np.testing.assert_array_equal(with_wrinkles.flow_true, motion_only.flow_true)
    # one side only for a unilateral code (subject's right = image left)
    right = wrinkle_map(6, "right", 128)
    assert right[:, :64].sum() > 10 and right[:, 64:].sum() == 0


def test_crop_jitter_moves_and_scales_the_face_per_subject():
    aligned = SynthConfig(nuisance=STILL, crop_jitter=0.0, wrinkles=0.0)
    jittered = SynthConfig(nuisance=STILL, wrinkles=0.0)
    ident = make_identity(1, 0)                               # sub02 under seed 0
    assert 0.93 <= ident.crop_scale <= 1.07 and abs(ident.crop_dx) <= 0.025
    base, moved = _single_au_clip(26, aligned), _single_au_clip(26, jittered)

    def centroid(flow):
        weight = np.linalg.norm(flow, axis=-1)
        yy, xx = np.mgrid[0:128, 0:128]
        return np.array([(xx * weight).sum(), (yy * weight).sum()]) / weight.sum()

    expected = 64 + ident.crop_scale * (centroid(base.flow_true) - 64) + 128 * np.array(
        [ident.crop_dx, ident.crop_dy])
    np.testing.assert_allclose(centroid(moved.flow_true), expected, atol=0.3)
    peak = lambda c: np.linalg.norm(c.flow_true, axis=-1).max()  # noqa: E731
    assert peak(moved) == pytest.approx(peak(base) * ident.crop_scale, rel=0.03)
    # the frames move with it: the neutral face differs, the flow measured still finds the jaw drop
    assert not np.array_equal(base.frames[0], moved.frames[0])
    flow = measure_motion(moved.frames[2], moved.frames[10], "dis").flow
    assert np.linalg.norm(flow - moved.flow_true, axis=-1).mean() < 0.15
