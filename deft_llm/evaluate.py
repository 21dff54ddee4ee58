"""Leave-one-subject-out evaluation of DEFT-LLM on Uni-MER.

    deft-llm evaluate --config configs/sft_synth_tiny.yaml --report_dir runs/loso [--folds 2]

For every subject: train on the other subjects with ``deft_llm.sft`` (a fixed schedule: no
model selection, so nothing ever looks at the left-out subject before its predictions), then
generate answers for the left-out subject's clips. All folds' predictions are pooled into one
confusion matrix (the field's protocol), scored as UF1 / UAR / accuracy on the native classes
and on the MEGC composite 3 classes, for the emotion parsed from the generated text and for
the emotion head. AUs parsed from the generated evidence are scored against the labelled AUs
and against the Uni-MER targets (labelled AND seen moving). Answers are AU-grounded by default
(the evidence names every AU the AU head found; ``--au_grounded false`` turns it off), and the
free answers of the same models are scored alongside. Writes ``report.json`` and
confusion-matrix PNGs.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import facs
from .metrics import au_metrics, classification_metrics, loso_folds, plot_confusion

logger = logging.getLogger(__name__)


@dataclass
class EvalArguments:
    report_dir: str = field(default="runs/loso", metadata={"help": "where report.json and PNGs go"})
    folds: int | None = field(default=None, metadata={"help": "evaluate only the first N subjects' folds"})
    subjects: list[str] | None = field(default=None, metadata={
        "help": "evaluate only these subjects' folds (to split a LOSO run over machines; "
                "pool the predictions.jsonl files with `score`)"})
    eval_batch_size: int = field(default=16, metadata={"help": "clips per generate call"})
    max_new_tokens: int = field(default=160, metadata={"help": "answer length cap"})
    au_grounded: bool = field(default=True, metadata={
        "help": "AU-grounded answers: the motion evidence names every AU the AU head found (the "
                "free answers are scored too, as free_text_*)"})
    reuse_folds: bool = field(default=False, metadata={
        "help": "predict with a fold's saved <report_dir>/fold-<subject>/final model instead of "
                "training it again (to re-score a LOSO run, e.g. with other decoding); it must "
                "match this command's data, seed, experts and schedule. Folds without one are trained"})


def _au_numbers(names) -> list[str]:
    """``L12``/``AU12``/``R12`` -> ``AU12``: explanations are scored per AU, sides pooled."""
    out = []
    for name in names:
        for code in facs.parse_au_string(str(name).removeprefix("AU")):
            if code.name not in out:
                out.append(code.name)
    return out


def _batch_inputs(model, processor, texts: list[str], clips: list[dict]) -> dict:
    encoded = processor.tokenizer([processor.expand_placeholders(t) for t in texts], padding=True,
                                  padding_side="left", return_tensors="pt")
    inputs = {**encoded, **{k: torch.from_numpy(np.stack([c[k] for c in clips])) for k in clips[0]}}
    return {k: v.to(model.device) for k, v in inputs.items()}


def generate_answers(model, processor, texts: list[str], clips: list[dict], max_new_tokens: int,
                     stop_strings: tuple[str, ...] = ("Reason:",)) -> list[str]:
    """Greedy answers, each going on from its text (a prompt, or a prompt and a started answer);
    ``clips``: each text's expert tensors (numpy, as the collator's ``clip_tensors`` gives them).

    Evaluation stops at "Reason:": the reason only restates the evidence line, and scoring reads
    the evidence and emotion lines alone. ``stop_strings=()`` writes the whole answer (the demo).
    """
    tokenizer = processor.tokenizer
    inputs = _batch_inputs(model, processor, texts, clips)
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                               stop_strings=list(stop_strings) or None, tokenizer=tokenizer,
                               pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))  # end of turn
    return processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def ground_answers(model, processor, prompts: list[str], clips: list[dict], answers: list[str],
                   required_aus: list[set[str]], max_new_tokens: int,
                   stop_strings: tuple[str, ...] = ("Reason:",)) -> list[str]:
    """AU-grounded answers: the evidence names every AU of ``required_aus`` (the AU head's
    ``p > 0.5``), where the model left one out.

    The small LLM tends to stop its AU list early: it names fewer AUs than the AU head, which
    reads the same motion tokens, detects. Where an answer's evidence leaves out a required AU,
    it is cut at the point that AU belongs (:func:`facs.resume_with_missing_au`), that AU's entry
    is opened, and the model writes on from there: the entry's region, direction and size, the
    entries after it and the emotion are the model's own. One AU per round, for the answers
    that still need one; an answer that comes back to a cut already tried is left as it is.
    """
    answers, tried = list(answers), [set() for _ in answers]
    for _ in range(len(model.config.au_labels)):
        resumed = {i: facs.resume_with_missing_au(answer, required)
                   for i, (answer, required) in enumerate(zip(answers, required_aus))}
        # A cut tried before would be written on the same way (greedy): that answer is done.
        resumed = {i: text for i, text in resumed.items() if text is not None and text not in tried[i]}
        if not resumed:
            break
        rows = list(resumed)
        more = generate_answers(model, processor, [prompts[i] + resumed[i] for i in rows],
                                [clips[i] for i in rows], max_new_tokens, stop_strings)
        for i, text in zip(rows, more):
            tried[i].add(resumed[i])
            answers[i] = resumed[i] + text
    return answers


@torch.no_grad()
def predict(model, processor, rows, collator, batch_size: int = 16, max_new_tokens: int = 160,
            desc: str = "predict", au_grounded: bool = True) -> list[dict]:
    """Generate an answer for each row (its own user prompt); parse it; read the emotion head.

    ``au_grounded``: the evidence names every AU the AU head found (:func:`ground_answers`);
    each prediction keeps the free (unguided) answer's emotion and AUs too, so both get scored. A
    model without an AU head (no motion expert) answers free: its ``free_text_*`` repeat its text."""
    from .sft import row_emotion

    model.eval()
    id2label = model.config.id2label
    predictions = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        prompts = [processor.apply_chat_template(row["messages"][:1], tokenize=False,
                                                 add_generation_prompt=True) for row in batch]
        clips = [collator.clip_tensors(row) for row in batch]
        outputs = model(**_batch_inputs(model, processor, prompts, clips))
        head = outputs.emotion_logits.float().softmax(-1).cpu()
        # A model without the motion expert has no AU head: its rows get no "head_aus", so the
        # report leaves the AU head out instead of scoring it 0.
        head_aus = ([[au for au, q in zip(model.config.au_labels, probs) if q > 0.5]
                     for probs in outputs.au_logits.float().sigmoid().tolist()]
                    if outputs.au_logits is not None else None)
        free = generate_answers(model, processor, prompts, clips, max_new_tokens)
        answers = (ground_answers(model, processor, prompts, clips, free, [set(a) for a in head_aus], max_new_tokens)
                   if au_grounded and head_aus is not None else free)
        for k, (row, answer, probs) in enumerate(zip(batch, answers, head)):
            parsed = facs.parse_answer(answer.strip())
            prediction = {
                "id": row["id"], "subject": row["subject"],
                "emotion": row_emotion(row, collator.label_set),
                "text_emotion": parsed["emotion"], "head_emotion": id2label[int(probs.argmax())],
                "head_probs": {id2label[i]: round(float(p), 4) for i, p in enumerate(probs)},
                "labelled_aus": _au_numbers(row["labelled_aus"]),
                "kept_aus": _au_numbers(row["kept_aus"]),
                "predicted_aus": parsed["aus"], "text": parsed["text"],
            }
            if au_grounded:
                unguided = facs.parse_answer(free[k].strip())
                prediction["free_text_emotion"], prediction["free_text_aus"] = unguided["emotion"], unguided["aus"]
            if head_aus is not None:
                prediction["head_aus"] = head_aus[k]
            predictions.append(prediction)
    return predictions


def score(predictions: list[dict], classes: list[str]) -> dict:
    """Pooled metrics: native and composite classes, AU sets; for the answer text, the free
    (unguided) text of an AU-grounded run, and the heads; each only where the predictions carry
    it (a flow-only baseline has a head and no text)."""
    truth = [p["emotion"] for p in predictions]
    report = {}
    for source in ("text", "free_text", "head"):
        if not all(f"{source}_emotion" in p for p in predictions):
            continue
        predicted = [p[f"{source}_emotion"] for p in predictions]
        report[f"{source}_native"] = classification_metrics(truth, predicted, classes)
        composite = [(facs.composite_class(t), facs.composite_class(p) if p else None)
                     for t, p in zip(truth, predicted) if facs.composite_class(t)]
        if composite:
            report[f"{source}_composite"] = classification_metrics(
                [t for t, _ in composite], [p for _, p in composite], facs.COMPOSITE_CLASSES)
    if all("predicted_aus" in p for p in predictions):
        predicted_aus = [p["predicted_aus"] for p in predictions]
        report["aus_vs_labelled"] = au_metrics([p["labelled_aus"] for p in predictions], predicted_aus)
        report["aus_vs_uni_mer_targets"] = au_metrics([p["kept_aus"] for p in predictions], predicted_aus)
    if all("free_text_aus" in p for p in predictions):
        report["free_text_aus_vs_labelled"] = au_metrics([p["labelled_aus"] for p in predictions],
                                                         [p["free_text_aus"] for p in predictions])
    if all("head_aus" in p for p in predictions):  # the AU head (p > 0.5), not the explanation
        report["au_head_vs_labelled"] = au_metrics([p["labelled_aus"] for p in predictions],
                                                   [_au_numbers(p["head_aus"]) for p in predictions])
    return report


def _check_reused(final: Path, trained_on: dict, args, training_args, model_args) -> None:
    """A reused fold model must be the one this command would have trained."""
    from .processing_deft import EXPERTS

    expected = {"dataset": args.dataset_name, "seed": training_args.seed, "label_set": args.label_set,
                "epochs": training_args.num_train_epochs, "max_steps": training_args.max_steps,
                "learning_rate": training_args.learning_rate}
    if args.experts or not model_args.model_name_or_path:  # a checkpoint brings its own experts
        expected["experts"] = sorted(args.experts or EXPERTS)
    found = {**trained_on, "experts": sorted(trained_on.get("experts") or [])}
    differ = [f"{key} {found.get(key)!r}, not {value!r}" for key, value in expected.items() if found.get(key) != value]
    if differ:
        raise ValueError(f"{final}: trained with {'; '.join(differ)}; reuse only a run's own folds")


def run_loso(args, training_args, model_args, eval_args: EvalArguments, cache: dict | None = None) -> dict:
    """Train and predict one fold per subject; pool; score; write the report and PNGs."""
    import datasets

    from .modeling_deft import DeftForConditionalGeneration
    from .processing_deft import DeftProcessor
    from .sft import DeftDataCollator, dataset_emotions, train, with_label_set

    report_dir = Path(eval_args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    dataset = datasets.load_dataset(args.dataset_name, args.dataset_config, split=args.dataset_train_split)
    dataset = with_label_set(dataset, args.label_set)
    classes = dataset_emotions(dataset, args.label_set)
    folds = loso_folds(dataset["subject"])
    if eval_args.subjects:
        folds = [fold for fold in folds if fold[0] in set(eval_args.subjects)]
    folds = folds[: eval_args.folds]
    cache = {} if cache is None else cache
    predictions, timings = [], {}
    for test_subject, train_subjects in folds:
        start = time.perf_counter()
        fold_args = copy.copy(args)
        fold_args.train_subjects, fold_args.exclude_subjects = train_subjects, [test_subject]
        fold_training = copy.deepcopy(training_args)
        fold_training.output_dir = str(report_dir / f"fold-{test_subject}")
        final = Path(fold_training.output_dir) / "final"
        reused = eval_args.reuse_folds and (final / "model.safetensors").is_file()
        if not reused:
            final = train(fold_args, fold_training, model_args, cache=cache)
        trained_on = json.loads((final / "training_args.json").read_text())
        assert test_subject in trained_on["excluded_subjects"], "left-out subject reached training"
        if reused:
            _check_reused(final, trained_on, args, training_args, model_args)

        model = DeftForConditionalGeneration.from_pretrained(final)
        processor = DeftProcessor.from_pretrained(final)
        if list(model.config.id2label.values()) != classes:
            logger.warning("fold %s trained on classes %s (dataset has %s)", test_subject,
                           list(model.config.id2label.values()), classes)
        test_rows = dataset.filter(lambda s: s == test_subject, input_columns="subject")
        collator = DeftDataCollator(processor, model.config, args.flow_method, cache, args.label_set)
        predictions += predict(model, processor, test_rows, collator, eval_args.eval_batch_size,
                               eval_args.max_new_tokens, desc=f"fold {test_subject}",
                               au_grounded=eval_args.au_grounded)
        timings[test_subject] = round(time.perf_counter() - start, 1)

    report = {
        "protocol": "LOSO, predictions of all folds pooled into one confusion matrix; fixed "
                    "training schedule, no model selection (the left-out subject is never seen "
                    "before prediction)",
        "dataset": args.dataset_name, "label_set": args.label_set,
        "experts": args.experts or ["structure", "texture", "motion"],
        "folds": [s for s, _ in folds], "seed": training_args.seed, "au_grounded": eval_args.au_grounded,
        "seconds_per_fold": timings,
        "metrics": score(predictions, classes),
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2))
    (report_dir / "predictions.jsonl").write_text("\n".join(json.dumps(p) for p in predictions) + "\n")
    for key in ("text_native", "text_composite", "head_native"):
        if key in report["metrics"]:
            m = report["metrics"][key]
            plot_confusion(m["confusion"], m["classes"], report_dir / f"confusion_{key}.png",
                           title=f"{key}: UF1 {m['uf1']:.3f}, UAR {m['uar']:.3f}")
    return report


def parse_args(argv=None):
    from trl import ModelConfig, SFTConfig, TrlParser

    from .sft import DeftArguments

    parser = TrlParser((DeftArguments, EvalArguments, SFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)[:4]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, eval_args, training_args, model_args = parse_args(argv)
    report = run_loso(args, training_args, model_args, eval_args)
    m = report["metrics"]
    print(json.dumps({k: {"uf1": v["uf1"], "uar": v["uar"], "accuracy": v["accuracy"]}
                      for k, v in m.items() if "uf1" in v}, indent=2))
    print(json.dumps({k: {"precision": m[k]["precision"], "recall": m[k]["recall"], "f1": m[k]["f1"]}
                      for k in ("aus_vs_labelled", "aus_vs_uni_mer_targets", "free_text_aus_vs_labelled")
                      if k in m}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
