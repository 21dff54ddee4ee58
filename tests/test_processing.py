"""DeftVideoProcessor / DeftProcessor on real files with a known facial displacement."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
import torch

from deft_llm import facs
from deft_llm import optical_flow as of
from deft_llm.processing_deft import (ClipAnalysis, ClipError, DeftProcessor, DeftVideoProcessor,
                                      detect_face)
from deft_llm.tokenizer_build import SPECIAL_TOKENS, build_processor, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
ANSWER = facs.format_answer(
    "happiness",
    [facs.AUEvidence("AU6", "cheek_left", "up", 0.62),
     facs.AUEvidence("AU12", "mouth_corner_left", "up and outward", 1.10)],
    "AU6 with AU12 is the smile of happiness.")


# ------------------------------------------------------------------------------------------
# Synthetic clips: a schematic face the Haar cascade finds, with a Gaussian-windowed shift of
# one facial region (in the face box's canonical layout) rising to the apex and falling back.
# ------------------------------------------------------------------------------------------
def draw_face(height, width, side, seed=0):
    rng = np.random.default_rng(seed)
    cx, cy = width // 2, height // 2
    img = np.full((height, width), 60, np.float32)
    cv2.ellipse(img, (cx, cy), (int(side * 0.42), int(side * 0.55)), 0, 0, 360, 190, -1)
    for sx in (-1, 1):
        ex, ey = cx + sx * int(side * 0.17), cy - int(side * 0.1)
        cv2.ellipse(img, (ex, ey), (int(side * 0.09), int(side * 0.045)), 0, 0, 360, 40, -1)
        cv2.ellipse(img, (ex, ey - int(side * 0.09)), (int(side * 0.1), int(side * 0.02)), 0, 0, 360, 70, -1)
    cv2.ellipse(img, (cx, cy + int(side * 0.12)), (int(side * 0.05), int(side * 0.08)), 0, 0, 360, 150, -1)
    cv2.ellipse(img, (cx, cy + int(side * 0.28)), (int(side * 0.15), int(side * 0.04)), 0, 0, 360, 70, -1)
    img = cv2.GaussianBlur(img, (0, 0), side * 0.02)
    texture = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 1.0)
    return img + (texture - 0.5) * 60


def make_clip(num_frames=16, apex=8, height=240, width=320, side=110, region="mouth_corner_left",
              direction=(1.0, -1.0), amplitude=1.5, detect=True, color=True, seed=0):
    """Frames (T, H, W[, 3]) uint8 and the truth: crop box and the apex flow field."""
    base = draw_face(height, width, side, seed)
    if detect:
        box = detect_face(np.clip(base, 0, 255).astype(np.uint8))
        assert box is not None
    else:
        box = (0, 0, width, height)
    x0, y0, x1, y1 = box
    rx0, ry0, rx1, ry1 = facs.REGIONS[region]
    cx, cy = x0 + (rx0 + rx1) / 2 * (x1 - x0), y0 + (ry0 + ry1) / 2 * (y1 - y0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    window = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (0.06 * (x1 - x0)) ** 2))
    unit = np.asarray(direction, np.float32) / np.linalg.norm(direction)
    field = (window[..., None] * unit * amplitude).astype(np.float32)
    frames = []
    for t in range(num_frames):
        if t <= apex:
            a = float(np.sin(np.pi / 2 * t / apex))
        else:
            a = max(0.0, 1 - (t - apex) / max(num_frames - 1 - apex, 1))
        map_x, map_y = (xs - a * field[..., 0]).astype(np.float32), (ys - a * field[..., 1]).astype(np.float32)
        warped = cv2.remap(base, map_x, map_y, cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT)
        frames.append(warped)
    frames = np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)
    if color:
        frames = np.stack([frames, (frames * 0.9).astype(np.uint8), (frames * 0.8).astype(np.uint8)], -1)
    return frames, {"box": box, "flow": field, "apex": apex}


def expected_regions(truth, crop_box, flow_size=128):
    """Region statistics of the true apex flow, seen through the processor's crop."""
    x0, y0, x1, y1 = crop_box
    flow = cv2.resize(truth["flow"][y0:y1, x0:x1], (flow_size, flow_size), interpolation=cv2.INTER_AREA)
    flow *= flow_size / (x1 - x0)
    return of.region_motion(flow, of.optical_strain(flow))


