"""Training with TRL SFTTrainer + PEFT: recipes, collator, loss parts, resume, 2-process DDP, LOSO."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from deft_llm import DeftForConditionalGeneration, DeftProcessor, facs
from deft_llm.data.synthmer import SynthConfig, SynthMER
from deft_llm.data.uni_mer import BuildConfig, build_uni_mer
from deft_llm.sft import DeftArguments, DeftDataCollator, build_model_and_processor, parse_args, train

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "configs" / "sft_synth_tiny.yaml"


@pytest.fixture(scope="module")
def uni_mer(tmp_path_factory) -> Path:
    """12 SynthMER clips of 4 subjects, built into a Uni-MER folder (Hub layout)."""
    folder = tmp_path_factory.mktemp("uni-mer")
    records = SynthMER(SynthConfig(n_subjects=4, seed=3, emotions=("happiness", "surprise", "disgust")),
                       n_clips=12).records()
    build_uni_mer(records, folder, BuildConfig(shard_size=6), progress=False)
    return folder


def recipe_args(uni_mer, output_dir, *extra):
    return parse_args(["--config", str(TINY_RECIPE), "--dataset_name", str(uni_mer),
                       "--output_dir", str(output_dir), "--per_device_train_batch_size", "4",
                       "--logging_steps", "1", "--save_strategy", "no", *extra])[:3]


def test_tiny_recipe_parses_and_flags_override():
    args, training, model = parse_args(["--config", str(TINY_RECIPE), "--learning_rate", "0.01",
                                        "--experts", "structure", "motion", "--max_steps", "3"])[:3]
    assert args.dataset_name == "runs/uni-mer-synth" and args.preset == "tiny"
    assert args.experts == ["structure", "motion"]
    assert training.learning_rate == 0.01 and training.max_steps == 3
    assert training.use_cpu and not training.bf16 and not training.activation_checkpointing
    assert model.use_peft and model.lora_r == 32 and "embed_tokens" in model.lora_modules_to_save


def test_every_recipe_key_is_a_real_argument():
    from trl import ModelConfig, SFTConfig

    from deft_llm.evaluate import EvalArguments

    known = set()
    for cls in (DeftArguments, EvalArguments, SFTConfig, ModelConfig):
        known |= set(cls.__dataclass_fields__)
    for recipe in sorted((REPO / "configs").glob("sft_*.yaml")):
        unknown = set(yaml.safe_load(recipe.read_text())) - known
        assert not unknown, f"{recipe.name}: unknown keys {unknown}"
    for launcher in sorted((REPO / "configs" / "accelerate").glob("*.yaml")):
        assert "distributed_type" in yaml.safe_load(launcher.read_text()), launcher.name


def test_collator_shapes_and_answer_only_labels(uni_mer):
    rows = datasets.load_dataset(str(uni_mer), split="train").select(range(3))
    args = DeftArguments(dataset_name=str(uni_mer))
    model, processor = build_model_and_processor(args, parse_args(["--config", str(TINY_RECIPE)])[2],
                                                 ["happiness", "surprise", "disgust"])
    collator = DeftDataCollator(processor, model.config)
    batch = collator(list(rows))
    assert batch["structure_pixels"].shape == (3, 3, 64, 64)
    assert batch["texture_pixels"].shape == (3, 8, 3, 64, 64)
    assert batch["motion_map"].shape == (3, 3, 64, 64)
    assert batch["au_labels"].shape == (3, len(facs.AU_VOCAB))
    assert batch["emotion_labels"].tolist() == [model.config.label2id[r["emotion"]] for r in rows]
    for i, row in enumerate(rows):
        answer_ids = batch["labels"][i][batch["labels"][i] != -100]
        answer = processor.tokenizer.decode(answer_ids, skip_special_tokens=True)
        assert answer.strip() == row["messages"][1]["content"][0]["text"]
        counts = {t: int((batch["input_ids"][i] == model.config.expert_token_ids()[t]).sum())
                  for t in ("structure", "texture", "motion")}
        assert counts == {"structure": 4, "texture": 8, "motion": 14}
    assert len(collator.cache) == 3  # clip tensors computed once per row
    again = collator(list(rows))
    assert torch.equal(again["motion_map"], batch["motion_map"])


def test_collator_marks_the_aus_the_answer_has_yet_to_name(uni_mer):
    """pending_au_labels[b, t]: the AUs the evidence line names after token t; each stays pending
    up to the state that writes its number, so the state before the answer holds them all."""
    rows = datasets.load_dataset(str(uni_mer), split="train").select(range(4))
    model, processor = build_model_and_processor(DeftArguments(dataset_name=str(uni_mer)),
                                                 parse_args(["--config", str(TINY_RECIPE)])[2],
                                                 ["happiness", "surprise", "disgust"])
    collator = DeftDataCollator(processor, model.config)
    batch = collator(list(rows))
    au_labels = model.config.au_labels
    pending = batch["pending_au_labels"]
    assert pending.shape == (*batch["input_ids"].shape, len(au_labels))
    checked = 0
    for i, row in enumerate(rows):
        answer = row["messages"][1]["content"][0]["text"]
        named = [au for au, _ in facs.evidence_mentions(answer)]
        assert named, answer
        first = int((batch["labels"][i] != -100).nonzero()[0])
        names = lambda t: {au_labels[k] for k in pending[i, t].nonzero().flatten().tolist()}  # noqa: E731
        assert pending[i, :first - 1].sum() == 0 and names(first - 1) == set(named)
        ids = batch["input_ids"][i].tolist()
        line_end = next(t for t in range(first, len(ids)) if "\n" in processor.tokenizer.decode(ids[t]))
        numbers = [t for t in range(first, line_end)  # the evidence line; the reason names AUs too
                   if processor.tokenizer.decode(batch["input_ids"][i, t - 1:t + 1]).strip().startswith("AU")
                   and processor.tokenizer.decode(batch["input_ids"][i, t]).strip().isdigit()]
        assert len(numbers) == len(named)  # one number token per mention in this tokenizer
        for k, (t, au) in enumerate(zip(numbers, named)):
            assert processor.tokenizer.decode(batch["input_ids"][i, t]).strip() == au[2:]
            assert au in names(t - 1)                      # the state that writes the number
            assert (au in names(t)) == (au in named[k + 1:])  # named again later, or done
            checked += 1
        assert pending[i, numbers[-1]:].sum() == 0
    assert checked >= 4


def test_collator_prepare_drops_frames_and_flow_without_changing_batches(uni_mer):
    rows = datasets.load_dataset(str(uni_mer), split="train").select(range(4))
    model, processor = build_model_and_processor(DeftArguments(dataset_name=str(uni_mer)),
                                                 parse_args(["--config", str(TINY_RECIPE)])[2],
                                                 ["happiness", "surprise", "disgust"])
    collator = DeftDataCollator(processor, model.config)
    light = collator.prepare(rows)
    assert "frames" not in light.column_names and "flow" not in light.column_names
    assert len(collator.cache) == 4
    fresh = DeftDataCollator(processor, model.config)(list(rows))
    for key, value in collator(list(light)).items():
        assert torch.equal(value, fresh[key]), key
    with pytest.raises(KeyError, match=f"clip {rows[0]['id']}: a row without frames"):
        DeftDataCollator(processor, model.config)([light[0]])


def _trainer(uni_mer, output_dir, *extra):
    from deft_llm.sft import _trainer_class, dataset_emotions, lora_config, load_training_dataset

    args, training, model_args = recipe_args(uni_mer, output_dir, *extra)
    training.remove_unused_columns = False
    training.dataset_kwargs = {"skip_prepare_dataset": True}
    dataset = load_training_dataset(args)
    model, processor = build_model_and_processor(args, model_args, dataset_emotions(dataset))
    return _trainer_class()(model=model, args=training, train_dataset=dataset,
                            data_collator=DeftDataCollator(processor, model.config),
                            processing_class=processor, peft_config=lora_config(model_args))


def test_sft_trainer_loss_falls_and_aux_losses_reach_the_gradients(uni_mer, tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(uni_mer, tmp_path, "--max_steps", "12", "--learning_rate", "3e-3",
                       "--warmup_steps", "0", "--max_train_samples", "4")  # one batch, overfit
    peft_model = trainer.model
    assert peft_model.peft_config["default"].modules_to_save  # experts + heads train fully
    batch = trainer.data_collator(list(trainer.train_dataset.select(range(4))))
    # One hybrid-loss backward: the heads and the motion tower get gradients from the aux terms.
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    base = peft_model.get_base_model().model
    assert base.emotion_head.modules_to_save["default"].weight.grad.abs().sum() > 0
    assert base.au_head.modules_to_save["default"].weight.grad.abs().sum() > 0
    lm_only = trainer.model(**{k: v for k, v in batch.items() if k not in ("emotion_labels", "au_labels")})
    assert loss.item() > lm_only.loss.item()  # the aux terms are part of the trained loss
    trainer.model.zero_grad()

    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert {"lm_loss", "emotion_loss", "au_loss", "disentangle_loss"} <= set(logged[0])
    first, last = logged[0], logged[-1]
    assert float(last["loss"]) < 0.7 * float(first["loss"]), (first, last)


def test_train_saves_a_merged_auto_loadable_folder_and_resumes(uni_mer, tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    args, training, model_args = recipe_args(uni_mer, tmp_path / "run", "--max_steps", "2",
                                              "--save_strategy", "steps", "--save_steps", "2")
    final = train(args, training, model_args)
    files = {p.name for p in final.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_deft.py", "processor_config.json",
            "tokenizer.json", "README.md"} <= files
    assert not any(name.startswith("adapter") for name in files)  # LoRA merged, no PEFT needed
    card = (final / "README.md").read_text()
    assert "pipeline_tag: video-text-to-text" in card and "custom_code" in card
    assert "lie or\ndeception detection" in card or "lie or deception detection" in card.replace("\n", " ")
    model = DeftForConditionalGeneration.from_pretrained(final)
    assert model.config.id2label == {0: "happiness", 1: "surprise", 2: "disgust"}
    DeftProcessor.from_pretrained(final)

    checkpoint = get_last_checkpoint(str(tmp_path / "run"))
    assert checkpoint.endswith("checkpoint-2")
    args, training, model_args = recipe_args(uni_mer, tmp_path / "run", "--max_steps", "4",
                                              "--save_strategy", "steps", "--save_steps", "2",
                                              "--resume_from_checkpoint", "true")
    train(args, training, model_args)
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 after resuming at 2
    assert state["global_step"] == 4


def test_two_process_ddp_launch_trains_and_saves(uni_mer, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(REPO / "configs" / "accelerate" / "cpu_ddp.yaml"), "-m", "deft_llm.sft", "--config", str(TINY_RECIPE), "--dataset_name", str(uni_mer),
           "--output_dir", str(tmp_path / "ddp"), "--max_steps", "2", "--per_device_train_batch_size", "2",
           "--save_strategy", "no", "--logging_steps", "1"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    final = tmp_path / "ddp" / "final"
    assert json.loads((final / "training_args.json").read_text())["num_processes"] == 2
    model = DeftForConditionalGeneration.from_pretrained(final)
    assert model.config.id2label == {0: "happiness", 1: "surprise", 2: "disgust"}


def test_loso_smoke_two_folds_never_trains_on_the_test_subject(uni_mer, tmp_path):
    from deft_llm.evaluate import EvalArguments, parse_args as eval_parse_args, run_loso

    args, eval_args, training, model_args = eval_parse_args(
        ["--config", str(TINY_RECIPE), "--dataset_name", str(uni_mer), "--report_dir", str(tmp_path),
         "--folds", "2", "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no",
         "--max_new_tokens", "8"])
    report = run_loso(args, training, model_args, eval_args)
    subjects = sorted(set(datasets.load_dataset(str(uni_mer), split="train")["subject"]))
    assert report["folds"] == subjects[:2]
    for test_subject in report["folds"]:
        trained = json.loads((tmp_path / f"fold-{test_subject}" / "final" / "training_args.json").read_text())
        assert trained["excluded_subjects"] == [test_subject]
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert {p["subject"] for p in predictions} == set(report["folds"])
    metrics = report["metrics"]
    assert metrics["head_native"]["n"] == len(predictions)
    assert 0 <= metrics["head_native"]["uf1"] <= 1 and "aus_vs_labelled" in metrics
    assert "au_head_vs_labelled" in metrics
    assert all(set(p["head_aus"]) <= set(facs.AU_VOCAB) for p in predictions)
    assert (tmp_path / "confusion_head_native.png").read_bytes()[:4] == b"\x89PNG"
    assert report["au_grounded"] and "free_text_native" in metrics and "free_text_aus_vs_labelled" in metrics

    # Re-scoring the same run: the saved fold models predict again, nothing is trained.
    weights = tmp_path / f"fold-{subjects[0]}" / "final" / "model.safetensors"
    saved = weights.stat().st_mtime_ns
    eval_args.reuse_folds = True
    again = run_loso(args, training, model_args, eval_args)
    assert weights.stat().st_mtime_ns == saved
    assert again["metrics"]["head_native"] == metrics["head_native"]
    training.seed = 5
    with pytest.raises(ValueError, match=r"fold-.*final: trained with seed 0, not 5; reuse only a run's own folds"):
        run_loso(args, training, model_args, eval_args)
    training.seed, args.experts = 0, ["texture", "motion"]
    with pytest.raises(ValueError, match=r"trained with experts \['motion', 'structure', 'texture'\], "
                                         r"not \['motion', 'texture'\]; reuse only"):
        run_loso(args, training, model_args, eval_args)


def test_ground_answers_opens_each_missing_au_in_turn_and_stops_where_the_model_breaks_off(monkeypatch):
    """A scripted model: only answers that miss a head AU are written on, one AU per round, from
    where that AU belongs; a continuation that breaks off at the same cut again ends the rounds."""
    from types import SimpleNamespace

    from deft_llm import evaluate

    continuations = {"AU4 (": "left inner brow, down, 0.30 px); AU20 (left mouth corner, outward, 0.10 px).\n"
                               "Emotion: fear.",
                     "AU5 (": "left eye, up, 0.",  # breaks off inside the entry, every time
                     "AU25 (": "lips, apart, 0.20 px).\nEmotion: fear."}
    calls = []

    def scripted(model, processor, texts, clips, max_new_tokens, stop_strings=("Reason:",)):
        calls.append([t.removeprefix("PROMPT") for t in texts])
        return [next(v for k, v in continuations.items() if t.endswith(k)) for t in texts]

    monkeypatch.setattr(evaluate, "generate_answers", scripted)
    model = SimpleNamespace(config=SimpleNamespace(au_labels=list(facs.AU_VOCAB)))
    answers = ["Motion evidence: AU2 (left outer brow, up, 0.20 px); AU20 (left mouth corner, outward, 0.10 px).\n"
               "Emotion: surprise.",
               "Motion evidence: AU12 (left mouth corner, up and outward, 0.30 px).\nEmotion: happiness.",
               "Motion evidence: AU1 (left inner brow, up, 0.20 px).\nEmotion: fear."]
    grounded = evaluate.ground_answers(model, None, ["PROMPT"] * 3, [{}] * 3, answers,
                                       [{"AU2", "AU4", "AU20", "AU25"}, {"AU12"}, {"AU1", "AU5"}], 160)
    assert grounded[0] == ("Motion evidence: AU2 (left outer brow, up, 0.20 px); AU4 (left inner brow, down, 0.30 px); "
                           "AU20 (left mouth corner, outward, 0.10 px); AU25 (lips, apart, 0.20 px).\nEmotion: fear.")
    assert grounded[1] == answers[1]  # nothing missing: never written on
    assert grounded[2] == "Motion evidence: AU1 (left inner brow, up, 0.20 px); AU5 (left eye, up, 0."
    assert calls == [["Motion evidence: AU2 (left outer brow, up, 0.20 px); AU4 (",
                      "Motion evidence: AU1 (left inner brow, up, 0.20 px); AU5 ("],
                     [grounded[0].split("AU25 (")[0] + "AU25 ("]]  # row 3's cut came back: tried already


def test_au_grounded_answers_name_every_au_the_head_found(uni_mer):
    """The bundled checkpoint, free and AU-grounded: the grounded evidence names each AU of the
    head, and is the free answer up to where the first missing AU belongs."""
    from deft_llm.demo import BUNDLED_CHECKPOINT
    from deft_llm.evaluate import predict

    model = DeftForConditionalGeneration.from_pretrained(BUNDLED_CHECKPOINT)
    processor = DeftProcessor.from_pretrained(BUNDLED_CHECKPOINT)
    rows = datasets.load_dataset(str(uni_mer), split="train")
    collator = DeftDataCollator(processor, model.config)
    free = predict(model, processor, rows, collator, batch_size=12, au_grounded=False)
    grounded = predict(model, processor, rows, collator, batch_size=12)
    assert "free_text_aus" not in free[0]
    resumed = 0
    for f, g in zip(free, grounded):
        assert (g["free_text_emotion"], g["free_text_aus"]) == (f["text_emotion"], f["predicted_aus"])
        assert g["head_aus"] == f["head_aus"] and g["head_probs"] == f["head_probs"]
        assert set(g["head_aus"]) <= set(g["predicted_aus"]), g["text"]
        cut = facs.resume_with_missing_au(f["text"], set(f["head_aus"]))
        if cut is None:
            assert g["text"] == f["text"]
        else:
            assert g["text"].startswith(cut)
            resumed += 1
    assert resumed >= 2  # on these clips the free answers leave out AUs the head found


def test_label_sets_native_and_composite(uni_mer):
    from deft_llm.sft import dataset_emotions, row_emotion, with_label_set

    rows = datasets.load_dataset(str(uni_mer), split="train")
    assert dataset_emotions(rows) == ["happiness", "surprise", "disgust"]
    assert dataset_emotions(rows, "composite") == ["negative", "positive", "surprise"]
    row = rows[0]
    assert row_emotion(row, "composite") == facs.composite_class(row["emotion"])
    coarse = rows.map(lambda r: {"emotion": None})  # SMIC: no fine label, only the composite one
    with pytest.raises(ValueError, match="label_set=composite"):
        dataset_emotions(coarse)
    assert dataset_emotions(coarse, "composite") == ["negative", "positive", "surprise"]
    with pytest.raises(ValueError, match="label_set must be one of"):
        with_label_set(rows, "fine")


def test_score_reads_the_au_head_apart_from_the_explanation():
    from deft_llm.evaluate import score

    def prediction(emotion, text_emotion, head_emotion, labelled, explained, head_aus):
        return {"emotion": emotion, "text_emotion": text_emotion, "head_emotion": head_emotion,
                "labelled_aus": labelled, "kept_aus": labelled, "predicted_aus": explained,
                "head_aus": head_aus}

    predictions = [prediction("happiness", "happiness", "happiness", ["AU6", "AU12"], ["AU12"], ["AU6", "AU12", "AU25"]),
                   prediction("surprise", None, "happiness", ["AU1", "AU2"], [], ["AU2"])]
    report = score(predictions, ["happiness", "surprise"])
    # AU head: tp AU6, AU12, AU2 = 3; fp AU25 = 1; fn AU1 = 1 -> P 0.75, R 0.75
    assert report["au_head_vs_labelled"]["precision"] == pytest.approx(0.75)
    assert report["au_head_vs_labelled"]["recall"] == pytest.approx(0.75)
    # explanations: tp AU12 = 1; fn AU6, AU1, AU2 = 3 -> P 1.0, R 0.25, F1 0.4
    assert report["aus_vs_labelled"]["f1"] == pytest.approx(0.4)
    assert report["head_native"]["accuracy"] == 0.5 and report["text_native"]["accuracy"] == 0.5


def test_bench_loso_script_runs_a_variant_and_the_ststnet_baseline(uni_mer, tmp_path):
    """The results script end to end on one fold: a DEFT row and the flow-only baseline's row."""
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_loso.py"), "--dataset", str(uni_mer), "--folds", "1",
         "--variants", "without motion", "--baseline-epochs", "1", "--out", str(tmp_path), "--label", "smoke",
         "--sft", "--max_steps", "1", "--per_device_train_batch_size", "4"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["results"]) == ["without motion, smoke", "STSTNet (flow only)"]
    assert results["meta"]["folds"] == 1
    ststnet = results["results"]["STSTNet (flow only)"]
    ablation = results["results"]["without motion, smoke"]
    assert ststnet["head_native"]["n"] == len(ablation["folds"]) * 3
    # No motion expert, no AU head: its AU head column is empty, not a score of 0.
    assert "au_head_vs_labelled" not in ablation and "aus_vs_labelled" in ablation
    # ... and its free-text columns follow, from the same (ungrounded: no AU head) answers.
    assert re.search(r"\| without motion, smoke \|.* \| - \| [0-9.]+ \| [0-9.]+ \| [0-9]+ \|", run.stdout)
    assert ablation["free_text_native"] == ablation["text_native"]
    assert "| STSTNet (flow only) | - | - |" in run.stdout


