"""Readers on tiny fixtures in the official layouts, with the label quirks of mer-facts.md."""

from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pytest

from deft_llm import facs
from deft_llm.data.readers import (MissingDataError, read_4dme, read_casme2, read_casme3_a,
                                   read_dataset, read_samm, read_smic_hs)


def _frames(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((6, 8, 3), (10 * i) % 250, np.uint8))


def _xlsx(path: Path, rows: list[list], sheet: str | None = None) -> None:
    book = openpyxl.Workbook()
    ws = book.active
    if sheet:
        ws.title = sheet
    for row in rows:
        ws.append(row)
    book.save(path)


# --------------------------------------------------------------------------------------------
# CASME II
# --------------------------------------------------------------------------------------------
def _casme2(root: Path, cropped: bool = False, drop_frame: bool = False) -> None:
    header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
              "Action Units", "Estimated Emotion"]
    rows = [header,
            [1, "EP02_01f", None, 46, 48, 50, None, "R12", "happiness"],
            [1, "EP03_02", None, 10, "/", 13, None, "4+7+?", "disgust"],
            [2, "EP01_11f", None, 5, 6, 8, None, "?", "others"]]
    # 57 filler rows so that the known label error sits at pandas row 60 (offset 3 < onset).
    rows += [[3, f"EP09_{i:02d}", None, 1, 2, 3, None, "1+2", "surprise"] for i in range(57)]
    rows.append([3, "EP19_06f", None, 80, 85, 3, None, "L10", "Repression"])
    _xlsx(root / "CASME2-coding-20140508.xlsx", rows)
    base, prefix = (root / "Cropped", "reg_img") if cropped else (root / "CASME2_RAW_selected", "img")
    _frames(base / "sub01" / "EP02_01f", [f"{prefix}{n}.jpg" for n in range(46, 51)])
    _frames(base / "sub01" / "EP03_02", [f"{prefix}{n}.jpg" for n in range(10, 14) if not (drop_frame and n == 12)])
    _frames(base / "sub02" / "EP01_11f", [f"{prefix}{n}.jpg" for n in range(5, 9)])
    for i in range(57):
        _frames(base / "sub03" / f"EP09_{i:02d}", [f"{prefix}{n}.jpg" for n in range(1, 4)])
    _frames(base / "sub03" / "EP19_06f", [f"{prefix}{n}.jpg" for n in range(80, 92)])


def test_casme2_quirks(tmp_path):
    _casme2(tmp_path)
    result = read_casme2(tmp_path)
    by_clip = {r.clip: r for r in result.records}
    assert len(result.records) == 61 and result.skipped == []
    first = by_clip["EP02_01f"]
    assert (first.subject, first.onset, first.apex, first.offset) == ("sub01", 46, 48, 50)
    assert first.aus == [facs.AUCode(12, "right")] and first.composite == "positive"
    assert first.frame_numbers == [46, 47, 48, 49, 50]
    assert first.frame_files[46].endswith("CASME2_RAW_selected/sub01/EP02_01f/img46.jpg")
    frames = first.read_frames([46, 50])
    assert frames[46].shape == (6, 8, 3) and frames[50][0, 0, 0] == 40
    missing_apex = by_clip["EP03_02"]
    assert missing_apex.apex is None and [a.number for a in missing_apex.aus] == [4, 7]
    assert by_clip["EP01_11f"].aus == [] and by_clip["EP01_11f"].composite is None
    patched = by_clip["EP19_06f"]
    assert patched.offset == 91 and patched.extra["offset_patched_from"] == 3
    assert patched.emotion == "repression" and patched.composite == "negative"
    assert patched.aus == [facs.AUCode(10, "left")]


def test_casme2_cropped_and_missing_frames(tmp_path):
    _casme2(tmp_path, cropped=True, drop_frame=True)
    with pytest.raises(MissingDataError) as err:
        read_casme2(tmp_path)
    assert "casme2/sub01/EP03_02" in str(err.value) and "frames" in str(err.value)
    result = read_casme2(tmp_path, on_missing="skip")
    assert len(result.records) == 60 and len(result.skipped) == 1
    assert result.records[0].frame_files[46].endswith("Cropped/sub01/EP02_01f/reg_img46.jpg")
    assert "skipped casme2/sub01/EP03_02" in result.report()


def test_missing_clip_folders_listed_together(tmp_path):
    _casme2(tmp_path)
    for clip in ("EP02_01f", "EP03_02"):
        for f in (tmp_path / "CASME2_RAW_selected" / "sub01" / clip).iterdir():
            f.unlink()
    with pytest.raises(MissingDataError) as err:
        read_casme2(tmp_path)
    message = str(err.value)
    assert "2 clip(s)" in message and "EP02_01f" in message and "EP03_02" in message


# --------------------------------------------------------------------------------------------
# SAMM
# --------------------------------------------------------------------------------------------
def _samm(root: Path) -> None:
    title = [["SAMM Micro-Movement Dataset"], ["FACS codes"]] + [[None]] * 10   # 12 title rows
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame",
              "Offset Frame", "Duration", "Type", "Action Units", "Notes", "Estimated Emotion",
              "Objective Classes"]
    rows = title + [header,
                    [6, "006_1_2", 1, 5562, 5588, 5605, 44, "Micro - 1/2", "R12 + R15", None, "Contempt", 3],
                    [7, "007_3_1", 3, 100, 103, 106, 7, "Micro - 1/2", "R14A", None, "Other", 7],
                    [11, "011_2_3", 2, 20, 22, 25, 6, "Micro - 1/2", "A1+2", None, "Surprise", 5]]
    _xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", rows)
    _frames(root / "SAMM" / "006" / "006_1_2", [f"006_{n:05d}.jpg" for n in range(5562, 5606)])
    _frames(root / "SAMM" / "007" / "007_3_1", [f"007_{n:05d}.jpg" for n in range(100, 107)])
    _frames(root / "SAMM" / "011" / "011_2_3", [f"011_{n:05d}.jpg" for n in range(20, 26)])