def write_video(path, frames, codec="libx264", fps=30):
    """Lossless: x264 qp=0 on yuv444p, or FFV1 (gray or bgr0)."""
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        if codec == "libx264":
            stream.pix_fmt = "yuv444p"
            stream.options = {"qp": "0", "preset": "ultrafast"}
        else:
            stream.pix_fmt = "gray" if frames.ndim == 3 else "bgr0"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame, format="gray" if frame.ndim == 2 else "rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_folder(folder, frames, names):
    folder.mkdir(parents=True)
    for frame, name in zip(frames, names):
        image = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, 100] if name.endswith(".jpg") else []
        assert cv2.imwrite(str(folder / name), image, params)
    return folder


def assert_smile(analysis: ClipAnalysis, truth, rel=0.35):
    """The measured left-mouth-corner motion matches the truth in direction and size."""
    expected = expected_regions(truth, analysis.crop_box)["mouth_corner_left"]
    measured = analysis.measurement.regions["mouth_corner_left"]
    assert measured.dx > 0 and measured.dy < 0
    assert measured.dx == pytest.approx(expected.dx, rel=rel)
    assert measured.dy == pytest.approx(expected.dy, rel=rel)
    for far in ("brow_outer_right", "eye_right", "mouth_corner_right"):
        assert analysis.measurement.regions[far].magnitude < 0.1
    aus = {(e.au, e.region) for e in of.au_evidence(analysis.measurement)}
    assert ("AU12", "mouth_corner_left") in aus


@pytest.fixture(scope="module")
def smile():
    return make_clip()


@pytest.fixture(scope="module")
def video_processor():
    return DeftVideoProcessor()


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.fixture(scope="module")
def smile_mp4(smile, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "smile.mp4", smile[0])


# ------------------------------------------------------------------------------------------
# Video processor: inputs, motion, outputs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext,codec", [("mp4", "libx264"), ("mkv", "ffv1"), ("avi", "ffv1"),
                                       ("mov", "libx264")])
def test_video_files_recover_motion(smile, video_processor, tmp_path, ext, codec):
    frames, truth = smile
    path = write_video(tmp_path / f"clip.{ext}", frames, codec)
    analysis = video_processor.analyze(path, onset=0, apex=8)
    assert analysis.face_detected is True
    assert max(abs(a - b) for a, b in zip(analysis.crop_box, truth["box"])) <= 2
    assert (analysis.onset, analysis.apex, analysis.offset) == (0, 8, 15)
    assert analysis.apex_estimated is False and analysis.flow_method == "dis"
    assert_smile(analysis, truth)


def test_outputs_shapes_ranges_and_motion_map(smile_mp4, video_processor, smile):
    out = video_processor(smile_mp4, apexes=8, return_tensors="pt", return_motion=True)
    assert out["structure_pixels"].shape == (1, 3, 64, 64)
    assert out["texture_pixels"].shape == (1, 8, 3, 64, 64)
    assert out["motion_map"].shape == (1, 3, 64, 64)
    for key in ("structure_pixels", "texture_pixels", "motion_map"):
        assert out[key].dtype == torch.float32
    assert out["structure_pixels"].min() >= -1 and out["structure_pixels"].max() <= 1
    assert out["texture_pixels"].abs().max() <= 1
    analysis = out["clip_analyses"][0]
    # texture frames: onset + (offset - onset) * k / 8, k = 1..8; the last is the offset
    assert analysis.texture_frame_numbers == [2, 4, 6, 8, 9, 11, 13, 15]
    assert out["texture_pixels"][0, 3].abs().max() > 0      # frame 8 (apex) differs from onset
    assert out["texture_pixels"][0, 7].abs().max() < 0.05   # the offset is back at rest
    # the motion map is the flow (x motion_scale) over the face crop: regions apply directly
    motion = out["motion_map"][0].numpy()
    x0, y0, x1, y1 = facs.region_pixel_box("mouth_corner_left", 64, 64)
    u, v = motion[0, y0:y1, x0:x1], motion[1, y0:y1, x0:x1]
    region = analysis.measurement.regions["mouth_corner_left"]
    assert u.mean() > 0 and v.mean() < 0
    assert u.max() == pytest.approx(0.5 * analysis.measurement.flow[..., 0].max(), rel=0.3)
    assert motion[2].max() > 0 and region.strain > 0
    assert np.abs(motion[:, :20, :20]).max() < 0.05         # forehead corner: still


