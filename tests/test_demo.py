"""The Gradio demo through its public API (gradio_client against a local launch), its handling of
bad uploads, and the bundled checkpoint loading where ``deft_llm`` cannot be imported."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from deft_llm import facs  # noqa: E402
from deft_llm import demo as demo_module  # noqa: E402
from deft_llm.demo import (EVIDENCE_HEADERS, build_demo, check_upload, make_examples,  # noqa: E402
                           resolve_checkpoint)

MAX_NEW_TOKENS = 24   # enough to exercise generation; the full answer is not needed here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_video(path, frames, fps=25):
    """Gray uint8 frames (N, H, W) -> lossless VP9 WebM."""
    rgb = np.repeat(np.asarray(frames)[..., None], 3, axis=-1)
    demo_module.write_lossless_webm(path, rgb, fps)
    return Path(path)


@pytest.fixture(scope="module")
def examples():
    return make_examples()   # the default cache folder: rendered once per machine


@pytest.fixture(scope="module")
def app(examples):
    from gradio_client import Client

    demo = build_demo(max_new_tokens=MAX_NEW_TOKENS)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                        quiet=True, ssr_mode=False)
    client = Client(demo.local_url, verbose=False)
    yield demo, client
    client.close()
    demo.close()


def predict(client, path, onset=None, apex=None, face="detect"):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), onset, apex, face, api_name="/analyze")


# ------------------------------------------------------------------------------------------
def test_client_predicts_an_example_with_every_output(app, examples):
    demo, client = app
    engine = demo.deft_engine
    happy = next(e for e in examples if e.emotion == "happiness")
    emotion, probabilities, evidence, explanation, apex_frame, motion, details = predict(
        client, happy.path, onset=str(happy.onset), apex=str(happy.apex), face="none")

    labels = set(engine.id2label.values())
    assert emotion in labels
    confidences = {c["label"]: c["confidence"] for c in probabilities["confidences"]}
    assert set(confidences) == labels
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert probabilities["label"] == emotion == max(confidences, key=confidences.get)

    # The table is the measured AU evidence of this clip, exactly as the engine computes it, and
    # it finds the smile SynthMER rendered (AU12 on both mouth corners).
    assert evidence["headers"] == EVIDENCE_HEADERS
    direct = engine.run(happy.path, happy.onset, happy.apex, face="none")
    assert evidence["data"] == direct.evidence
    assert {(row[0], row[2]) for row in evidence["data"]} >= {
        ("AU12", "left mouth corner"), ("AU12", "right mouth corner")}
    for au, action, region, direction, size, p in evidence["data"]:
        number = int(au[2:])
        assert action == facs.ACTION_UNITS[number].name
        assert region in {facs.region_label(r) for r in facs.ACTION_UNITS[number].regions}
        assert direction == facs.ACTION_UNITS[number].motion_text
        assert size > 0 and 0.0 <= p <= 1.0
        assert au not in ("AU43", "AU45")

    assert isinstance(explanation, str) and explanation == direct.explanation
    # AU-grounded: the explanation names every AU the AU head finds (the smile's AU12 at least).
    _, au_probabilities = engine.heads(engine.model_inputs(direct.analysis))
    found = {au for au, p in au_probabilities.items() if p > 0.5}
    assert "AU12" in found and found <= set(direct.parsed["aus"]), explanation
    assert cv2.imread(apex_frame).shape == (256, 256, 3)
    picture = cv2.imread(motion)
    assert picture.ndim == 3 and picture.shape[1] > 2 * picture.shape[0]
    assert picture.std() > 10            # a drawn figure, not a blank image
    assert f"onset {happy.onset} · apex {happy.apex} (given)" in details
    assert "whole frame" in details and "generation" in details


def test_onset_and_apex_inputs_are_used_and_checked(app, examples):
    from gradio_client.exceptions import AppError

    _, client = app
    clip = examples[0].path
    *_, details = predict(client, clip, face="none")           # empty: first frame, estimated apex
    assert re.search(r"onset 0 · apex \d+ \(estimated from motion energy\)", details)
    with pytest.raises(AppError, match="onset frame 12 must come before apex frame 5"):
        predict(client, clip, onset="12", apex="5", face="none")
    with pytest.raises(AppError, match="apex frame 500 is out of range"):
        predict(client, clip, apex=500, face="none")
    with pytest.raises(AppError, match="apex frame must be a frame index .* got 'soon'"):
        predict(client, clip, apex="soon", face="none")


def test_bad_uploads_give_a_readable_message_and_the_server_keeps_serving(app, examples, tmp_path):
    from gradio_client.exceptions import AppError

    demo, client = app
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("these are meeting notes, not a video\n" * 20)
    one_frame = write_video(tmp_path / "still.webm", np.full((1, 64, 64), 128, np.uint8))
    corrupt = tmp_path / "broken.webm"
    data = examples[0].path.read_bytes()
    corrupt.write_bytes(data[:200] + bytes(len(data) // 2))   # header kept, payload zeroed

    cases = [(not_video, "notes.mp4: this file is not a video that can be read"),
             (one_frame, "still.webm: the clip is too short: 1 frame"),
             (corrupt, "broken.webm: this file is not a video that can be read (not a video, or corrupt)")]
    for path, expected in cases:
        with pytest.raises(AppError) as err:
            predict(client, path)
        message = str(err.value)
        assert expected in message
        assert "Traceback" not in message and 'File "' not in message

    engine = demo.deft_engine
    engine.max_upload_mb = 0.01      # simulate the 50 MB cap with a clip over 10 kB
    try:
        with pytest.raises(AppError, match=r"the file is 0\.\d+ MB; this demo takes videos up to 0\.01 MB"):
            predict(client, examples[0].path, face="none")
    finally:
        engine.max_upload_mb = demo_module.MAX_UPLOAD_MB

    emotion, *_ = predict(client, examples[0].path, face="none")   # still serving
    assert emotion in engine.id2label.values()


def test_check_upload_limits(tmp_path, examples):
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32), dtype=np.uint8)
    clip = write_video(tmp_path / "twelve.webm", frames)
    assert check_upload(clip) == 12
    with pytest.raises(ValueError, match="longer than 10 frames"):
        check_upload(clip, max_frames=10)
    with pytest.raises(ValueError, match="No clip"):
        check_upload(None)


def test_checkpoint_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("DEFT_CHECKPOINT", raising=False)
    assert resolve_checkpoint() == str(demo_module.BUNDLED_CHECKPOINT)
    monkeypatch.setenv("DEFT_CHECKPOINT", "someone/deft-llm-casme2")
    assert resolve_checkpoint() == "someone/deft-llm-casme2"
    assert resolve_checkpoint(tmp_path) == str(tmp_path)           # the flag wins
    assert demo_module.build_parser().parse_args(["--checkpoint", "x", "--port", "7861", "--share"]).share


def test_bundled_checkpoint_loads_with_auto_classes_without_the_package(tmp_path, examples):
    """A fresh process that cannot import deft_llm loads the bundled folder through its remote code."""
    checkpoint = demo_module.BUNDLED_CHECKPOINT
    size_mb = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()) / 1e6
    assert size_mb <= 20, f"the bundled checkpoint is {size_mb:.1f} MB"
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["deft_llm"] = None          # `import deft_llm` raises ImportError
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        messages = [{{"role": "user", "content": [
            {{"type": "video", "path": {str(examples[0].path)!r}, "onset": {examples[0].onset},
              "apex": {examples[0].apex}}},
            {{"type": "text", "text": "What micro-expression does this clip show?"}}]}}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            probs = model(**inputs).emotion_logits.softmax(-1)[0]
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answer = processor.post_process(out, inputs["input_ids"])[0]
        print(json.dumps({{"model": type(model).__module__, "processor": type(processor).__module__,
                          "classes": len(probs), "total": float(probs.sum()),
                          "answer_keys": sorted(answer), "deft_llm_loaded": "deft_llm" in sys.modules
                          and sys.modules["deft_llm"] is not None}}))
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"].startswith("transformers_modules.")
    assert report["processor"].startswith("transformers_modules.")
    assert report["classes"] == len(json.loads((checkpoint / "config.json").read_text())["id2label"])
    assert report["total"] == pytest.approx(1.0, abs=1e-5)
    assert report["answer_keys"] == ["aus", "emotion", "text"]
    assert report["deft_llm_loaded"] is False


def test_predict_command_prints_the_analysis_as_json(examples, tmp_path, capsys):
    disgust = next(e for e in examples if e.emotion == "disgust")
    code = demo_module.predict_main([str(disgust.path), "--onset", str(disgust.onset), "--apex",
                                     str(disgust.apex), "--face", "none", "--max-new-tokens", "8",
                                     "--pictures", str(tmp_path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["onset"], report["apex"], report["apex_estimated"]) == (disgust.onset, disgust.apex, False)
    assert report["emotion"] == max(report["probabilities"], key=report["probabilities"].get)
    assert {(e["au"], e["region"]) for e in report["evidence"]} >= {("AU4", "left inner brow"),
                                                                   ("AU4", "right inner brow")}
    assert set(report["timings_s"]) == set(demo_module.STAGES)
    assert cv2.imread(str(tmp_path / "motion.png")).shape[2] == 3
    assert demo_module.predict_main([str(tmp_path / "missing.mp4")]) == 2
    assert "missing.mp4: file not found" in capsys.readouterr().err