def test_samm_header_block_and_au_strings(tmp_path):
    _samm(tmp_path)
    records = {r.clip: r for r in read_samm(tmp_path)}
    first = records["006_1_2"]
    assert (first.subject, first.onset, first.apex, first.offset) == ("006", 5562, 5588, 5605)
    assert first.aus == [facs.AUCode(12, "right"), facs.AUCode(15, "right")]
    assert first.native_emotion == "contempt" and first.composite == "negative"
    assert first.extra["objective_class"] == "3"
    assert records["007_3_1"].aus == [facs.AUCode(14, "right", "A")]
    assert records["007_3_1"].emotion == "others" and records["007_3_1"].composite is None
    assert [a.number for a in records["011_2_3"].aus] == [1, 2]


def test_samm_header_row_moved(tmp_path):
    _samm(tmp_path)
    book = openpyxl.load_workbook(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx")
    book.active.delete_rows(1, 5)      # header now at sheet row 8
    book.save(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx")
    assert len(read_dataset("SAMM", tmp_path)) == 3


# --------------------------------------------------------------------------------------------
# SMIC-HS
# --------------------------------------------------------------------------------------------
def test_smic_hs_folders_no_apex(tmp_path):
    base = tmp_path / "HS"
    _frames(base / "s03" / "micro" / "positive" / "s03_po_11", [f"image{n:06d}.bmp" for n in range(241, 246)])
    _frames(base / "s03" / "micro" / "Negative" / "s03_ne_02", [f"image{n:06d}.bmp" for n in range(10, 13)])
    _frames(base / "s04" / "micro" / "surprise" / "s04_sur_01", [f"image{n:06d}.bmp" for n in range(7, 9)])
    records = {r.clip: r for r in read_smic_hs(tmp_path)}
    assert set(records) == {"s03_po_11", "s03_ne_02", "s04_sur_01"}
    po = records["s03_po_11"]
    assert (po.onset, po.apex, po.offset, po.composite) == (241, None, 245, "positive")
    ne = records["s03_ne_02"]
    assert ne.native_emotion == "negative" and ne.emotion is None and ne.composite == "negative"
    assert records["s04_sur_01"].subject == "s04" and records["s04_sur_01"].emotion == "surprise"


# --------------------------------------------------------------------------------------------
# CAS(ME)^3 Part A
# --------------------------------------------------------------------------------------------
def test_casme3_part_a(tmp_path):
    rows = [["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "emotion", "occlusion"],
            ["spNO.1", "a", 1, 3, 5, "L12+6", "happy", 0],
            ["spNO.1", "b", 10, 12, 14, "4", "Disgust", 1],
            ["spNO.2", "c", 2, 3, 4, "1+2", "surprise", 0]]
    _xlsx(tmp_path / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", rows, sheet="label")
    _frames(tmp_path / "part_A" / "data" / "spNO.1" / "a" / "color", [f"{n}.jpg" for n in range(1, 6)])
    _frames(tmp_path / "part_A" / "data" / "spNO.1" / "b" / "color", [f"{n}.jpg" for n in range(10, 15)])
    result = read_casme3_a(tmp_path, on_missing="skip", exclude=[("spNO.1", "b")])
    assert [r.clip for r in result.records] == ["a"]
    assert result.skipped and "casme3_a/spNO.2/c" in result.skipped[0]
    a = result.records[0]
    assert a.aus == [facs.AUCode(12, "left"), facs.AUCode(6)] and a.emotion == "happiness"
    assert a.frame_files[3].endswith("part_A/data/spNO.1/a/color/3.jpg")
    with pytest.raises(MissingDataError, match="spNO.2/c"):
        read_casme3_a(tmp_path)
    occluded = read_casme3_a(tmp_path, on_missing="skip")
    assert {r.clip: r.extra["occluded"] for r in occluded.records} == {"a": False, "b": True}


def test_4dme(tmp_path):
    rows = [["sub_ID", "fold_name", "Emotion", "Onset", "Apex", "Offset", "AUs"],
            ["S01", "S01_01", "Negative", 3, 4, 6, "R4+7"],
            ["S02", "S02_05", "Positive+Surprise", 1, "/", 2, "12"]]
    _xlsx(tmp_path / "4DME_Labelling_Micro_release v1.xlsx", rows)
    _frames(tmp_path / "texture" / "S01_01", [f"{n:04d}.jpg" for n in range(3, 7)])
    _frames(tmp_path / "texture" / "S02_05", [f"{n:04d}.jpg" for n in range(1, 3)])
    records = {r.clip: r for r in read_4dme(tmp_path)}
    assert records["S01_01"].composite == "negative" and records["S01_01"].emotion is None
    assert records["S02_05"].apex is None and records["S02_05"].composite == "positive"


def test_bad_au_string_names_the_file_and_row(tmp_path):
    _casme2(tmp_path)
    book = openpyxl.load_workbook(tmp_path / "CASME2-coding-20140508.xlsx")
    book.active["H2"] = "R12+smile"
    book.save(tmp_path / "CASME2-coding-20140508.xlsx")
    with pytest.raises(facs.AUCodeError, match="CASME2-coding-20140508.xlsx row 0"):
        read_casme2(tmp_path)