def test_bytes_and_path_agree_and_deterministic(smile_mp4, video_processor):
    a = video_processor(smile_mp4, apexes=8)
    b = video_processor(Path(smile_mp4).read_bytes(), apexes=8)
    for key in ("structure_pixels", "texture_pixels", "motion_map"):
        np.testing.assert_array_equal(a[key], b[key])


def test_casme2_cropped_folder(tmp_path, video_processor):
    """CASME II Cropped: reg_imgN.jpg (numbers cross 99 -> 100: name order != frame order),
    pre-cropped square faces, face='none'."""
    frames, truth = make_clip(num_frames=14, apex=7, height=128, width=128, side=100,
                              detect=False, color=True, seed=1)
    names = [f"reg_img{95 + i}.jpg" for i in range(len(frames))]
    folder = write_folder(tmp_path / "sub01" / "EP02_01f", frames, names)
    analysis = video_processor.analyze(folder, onset=95, apex=102, offset=108, face="none")
    assert analysis.frame_numbers == list(range(95, 109))
    assert (analysis.onset, analysis.apex, analysis.offset) == (95, 102, 108)
    assert analysis.crop_box == (0, 0, 128, 128) and analysis.face_detected is None
    assert_smile(analysis, truth, rel=0.4)


def test_samm_gray_folder_with_face_detection(tmp_path, video_processor):
    """SAMM: subject_frame.jpg (006_05562.jpg ...), grayscale, face detected on the onset."""
    frames, truth = make_clip(num_frames=12, apex=6, color=False, seed=2)
    names = [f"006_{5562 + i:05d}.jpg" for i in range(len(frames))]
    folder = write_folder(tmp_path / "006" / "006_1_2", frames, names)
    analysis = video_processor.analyze(folder, onset=5562, apex=5568)
    assert analysis.frame_numbers[0] == 5562 and analysis.offset == 5573
    assert analysis.face_detected is True
    assert_smile(analysis, truth, rel=0.4)
    out = video_processor(folder, onsets=5562, apexes=5568)
    assert out["structure_pixels"].shape == (1, 3, 64, 64)
    s = out["structure_pixels"][0]
    np.testing.assert_array_equal(s[0], s[1])   # gray repeated to RGB


def test_smic_bmp_folder_apex_spotting(tmp_path, video_processor):
    """SMIC has no apex label: the apex is spotted from motion energy."""
    frames, truth = make_clip(num_frames=20, apex=11, amplitude=2.0, seed=3)
    names = [f"image{581263 + i:07d}.bmp" for i in range(len(frames))]
    folder = write_folder(tmp_path / "s03_po_11", frames, names)
    analysis = video_processor.analyze(folder)
    assert analysis.apex_estimated is True
    assert abs(analysis.apex - (581263 + 11)) <= 1
    assert analysis.motion_energy.shape == (19,)
    assert (analysis.onset, analysis.offset) == (581263, 581282)
    assert_smile(analysis, truth, rel=0.4)


