"""Uni-MER: dual-constraint decisions, answers, Hub-layout round trip, resume, push."""

import json

import numpy as np
import pytest
import yaml

from deft_llm import facs
from deft_llm.data import (BuildConfig, ClipRecord, SynthConfig, SynthMER, build_uni_mer,
                           dual_constraint, example_frames, main, process_clip, push_to_hub)
from deft_llm.data import uni_mer
from deft_llm.data.synthmer import ClipSpec, RenderedAU, config_from_dict, render_clip
from deft_llm.processing_deft import DeftVideoProcessor

E = facs.AUEvidence
SMALL = SynthConfig(image_size=64, fps=30)
SMALL_BUILD = BuildConfig(image_size=64, flow_store_size=16, shard_size=2)


def _codes(text):
    return facs.parse_au_string(text)


# --------------------------------------------------------------------------------------------
# The dual constraint on constructed cases
# --------------------------------------------------------------------------------------------
def test_labelled_and_moved_is_kept():
    evidence = [E("AU6", "cheek_left", "up", 0.5), E("AU6", "cheek_right", "up", 0.4),
                E("AU12", "mouth_corner_left", "up and outward", 0.9),
                E("AU12", "mouth_corner_right", "up and outward", 0.8)]
    d = dual_constraint(_codes("6+12"), evidence)
    assert d.kept == sorted(evidence, key=lambda e: (int(e.au[2:]), e.region))
    assert d.kept_codes == ["6", "12"]
    assert d.labelled_not_seen == [] and d.moved_not_labelled == []


def test_labelled_not_moved_and_moved_not_labelled():
    evidence = [E("AU12", "mouth_corner_left", "up and outward", 0.9),
                E("AU9", "nose", "up", 0.6),
                E("AU20", "mouth_corner_left", "outward", 0.5),       # same region as kept AU12
                E("AU45", "eye_left", "down", 2.0)]                    # a blink: nuisance
    d = dual_constraint(_codes("L12+15+38"), evidence)
    assert [(e.au, e.region) for e in d.kept] == [("AU12", "mouth_corner_left")]
    assert d.labelled_not_seen == ["15"]
    assert d.moved_not_labelled == ["9"]            # AU20 is explained by kept AU12; no blink
    assert d.unverifiable == ["38"]


def test_side_is_respected():
    evidence = [E("AU12", "mouth_corner_left", "up and outward", 0.9)]
    d = dual_constraint(_codes("R12"), evidence)
    assert d.kept == [] and d.labelled_not_seen == ["R12"] and d.moved_not_labelled == ["L12"]
    d = dual_constraint(_codes("L12"), evidence)
    assert d.kept_codes == ["L12"]


def test_min_px_and_labelled_blink():
    evidence = [E("AU4", "brow_inner_left", "down and toward the midline", 0.08),
                E("AU45", "eye_left", "down", 1.0), E("AU45", "eye_right", "down", 1.0)]
    d = dual_constraint(_codes("4+45"), evidence, min_px=0.1)
    assert d.kept_codes == ["45"] and d.labelled_not_seen == ["4"]


def test_answers_parse_back():
    kept = [E("AU6", "cheek_left", "up", 0.5), E("AU12", "mouth_corner_left", "up and outward", 0.9)]
    for kind in uni_mer.INSTRUCTION_TYPES:
        for template in range(4):
            messages, answer = uni_mer.make_messages(kind, template, "happiness", kept)
            assert messages[0]["content"][0] == {"type": "video", "text": None}
            assert messages[0]["content"][1]["text"] in uni_mer.PROMPTS[kind]
            assert messages[1]["content"][0]["text"] == answer
            parsed = facs.parse_answer(answer)
            assert parsed["emotion"] == "happiness" and parsed["aus"] == ["AU6", "AU12"]
    assert len({p for prompts in uni_mer.PROMPTS.values() for p in prompts}) >= 9


