"""Leave-one-subject-out evaluation of DEFT-LLM on Uni-MER.

    deft-llm evaluate --config configs/sft_synth_tiny.yaml --report_dir runs/loso [--folds 2]

For every subject: train on the other subjects with ``deft_llm.sft`` (a fixed schedule: no
model selection, so nothing ever looks at the left-out subject before its predictions), then
generate answers for the left-out subject's clips. All folds' predictions are pooled into one
confusion matrix (the field's protocol), scored as UF1 / UAR / accuracy on the native classes
and on the MEGC composite 3 classes, for the emotion parsed from the generated text and for
the emotion head. AUs parsed from the generated evidence are scored against the labelled AUs
and against the Uni-MER targets (labelled AND seen moving). Writes ``report.json`` and
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


def _au_numbers(names) -> list[str]:
    """``L12``/``AU12``/``R12`` -> ``AU12``: explanations are scored per AU, sides pooled."""
    out = []
    for name in names:
        for code in facs.parse_au_string(str(name).removeprefix("AU")):
            if code.name not in out:
                out.append(code.name)
    return out


@torch.no_grad()
def predict(model, processor, rows, collator, batch_size: int = 16, max_new_tokens: int = 160,
            desc: str = "predict") -> list[dict]:
    """Generate an answer for each row (its own user prompt); parse it; read the emotion head."""
    from .sft import row_emotion

    model.eval()
    id2label = model.config.id2label
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    predictions = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        prompts = [processor.apply_chat_template(row["messages"][:1], tokenize=False,
                                                 add_generation_prompt=True) for row in batch]
        encoded = tokenizer([processor.expand_placeholders(p) for p in prompts], padding=True,
                            return_tensors="pt")
        clips = [collator.clip_tensors(row) for row in batch]
        inputs = {**encoded, **{k: torch.from_numpy(np.stack([c[k] for c in clips])) for k in clips[0]}}
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        outputs = model(**inputs)
        head = outputs.emotion_logits.float().softmax(-1).cpu()
        # A model without the motion expert has no AU head: its rows get no "head_aus", so the
        # report leaves the AU head out instead of scoring it 0.
        au_probs = (outputs.au_logits.float().sigmoid().cpu() if outputs.au_logits is not None
                    else [None] * len(batch))
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                   stop_strings=["Reason:"], tokenizer=tokenizer)
        parsed = processor.post_process(generated, inputs["input_ids"])
        for row, answer, probs, aus in zip(batch, parsed, head, au_probs):
            prediction = {
                "id": row["id"], "subject": row["subject"],
                "emotion": row_emotion(row, collator.label_set),
                "text_emotion": answer["emotion"], "head_emotion": id2label[int(probs.argmax())],
                "head_probs": {id2label[i]: round(float(p), 4) for i, p in enumerate(probs)},
                "labelled_aus": _au_numbers(row["labelled_aus"]),
                "kept_aus": _au_numbers(row["kept_aus"]),
                "predicted_aus": answer["aus"], "text": answer["text"],
            }
            if aus is not None:
                prediction["head_aus"] = [au for au, q in zip(model.config.au_labels, aus.tolist()) if q > 0.5]
            predictions.append(prediction)
    return predictions


def score(predictions: list[dict], classes: list[str]) -> dict:
    """Pooled metrics: native and composite classes, text and head emotions, AU sets; each only
    where the predictions carry it (a flow-only baseline has a head and no text)."""
    truth = [p["emotion"] for p in predictions]
    report = {}
    for source in ("text", "head"):
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
    if all("head_aus" in p for p in predictions):  # the AU head (p > 0.5), not the explanation
        report["au_head_vs_labelled"] = au_metrics([p["labelled_aus"] for p in predictions],
                                                   [_au_numbers(p["head_aus"]) for p in predictions])
    return report


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
        final = train(fold_args, fold_training, model_args, cache=cache)
        trained_on = json.loads((final / "training_args.json").read_text())
        assert test_subject in trained_on["excluded_subjects"], "left-out subject reached training"

        model = DeftForConditionalGeneration.from_pretrained(final)
        processor = DeftProcessor.from_pretrained(final)
        if list(model.config.id2label.values()) != classes:
            logger.warning("fold %s trained on classes %s (dataset has %s)", test_subject,
                           list(model.config.id2label.values()), classes)
        test_rows = dataset.filter(lambda s: s == test_subject, input_columns="subject")
        collator = DeftDataCollator(processor, model.config, args.flow_method, cache, args.label_set)
        predictions += predict(model, processor, test_rows, collator, eval_args.eval_batch_size,
                               eval_args.max_new_tokens, desc=f"fold {test_subject}")
        timings[test_subject] = round(time.perf_counter() - start, 1)

    report = {
        "protocol": "LOSO, predictions of all folds pooled into one confusion matrix; fixed "
                    "training schedule, no model selection (the left-out subject is never seen "
                    "before prediction)",
        "dataset": args.dataset_name, "label_set": args.label_set,
        "experts": args.experts or ["structure", "texture", "motion"],
        "folds": [s for s, _ in folds], "seed": training_args.seed, "seconds_per_fold": timings,
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
                      for k in ("aus_vs_labelled", "aus_vs_uni_mer_targets")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