def test_array_inputs_and_first_frame_number(smile, video_processor):
    frames, truth = smile
    gray = frames[..., 0]
    a = video_processor.analyze(gray, onset=1, apex=9, first_frame_number=1)
    assert (a.onset, a.apex, a.offset) == (1, 9, 16) and a.frame_numbers[0] == 1
    assert_smile(a, truth)
    b = video_processor.analyze(frames.astype(np.float32) / 255.0, onset=0, apex=8)
    assert_smile(b, truth)
    c = video_processor.analyze(torch.from_numpy(frames[..., :1].copy()), onset=0, apex=8)
    np.testing.assert_allclose(c.measurement.flow, a.measurement.flow)


def test_stored_subset_of_frames_gives_the_same_tensors(smile, video_processor):
    """Re-analysing only the frames a dataset stored (onset, apex, texture frames) as
    ``video_io.Frames`` with their frame numbers reproduces the full clip's tensors."""
    from deft_llm.video_io import Frames

    frames = smile[0]
    full = video_processor.analyze(frames, onset=0, apex=8, face="none", name="full")
    numbers = sorted({full.onset, full.apex, *full.texture_frame_numbers})
    subset = Frames("subset", numbers, lambda i: frames[numbers[i]])
    again = video_processor.analyze(subset, onset=0, apex=8, face="none")
    assert again.texture_frame_numbers == full.texture_frame_numbers
    np.testing.assert_array_equal(again.texture, full.texture)
    np.testing.assert_array_equal(again.motion, full.motion)
    np.testing.assert_array_equal(again.structure, full.structure)


def test_flow_methods_all_recover(smile, tmp_path):
    frames, truth = smile
    for method in ("tvl1", "farneback"):
        analysis = DeftVideoProcessor(flow_method=method).analyze(frames, onset=0, apex=8)
        assert analysis.flow_method == method
        assert_smile(analysis, truth, rel=0.45)


def test_no_face_warns_and_centre_crops(tmp_path, video_processor):
    rng = np.random.default_rng(0)
    frames = cv2.GaussianBlur(rng.random((4, 60, 80)).astype(np.float32), (0, 0), 1.5)
    path = write_video(tmp_path / "noface.mkv", (frames * 255).astype(np.uint8), "ffv1")
    with pytest.warns(UserWarning, match=r"noface\.mkv: no face found"):
        analysis = video_processor.analyze(path, apex=2)
    assert analysis.crop_box == (10, 0, 70, 60) and analysis.face_detected is False