def _loso_part(tmp_path, folder, rows, name="DEFT", seed=0):
    """A saved LOSO run (results.json + predictions.jsonl) from (subject, emotion, text emotion);
    rows of (subject, emotion, head emotion) for the "STSTNet" baseline, which writes no text."""
    (tmp_path / folder).mkdir()
    predictions = [{"id": f"{s}/{e}", "subject": s, "emotion": e, "text_emotion": t, "head_emotion": e,
                    "labelled_aus": ["AU12"], "kept_aus": ["AU12"], "predicted_aus": ["AU12"]}
                   if name != "STSTNet" else {"id": f"{s}/{e}", "subject": s, "emotion": e, "head_emotion": t}
                   for s, e, t in rows]
    (tmp_path / folder / "predictions.jsonl").write_text("\n".join(map(json.dumps, predictions)))
    meta = {"machine": folder, "clips": 4, "subjects": 2, "classes": ["happiness", "surprise"],
            "seed": seed, "folds": 2, "dataset": "d", "date": "2026-11-26"}
    result = {"seconds": 10.0, "folds": sorted({s for s, _, _ in rows}), "report_dir": str(tmp_path / folder)}
    (tmp_path / f"{folder}.json").write_text(json.dumps({"meta": meta, "results": {name: result}}))
    return str(tmp_path / f"{folder}.json")