# --------------------------------------------------------------------------------------------
# The dual constraint on a rendered clip (labels disagree with the motion)
# --------------------------------------------------------------------------------------------
def test_process_clip_on_constructed_clip():
    cfg = SynthConfig(fps=60)
    spec = ClipSpec(index=0, subject="sub01", clip="clip00000", emotion="happiness",
                    aus=[RenderedAU(12, "left", "D", 1.4), RenderedAU(9, None, "D", 1.4)],
                    label_aus=["L12", "15"], onset=2, apex=10, offset=20, num_frames=23,
                    blink=None, seed=3)
    clip = render_clip(spec, cfg)
    record = ClipRecord.from_synth_spec(spec, cfg, loader=lambda: clip)
    row = process_clip(record, BuildConfig())
    assert row["kept_aus"] == ["L12"]                   # labelled and moved
    assert row["labelled_not_seen"] == ["15"]           # labelled, never rendered
    assert "9" in row["moved_not_labelled"]             # rendered, not labelled
    assert row["true_aus"] == ["L12", "9"]
    answer = row["messages"][1]["content"][0]["text"]
    assert facs.parse_answer(answer) == {"emotion": "happiness", "aus": ["AU12"], "text": answer}
    vocab = facs.AU_VOCAB
    assert row["au_targets"][vocab.index("AU12")] == 1 and row["au_targets"][vocab.index("AU15")] == -1
    assert row["au_targets"][vocab.index("AU9")] == 0
    assert row["onset"] == 2 and row["apex"] == 10 and not row["apex_estimated"]
    assert row["flow"].shape == (64, 64, 2) and row["flow"].dtype == np.float16


def test_evidence_mentions_give_each_named_au_and_where_its_number_is():
    text = ("Motion evidence: AU4 (left inner brow, down, 0.4 px); AU25 (lips, apart, 0.6 px); "
            "AU4 (right inner brow, down, 0.3 px).\nEmotion: anger.\nReason: AU9 did not move.")
    mentions = facs.evidence_mentions(text)
    assert [au for au, _ in mentions] == ["AU4", "AU25", "AU4"]  # in order; the reason's AU9 is not evidence
    assert [text[offset:offset + len(au) - 2] for au, offset in mentions] == ["4", "25", "4"]
    assert facs.parse_answer(text)["aus"] == ["AU4", "AU25"]
    assert facs.evidence_mentions("Emotion: anger.") == []


def test_resume_with_missing_au_cuts_where_the_lowest_missing_au_belongs():
    evidence = ("Motion evidence: AU2 (left outer brow, up, 0.24 px); AU20 (left mouth corner, outward, 0.21 px)."
                "\nEmotion: fear.")
    resume = facs.resume_with_missing_au
    assert resume(evidence, {"AU4", "AU12", "AU2"}) == "Motion evidence: AU2 (left outer brow, up, 0.24 px); AU4 ("
    assert resume(evidence, {"AU25"}) == evidence.split(".\n")[0] + "; AU25 ("  # after the last entry
    assert resume("Motion evidence: no AU motion above the noise floor.\nEmotion: others.", {"AU14"}) == \
        "Motion evidence: AU14 ("
    assert resume(evidence, {"AU2", "AU20"}) is None  # nothing left out
    assert resume(evidence, set()) is None
    assert resume(evidence, {"04", "L2"}) == resume(evidence, {"AU4"})  # AU codes in any dataset style
    # Answers that broke off (length cap, early end): only whole entries count.
    assert resume("Motion evidence: AU2 (left outer brow, up, 0.24 px); AU", {"AU4"}) == \
        "Motion evidence: AU2 (left outer brow, up, 0.24 px); AU4 ("
    assert resume("Motion evidence: AU1 (left inner brow, up, 0.3 px); AU2 (left outer brow, up, 0.",
                  {"AU2", "AU4"}) == "Motion evidence: AU1 (left inner brow, up, 0.3 px); AU2 ("
    assert resume("Motion evidence: AU12 (left mouth corner, up and outward, 0.", {"AU6"}) == "Motion evidence: AU6 ("
    assert resume("Motion evidence: AU motion above the noise floor.\nEmotion: x.", {"AU6"}) == "Motion evidence: AU6 ("
    assert resume("Emotion: fear.", {"AU4"}) is None
    # AU1 is not AU12; the reason line's AUs are not evidence.
    assert resume("Motion evidence: AU1 (left inner brow, up, 0.3 px).\nReason: AU12 did not move.", {"AU12"}) == \
        "Motion evidence: AU1 (left inner brow, up, 0.3 px); AU12 ("
    # Out of AU order, the cut comes after the last entry below the missing AU: AU12 is kept.
    assert resume("Motion evidence: AU12 (x); AU4 (y).", {"AU4", "AU6", "AU12"}) == \
        "Motion evidence: AU12 (x); AU4 (y); AU6 ("