# ------------------------------------------------------------------------------------------
# Errors: one exception type, messages naming the clip
# ------------------------------------------------------------------------------------------
def test_errors(tmp_path, video_processor, smile):
    frames = smile[0][:6]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(ClipError, match=r"corrupt\.mp4: cannot open this video"):
        video_processor.analyze(corrupt)
    with pytest.raises(ClipError, match=r"missing\.avi: no such video file"):
        video_processor.analyze(tmp_path / "missing.avi")
    empty = tmp_path / "empty.avi"
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        container.start_encoding()
    with pytest.raises(ClipError, match=r"empty\.avi: the clip has no frames"):
        video_processor.analyze(empty)
    with pytest.raises(ClipError, match="the clip has no frames"):
        video_processor.analyze(np.zeros((0, 32, 32), np.uint8))
    one = write_video(tmp_path / "one.mkv", frames[:1], "ffv1")
    with pytest.raises(ClipError, match=r"one\.mkv: the clip has only 1 frame"):
        video_processor.analyze(one)
    with pytest.raises(ClipError, match="onset frame 3 must come before apex frame 3"):
        video_processor.analyze(frames, onset=3, apex=3, name="clip7")
    with pytest.raises(ClipError, match=r"clip7: apex frame 9 is out of range: .* 0\.\.5"):
        video_processor.analyze(frames, apex=9, name="clip7")
    with pytest.raises(ClipError, match=r"clip7: offset frame 6 is out of range"):
        video_processor.analyze(frames, apex=2, offset=6, name="clip7")
    with pytest.raises(ClipError, match=r"clip7: apex frame 4 is out of range: after the offset frame 3"):
        video_processor.analyze(frames, apex=4, offset=3, name="clip7")
    with pytest.raises(ClipError, match=r"clip7: unknown flow method 'raft'"):
        video_processor.analyze(frames, apex=2, flow_method="raft", name="clip7")
    with pytest.raises(ClipError, match="unknown flow method 'pwc'"):
        DeftVideoProcessor(flow_method="pwc")
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("x")
    with pytest.raises(ClipError, match=r"no_images: frame folder has no images"):
        video_processor.analyze(tmp_path / "no_images")
    bad_folder = tmp_path / "bad_jpg"
    write_folder(bad_folder, frames[:3], ["reg_img1.jpg", "reg_img2.jpg", "reg_img3.jpg"])
    (bad_folder / "reg_img2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ClipError, match=r"reg_img2\.jpg: cannot read this frame image"):
        video_processor.analyze(bad_folder, apex=3, face="none")
    assert issubclass(ClipError, ValueError)


# ------------------------------------------------------------------------------------------
# DeftProcessor: text, placeholders, padding, labels, decoding
# ------------------------------------------------------------------------------------------
def user_turn(clip, **times):
    return {"role": "user", "content": [{"type": "video", "video": clip, **times},
                                        {"type": "text", "text": "Which micro-expression is this?"}]}


def test_batch_of_different_clips_pads_text(processor, smile, smile_mp4):
    small, _ = make_clip(num_frames=6, apex=3, height=100, width=100, side=70, detect=False, seed=4)
    video = "<|structure|><|texture|><|motion|>"
    texts = [f"<|im_start|>user\n{video}Emotion?<|im_end|>\n",
             f"<|im_start|>user\n{video}Which micro-expression does this clip show?<|im_end|>\n"]
    out = processor(text=texts, videos=[smile_mp4, small], apexes=[8, 3], return_tensors="pt")
    assert out["structure_pixels"].shape == (2, 3, 64, 64)
    assert out["texture_pixels"].shape == (2, 8, 3, 64, 64)
    assert out["motion_map"].shape == (2, 3, 64, 64)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape[0] == 2 and mask.shape == ids.shape
    lengths = mask.sum(1)
    assert lengths[0] < lengths[1] == ids.shape[1]
    pad = ids.shape[1] - lengths[0]
    assert (ids[0, :pad] == 0).all() and (mask[0, :pad] == 0).all()   # left padding with <|pad|>
    for token_id, count in ((4, 4), (5, 8), (6, 14), (7, 1)):
        assert ((ids == token_id).sum(1) == count).all()


def test_apply_chat_template_generation_prompt(processor, smile_mp4):
    messages = [user_turn(str(smile_mp4), onset=0, apex=8)]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors="pt")
    assert set(out) == {"input_ids", "attention_mask", "structure_pixels", "texture_pixels", "motion_map"}
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert text == ("<|im_start|>user\n" + "<|structure|>" * 4 + "<|texture|>" * 8 + "<|motion|>" * 14
                    + "<|clip|>Which micro-expression is this?<|im_end|>\n<|im_start|>assistant\n")
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered.count("<|structure|><|texture|><|motion|>") == 1
    direct = processor(text=rendered, videos=str(smile_mp4), apexes=8, return_tensors="pt")
    torch.testing.assert_close(direct["motion_map"], out["motion_map"])
    torch.testing.assert_close(direct["input_ids"], out["input_ids"])


def test_labels_mask_all_but_the_answer(processor, smile):
    frames = smile[0]
    conversations = [
        [{"role": "system", "content": "You read facial motion."}, user_turn(frames, apex=8),
         {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}],
        [user_turn(frames[:10], apex=5),
         {"role": "assistant", "content": "Motion evidence: no AU motion above the noise floor.\nEmotion: others."}],
    ]
    out = processor.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                        return_tensors="pt", return_labels=True)
    labels = out["labels"]
    assert labels.shape == out["input_ids"].shape
    tok = processor.tokenizer
    assert tok.decode(labels[0][labels[0] != -100]) == ANSWER + "<|im_end|>"
    assert tok.decode(labels[1][labels[1] != -100]) == conversations[1][1]["content"] + "<|im_end|>"
    assert (labels[out["attention_mask"] == 0] == -100).all()
    # same labels from ids alone (for collators)
    assert processor.build_labels(out["input_ids"], out["attention_mask"]).equal(labels)
    with pytest.raises(ValueError, match="use return_labels=True"):
        processor.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)