def test_bench_loso_merge_pools_a_variant_run_in_parts(tmp_path, monkeypatch):
    """--subjects parts of one variant merge into one pooled LOSO score; overlapping parts fail."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_loso

    def part(folder, rows, name="DEFT"):
        return _loso_part(tmp_path, folder, rows, name)

    a = part("a", [("s1", "happiness", "happiness"), ("s1", "surprise", "happiness")])
    b = part("b", [("s2", "happiness", "happiness"), ("s2", "surprise", "surprise")])
    # An ablation on the same clips, in one part, that names no class right in its text.
    ablation = part("e", [("s1", "happiness", None), ("s1", "surprise", None),
                          ("s2", "happiness", None), ("s2", "surprise", None)], name="ablation")
    bench_loso.merge([a, b, ablation], tmp_path)
    merged = json.loads((tmp_path / "results.json").read_text())["results"]
    pooled = merged["DEFT"]
    # DEFT's text UF1: happiness F1 4/5 (TP 2, FP 1), surprise 2/3 (TP 1, FN 1), minus the
    # ablation's 0 (no valid answer); the heads are identical.
    assert merged["ablation"]["vs_first"]["text"]["difference"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert merged["ablation"]["vs_first"]["head"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "resamples": 1000,
                                                     "seeds": [0]}
    assert pooled["folds"] == ["s1", "s2"] and pooled["seconds"] == 20.0
    assert pooled["text_native"]["n"] == 4 and pooled["text_native"]["accuracy"] == 0.75
    assert pooled["text_native"]["confusion"] == [[2, 0], [1, 1]]
    assert pooled["machine"] == "a; b"
    with pytest.raises(ValueError, match="DEFT: cannot pool parts that share folds"):
        bench_loso.merge([a, part("c", [("s1", "happiness", "happiness")])], tmp_path)


def test_bench_loso_merge_pools_seeds(tmp_path, monkeypatch):
    """Runs of one variant with different --seed pool into one row per clip and seed; per_seed
    keeps each seed's score; a row with fewer seeds is paired with the first on its own seeds."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_loso

    clips = [("s1", "happiness"), ("s1", "surprise"), ("s2", "happiness"), ("s2", "surprise")]
    right = _loso_part(tmp_path, "seed0", [(s, e, e) for s, e in clips], seed=0)
    # Seed 1 in two parts (one per fold); it calls every clip happiness.
    half = [_loso_part(tmp_path, f"seed1-{s}", [(c, e, "happiness") for c, e in clips if c == s], seed=1)
            for s in ("s1", "s2")]
    ablation = _loso_part(tmp_path, "abl", [(s, e, "surprise") for s, e in clips], name="ablation", seed=0)
    # The baseline: head only, right on every clip with seed 0, on the happiness clips with seed 1.
    baseline = [_loso_part(tmp_path, f"st{seed}", [(s, e, e if seed == 0 else "happiness") for s, e in clips],
                           name="STSTNet", seed=seed) for seed in (0, 1)]
    bench_loso.merge([right, *half, ablation, *baseline], tmp_path)
    merged = json.loads((tmp_path / "results.json").read_text())
    deft = merged["results"]["DEFT"]
    assert merged["meta"]["seed"] == [0, 1] and deft["seeds"] == [0, 1]
    assert deft["text_native"]["n"] == 8 and deft["folds"] == ["s1", "s2"]
    assert deft["text_native"]["confusion"] == [[4, 0], [2, 2]]
    assert deft["per_seed"]["0"]["text_uf1"] == 1.0
    assert deft["per_seed"]["1"]["text_uf1"] == pytest.approx((2 / 3 + 0) / 2)
    assert deft["seconds"] == 30.0
    # The ablation (seed 0 only) against DEFT's seed 0: 1.0 minus (0 + 2/3) / 2.
    vs = merged["results"]["ablation"]["vs_first"]["text"]
    assert vs["seeds"] == [0] and vs["difference"] == pytest.approx(1 - 1 / 3)
    stst = merged["results"]["STSTNet"]
    assert stst["head_native"]["confusion"] == [[4, 0], [2, 2]] and "text_native" not in stst
    assert stst["per_seed"]["1"] == {"text_uf1": None, "head_uf1": pytest.approx(1 / 3), "au_f1_vs_labelled": None,
                                     "free_text_uf1": None, "free_text_au_f1_vs_labelled": None}
    # Paired on both seeds: DEFT's head is right on all 8 rows, the baseline's UF1 is (4/5 + 2/3) / 2.
    assert list(stst["vs_first"]) == ["head"] and stst["vs_first"]["head"]["seeds"] == [0, 1]
    assert stst["vs_first"]["head"]["difference"] == pytest.approx(1 - (4 / 5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="DEFT: every seed must cover the same folds"):
        bench_loso.merge([right, half[0]], tmp_path)
    old = json.loads(Path(baseline[0]).read_text())  # a run saved before STSTNet saved its predictions
    del old["results"]["STSTNet"]["report_dir"]
    Path(baseline[0]).write_text(json.dumps(old))
    with pytest.raises(ValueError, match="STSTNet: seed 0 saved no predictions, so its seeds cannot be pooled"):
        bench_loso.merge([right, *baseline], tmp_path)
    for path, grounded in ((right, True), (half[0], False)):  # one seed AU-grounded, the other --free
        run = json.loads(Path(path).read_text())
        run["results"]["DEFT"]["au_grounded"] = grounded
        Path(path).write_text(json.dumps(run))
    with pytest.raises(ValueError, match="DEFT: cannot pool AU-grounded runs with --free ones"):
        bench_loso.merge([right, *half], tmp_path)