def test_missing_apex_is_spotted():
    cfg = SynthConfig(fps=60, difficulty="easy")
    spec = ClipSpec(index=0, subject="sub03", clip="clip00000", emotion="surprise",
                    aus=[RenderedAU(1, None, "D", 1.4), RenderedAU(2, None, "D", 1.4),
                         RenderedAU(26, None, "C", 1.0)],
                    label_aus=["1", "2", "26"], onset=2, apex=11, offset=22, num_frames=25,
                    blink=None, seed=3)
    clip = render_clip(spec, cfg)
    record = ClipRecord.from_synth_spec(spec, cfg, loader=lambda: clip)
    record.apex = None
    row = process_clip(record, BuildConfig())
    assert row["apex_estimated"] and abs(row["apex"] - 11) <= 2
    assert row["kept_aus"] == ["1", "2", "26"]


# --------------------------------------------------------------------------------------------
# Hub layout: load_dataset round trip, resume, push
# --------------------------------------------------------------------------------------------
def test_load_dataset_round_trip(tmp_path):
    import datasets

    records = list(SynthMER(SMALL, 5).records())
    config = BuildConfig(image_size=64, flow_store_size=16, shard_size=2, test_subjects=("sub02",))
    report = build_uni_mer(records, tmp_path, config, progress=False)
    assert report.splits == {"train": 4, "test": 1} and report.stats["clips"] == 5
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    card = (tmp_path / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"][1] == {"split": "train", "path": "data/train-*.parquet"}
    assert {"name": "train", "num_examples": 4} .items() <= header["dataset_info"]["splits"][1].items()
    assert "labelled but not seen" in card and "apache-2.0" in header["license"]

    ds = datasets.load_dataset(str(tmp_path))
    assert ds["train"].num_rows == 4 and ds["test"].num_rows == 1
    row = ds["test"][0]
    expected = process_clip(records[1], config)
    for key in ("id", "kept_aus", "labelled_not_seen", "moved_not_labelled", "frame_numbers",
                "onset", "apex", "offset", "messages", "emotion", "composite", "au_targets"):
        assert row[key] == expected[key], key
    assert np.array_equal(np.asarray(row["flow"], np.float16), expected["flow"])
    assert len(row["frames"]) == len(row["frame_numbers"]) and row["frames"][0].size == (64, 64)
    # the stored face crops are lossless: the processor measures the same motion from them
    clip = records[1]._all_frames()
    assert np.array_equal(np.asarray(row["frames"][0]), clip[row["onset"]])
    processor = DeftVideoProcessor(flow_size=64, face="none")
    analysis = processor.analyze(example_frames(row), onset=row["onset"], apex=row["apex"],
                                 offset=row["offset"])
    stored = np.asarray(row["flow"], np.float32)
    again = uni_mer._resize_flow(analysis.measurement.flow, 16).astype(np.float32)
    assert np.abs(stored - again).max() < 0.05


def test_resume_after_interrupted_build(tmp_path, monkeypatch):
    records = list(SynthMER(SMALL, 6).records())
    calls = []
    original = uni_mer.process_clip

    def failing(record, config, processor=None):
        calls.append(record.id)
        if len(calls) == 3:                       # first clip of shard 2
            raise RuntimeError("power cut")
        return original(record, config, processor)

    monkeypatch.setattr(uni_mer, "process_clip", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        build_uni_mer(records, tmp_path, SMALL_BUILD, progress=False)
    assert [p.name for p in (tmp_path / "data").glob("*.parquet")] == ["train-00000-of-00003.parquet"]

    calls.clear()
    monkeypatch.setattr(uni_mer, "process_clip", original)
    counted = []
    monkeypatch.setattr(uni_mer, "process_clip", lambda r, c, p=None: counted.append(r.id) or original(r, c, p))
    report = build_uni_mer(records, tmp_path, SMALL_BUILD, progress=False)
    assert counted == [r.id for r in records[2:]]          # shard 1 was not redone
    assert (report.shards_reused, report.shards_written, report.clips_processed) == (1, 2, 4)
    assert report.stats["clips"] == 6

    import datasets
    ds = datasets.load_dataset(str(tmp_path), split="train")
    assert ds["id"] == [r.id for r in records]

    with pytest.raises(FileExistsError, match="different Uni-MER build"):
        build_uni_mer(records[:4], tmp_path, SMALL_BUILD, progress=False)


def test_push_to_hub_private_by_default(tmp_path, monkeypatch):
    build_uni_mer(list(SynthMER(SMALL, 2).records()), tmp_path, SMALL_BUILD, progress=False)
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    assert push_to_hub(tmp_path, "me/uni-mer") == "me/uni-mer"
    assert calls[1] == ("create_repo", "me/uni-mer", {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = calls[2][1]
    assert upload["folder_path"] == str(tmp_path) and upload["repo_type"] == "dataset"
    assert uni_mer.STATE_FILE in upload["ignore_patterns"]

    card = tmp_path / "README.md"
    card.write_text(card.read_text().replace("license: apache-2.0", "license: other"))
    with pytest.raises(PermissionError, match="licensed"):
        push_to_hub(tmp_path, "me/uni-mer", private=False)
    with pytest.raises(FileNotFoundError, match="not a built Uni-MER folder"):
        push_to_hub(tmp_path / "data", "me/x")


def test_cli_synth_and_build(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--clips", "2", "--size", "64", "--fps", "30",
                 "--wrinkles", "0.5", "--crop-jitter", "0"]) == 0
    written = config_from_dict(json.loads((tmp_path / "s" / "config.json").read_text()))
    assert (written.wrinkles, written.crop_jitter, written.image_size) == (0.5, 0.0, 64)
    assert config_from_dict({"image_size": 64}).wrinkles == 0.0   # a folder from before wrinkles
    assert main(["build", str(tmp_path / "u"), "--source", f"synthmer={tmp_path / 's'}",
                 "--image-size", "64", "--flow-store-size", "16", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 clips" in out and "kept" in out
    assert (tmp_path / "u" / "data" / "train-00000-of-00001.parquet").exists()


def test_build_from_casme2_layout(tmp_path):
    """The real-data path: official CASME II layout (cropped frames, xlsx) -> Uni-MER."""
    import cv2
    import datasets
    import openpyxl

    from deft_llm.data import read_casme2

    cfg = SynthConfig(image_size=64, fps=60, difficulty="easy")
    spec = ClipSpec(index=0, subject="sub01", clip="EP02_01f", emotion="happiness",
                    aus=[RenderedAU(12, "right", "E", 1.8)], label_aus=["R12"], onset=2, apex=10,
                    offset=20, num_frames=23, blink=None, seed=1)
    clip = render_clip(spec, cfg)
    folder = tmp_path / "Cropped" / "sub01" / "EP02_01f"
    folder.mkdir(parents=True)
    for i, frame in enumerate(clip.frames):   # dataset frame numbers start at 100
        cv2.imwrite(str(folder / f"reg_img{100 + i}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 100])
    book = openpyxl.Workbook()
    book.active.append(["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame",
                        None, "Action Units", "Estimated Emotion"])
    book.active.append([1, "EP02_01f", None, 102, "/", 120, None, "R12+4", "happiness"])
    book.save(tmp_path / "CASME2-coding-20190701.xlsx")

    result = read_casme2(tmp_path)
    report = build_uni_mer(result.records, tmp_path / "out", BuildConfig(image_size=64, flow_store_size=16),
                           progress=False)
    assert report.stats["apex_estimated"] == 1
    row = datasets.load_dataset(str(tmp_path / "out"), split="train")[0]
    assert row["id"] == "casme2/sub01/EP02_01f" and row["onset"] == 102 and row["offset"] == 120
    assert abs(row["apex"] - 110) <= 2 and row["apex_estimated"]
    assert row["frame_numbers"][0] == 102 and row["frame_numbers"][-1] == 120
    assert row["kept_aus"] == ["R12"] and row["labelled_not_seen"] == ["4"]
    assert row["source_path"].endswith("Cropped/sub01/EP02_01f")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "license: other" in card and "forbid public" in card


def test_au_description_reason_reads_for_contractions_and_movements():
    from deft_llm.data.uni_mer import make_reason

    kept = [facs.AUEvidence("AU12", "mouth_corner_left", "up and outward", 0.4),
            facs.AUEvidence("AU24", "lips", "lips pressed together", 0.85)]
    assert make_reason("au_description", "happiness", kept) == (
        "AU12 (lip corner puller) moves the left mouth corner up and outward by 0.40 px; "
        "AU24 (lip pressor): lips pressed together by 0.85 px.")