def test_disabled_expert_and_from_config(smile):
    config = SimpleNamespace(
        structure_config=SimpleNamespace(image_size=32), texture_config=SimpleNamespace(image_size=48, num_frames=4),
        motion_config=SimpleNamespace(image_size=40), experts=["structure", "motion"],
        num_structure_tokens=2, num_texture_tokens=8, num_motion_tokens=14,
        structure_token_id=4, texture_token_id=5, motion_token_id=6)
    processor = build_processor(config)
    assert processor.expert_num_tokens == {"structure": 2, "motion": 14}
    out = processor.apply_chat_template([user_turn(smile[0], apex=8)], add_generation_prompt=True,
                                        tokenize=True, return_dict=True, return_tensors="pt")
    ids = out["input_ids"][0]
    assert (ids == 4).sum() == 2 and (ids == 5).sum() == 0 and (ids == 6).sum() == 14
    motion = (ids == 6).nonzero().flatten()
    assert (ids == 7).nonzero().flatten().tolist() == [int(motion[-1]) + 1]  # one <|clip|>, right after
    assert out["structure_pixels"].shape == (1, 3, 32, 32)
    assert out["texture_pixels"].shape == (1, 4, 3, 48, 48)
    assert out["motion_map"].shape == (1, 3, 40, 40)
    config.expert_num_tokens = lambda: {"structure": 3, "texture": 5, "motion": 14}
    assert DeftProcessor.from_config(config, processor.tokenizer).expert_num_tokens["texture"] == 5
    config.motion_token_id = 9
    with pytest.raises(ValueError, match="<|motion|> to id 6 but the config expects 9"):
        DeftProcessor.from_config(config, processor.tokenizer)


def test_from_the_model_config():
    from deft_llm.configuration_deft import DeftConfig

    config = DeftConfig()
    processor = build_processor(config)
    assert processor.expert_num_tokens == config.expert_num_tokens()
    assert processor.image_processor.num_texture_frames == config.texture_config.num_frames
    assert processor.image_processor.motion_size == config.motion_config.image_size
    assert [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|structure|>", "<|texture|>", "<|motion|>", "<|clip|>")] \
        == [config.structure_token_id, config.texture_token_id, config.motion_token_id, config.clip_token_id]
    config.clip_token_id = 11
    with pytest.raises(ValueError, match="<|clip|> to id 7 but the config expects 11"):
        DeftProcessor.from_config(config, processor.tokenizer)


def test_expand_placeholders_adds_one_clip_token_after_the_experts(processor):
    text = "<|im_start|>user\n<|structure|><|texture|><|motion|>Why?<|im_end|>\n"
    assert processor.expand_placeholders(text) == (
        "<|im_start|>user\n" + "<|structure|>" * 4 + "<|texture|>" * 8 + "<|motion|>" * 14 + "<|clip|>Why?<|im_end|>\n")
    assert processor.expand_placeholders("no video here") == "no video here"


def test_text_video_mismatch_errors(processor, smile):
    with pytest.raises(ValueError, match="placeholders but no `videos`"):
        processor(text="<|structure|><|texture|><|motion|>hi")
    with pytest.raises(ValueError, match="2 texts but 1 clips"):
        processor(text=["<|structure|>a", "<|structure|>b"], videos=[smile[0]], apexes=[8])
    with pytest.raises(ValueError, match="more than one video"):
        processor(text="<|structure|><|structure|>", videos=smile[0])


def test_post_process_parses_answers(processor):
    tok = processor.tokenizer
    prompt = tok(["<|im_start|>assistant\n"], return_tensors="pt")["input_ids"]
    answer = tok([ANSWER + "<|im_end|>"], return_tensors="pt")["input_ids"]
    parsed = processor.post_process(torch.cat([prompt, answer], 1), input_ids=prompt)
    assert parsed == [{"emotion": "happiness", "aus": ["AU6", "AU12"], "text": ANSWER}]
    assert processor.batch_decode(answer) == [ANSWER]
    assert processor.batch_decode(answer, parse=True)[0]["emotion"] == "happiness"


# ------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------
def test_tokenizer_special_ids_size_and_round_trip():
    tok = build_tokenizer()
    assert len(tok) <= 512
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(8))
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 3)
    texts = [ANSWER, facs.format_answer("others", []),
             facs.format_answer("contempt", [facs.AUEvidence("AU14", "mouth_corner_right", "inward", 0.07)]),
             "Naïve “quotes” — 表情 😀\n\ttabs  and  spaces "]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert facs.parse_answer(tok.decode(ids)) == facs.parse_answer(text)
    assert len(tok(ANSWER)["input_ids"]) < len(ANSWER) / 2.5   # BPE learned the answer format
    assert build_tokenizer().get_vocab() == tok.get_vocab()      # deterministic


# ------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained / AutoProcessor
# ------------------------------------------------------------------------------------------
def test_video_processor_save_load(tmp_path, smile):
    vp = DeftVideoProcessor(flow_method="farneback", motion_size=32, face="none")
    vp.save_pretrained(tmp_path)
    loaded = DeftVideoProcessor.from_pretrained(tmp_path)
    assert (loaded.flow_method, loaded.motion_size, loaded.face) == ("farneback", 32, "none")
    a, b = vp(smile[0], apexes=8), loaded(smile[0], apexes=8)
    np.testing.assert_array_equal(a["motion_map"], b["motion_map"])


def test_auto_processor_round_trip(tmp_path, processor, smile):
    from transformers import AutoProcessor

    processor.save_pretrained(tmp_path)
    saved = sorted(os.listdir(tmp_path))
    for name in ("processing_deft.py", "optical_flow.py", "video_io.py", "facs.py",
                 "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert name in saved
    assert "tokenizer_build.py" not in saved
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_deft.DeftProcessor"
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "DeftProcessor"
    assert type(loaded.image_processor).__name__ == "DeftVideoProcessor"
    assert loaded.expert_num_tokens == processor.expert_num_tokens
    messages = [user_turn(smile[0], apex=8)]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    a, b = processor.apply_chat_template(messages, **kwargs), loaded.apply_chat_template(messages, **kwargs)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


FRESH_PROCESS = textwrap.dedent("""
    import sys
    repo = sys.argv[1]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and not p.startswith(repo)]
    sys.path_importer_cache.clear()
    try:
        import deft_llm
    except ImportError:
        pass
    else:
        raise SystemExit("deft_llm is importable: " + deft_llm.__file__)
    import json, numpy as np
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained("saved", trust_remote_code=True)
    clip = np.load("clip.npy")
    messages = [{"role": "user", "content": [{"type": "video", "video": clip, "apex": 8},
                                             {"type": "text", "text": "Which micro-expression is this?"}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors="np")
    parsed = processor.batch_decode(processor.tokenizer(["Emotion: surprise."])["input_ids"], parse=True)
    print(json.dumps({"class": type(processor).__name__, "module": type(processor).__module__,
                      "ids": out["input_ids"][0].tolist(), "motion_sum": float(out["motion_map"].sum()),
                      "emotion": parsed[0]["emotion"]}))
""")


def test_auto_processor_in_fresh_process_without_package(tmp_path, processor, smile):
    processor.save_pretrained(tmp_path / "saved")
    np.save(tmp_path / "clip.npy", smile[0])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(REPO)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] == "DeftProcessor" and report["module"].startswith("transformers_modules")
    expected = processor.apply_chat_template([user_turn(smile[0], apex=8)], add_generation_prompt=True,
                                             tokenize=True, return_dict=True, return_tensors="np")
    assert report["ids"] == expected["input_ids"][0].tolist()
    assert report["motion_sum"] == pytest.approx(float(expected["motion_map"].sum()), rel=1e-5)
    assert report["emotion"] == "surprise"
