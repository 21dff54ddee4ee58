"""Supervised fine-tuning of DEFT-LLM on Uni-MER with TRL's SFTTrainer and a PEFT LoRA.

    accelerate launch -m deft_llm.sft --config configs/sft_synth_tiny.yaml [--flag value ...]

The YAML holds the fields of three argument classes, TRL-style: :class:`DeftArguments` (data,
which model to build), ``trl.SFTConfig`` (the training loop) and ``trl.ModelConfig`` (a
checkpoint to start from, LoRA); command-line flags override the file.

What is trained: a LoRA on the language model's projections, while the experts (towers,
projectors, expert-type embedding) and both heads train fully (PEFT ``modules_to_save``). The
final folder holds the LoRA merged into the language model, so it loads with the Auto classes
and no PEFT; it carries the remote code, the processor, the tokenizer and a filled model card.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from . import facs
from .configuration_deft import DeftConfig
from .modeling_deft import DeftForConditionalGeneration
from .processing_deft import CLIP_TOKEN, PLACEHOLDERS, DeftProcessor

logger = logging.getLogger(__name__)

# LoRA goes on the language model's linear layers; everything else trains fully.
LM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
FULLY_TRAINED = ["tower", "projector", "expert_type_embedding", "clip_reduce", "clip_projector", "emotion_head",
                 "au_head", "grounding_head"]


@dataclass
class DeftArguments:
    """Data and model-building arguments of ``deft_llm.sft`` (the rest: SFTConfig, ModelConfig)."""

    dataset_name: str = field(metadata={"help": "Uni-MER folder (Hub layout) or Hub dataset id"})
    dataset_config: str | None = field(default=None, metadata={"help": "dataset config name"})
    dataset_train_split: str = field(default="train", metadata={"help": "split to train on"})
    dataset_test_split: str | None = field(default=None, metadata={"help": "split to evaluate on"})
    train_subjects: list[str] | None = field(
        default=None, metadata={"help": "train only on these subjects (LOSO folds)"})
    exclude_subjects: list[str] | None = field(
        default=None, metadata={"help": "never train on these subjects (a LOSO test subject)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "cap for quick runs"})
    preset: str = field(default="tiny", metadata={"help": "model preset when starting fresh: tiny | paper_scale"})
    experts: list[str] | None = field(
        default=None, metadata={"help": "experts to switch on (ablation), default all three"})
    language_model_name_or_path: str | None = field(
        default=None, metadata={"help": "paper_scale: LLM (and tokenizer) by Hub id or path"})
    load_pretrained_towers: bool = field(
        default=False, metadata={"help": "paper_scale: start towers/LLM from config.pretrained_towers"})
    label_set: str = field(default="native", metadata={
        "help": "native: each dataset's emotions; composite: MEGC2019 positive/negative/surprise "
                "(rows without a composite class, e.g. others, are left out)"})
    flow_method: str = field(default="dis", metadata={"help": "dis | tvl1 | farneback"})
    emotion_loss_weight: float | None = field(default=None, metadata={"help": "override the config"})
    au_loss_weight: float | None = field(default=None, metadata={"help": "override the config"})
    grounding_loss_weight: float | None = field(default=None, metadata={"help": "override the config"})
    disentangle_loss_weight: float | None = field(default=None, metadata={"help": "override the config"})
    expert_dropout: float | None = field(default=None, metadata={"help": "override the config"})


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
LABEL_SETS = ("native", "composite")


def with_label_set(dataset, label_set: str):
    """Rows that have a class under ``label_set`` (composite: ``others`` is left out)."""
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {LABEL_SETS}, got {label_set!r}")
    if label_set == "composite":
        dataset = dataset.filter(lambda c: c is not None, input_columns="composite")
    return dataset


def load_training_dataset(args: DeftArguments, split: str | None = None):
    """The Uni-MER split, restricted to the requested subjects (never the excluded ones)."""
    import datasets

    dataset = datasets.load_dataset(args.dataset_name, args.dataset_config,
                                    split=split or args.dataset_train_split)
    keep, drop = set(args.train_subjects or []), set(args.exclude_subjects or [])
    if keep & drop:
        raise ValueError(f"subjects {sorted(keep & drop)} are both train_subjects and exclude_subjects")
    if keep or drop:
        dataset = dataset.filter(lambda s: (not keep or s in keep) and s not in drop,
                                 input_columns="subject")
    dataset = with_label_set(dataset, args.label_set)
    if args.max_train_samples:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"no training rows left in {args.dataset_name} after the subject filters")
    return dataset


def row_emotion(row: dict, label_set: str = "native") -> str | None:
    """The class a row is trained and scored on under ``label_set``."""
    return row["composite"] if label_set == "composite" else row["emotion"]


def dataset_emotions(dataset, label_set: str = "native") -> list[str]:
    """The classes present, in canonical order (facs.EMOTIONS or facs.COMPOSITE_CLASSES)."""
    column = "composite" if label_set == "composite" else "emotion"
    present = set(dataset.unique(column)) - {None}
    order = facs.COMPOSITE_CLASSES if label_set == "composite" else facs.EMOTIONS
    unknown = present - set(order)
    if unknown or None in dataset.unique(column):
        hint = " (a dataset with coarse labels only, like SMIC, needs label_set=composite)"
        raise ValueError(f"rows without a {label_set} emotion or with unknown ones "
                         f"{sorted(map(str, unknown))}{hint}")
    return [e for e in order if e in present]


class DeftDataCollator:
    """Uni-MER rows -> model inputs: the three experts' tensors, the tokenized chat with labels
    on the answer only, the emotion class and the AU targets.

    Rows store face-cropped frames, so the video processor runs with ``face="none"``. Its work
    (decoding, optical flow) is deterministic, so each clip's tensors are computed once and
    kept in ``cache`` (a dict keyed by row id, shareable between the folds of a LOSO run):
    later epochs cost only the model's own forward and backward.
    """

    def __init__(self, processor: DeftProcessor, config: DeftConfig, flow_method: str = "dis",
                 cache: dict | None = None, label_set: str = "native"):
        self.processor = processor
        self.label_set = label_set
        self.label2id = {label: i for i, label in config.id2label.items()}
        self.au_index = [facs.AU_VOCAB.index(au) for au in config.au_labels]
        self.au_position = {au: k for k, au in enumerate(config.au_labels)}
        self.flow_method = flow_method
        self.cache = {} if cache is None else cache

    def clip_tensors(self, row: dict) -> dict:
        from .data.uni_mer import example_frames

        key = (row["id"], self.flow_method)
        if key not in self.cache:
            if "frames" not in row:
                raise KeyError(f"clip {row['id']}: a row without frames whose expert inputs were never "
                               f"computed (call DeftDataCollator.prepare on the full dataset first)")
            analysis = self.processor.image_processor.analyze(
                example_frames(row), onset=row["onset"], apex=row["apex"], offset=row["offset"],
                face="none", flow_method=self.flow_method, measure_noise=False)  # tensors only
            self.cache[key] = {"structure_pixels": analysis.structure, "texture_pixels": analysis.texture,
                               "motion_map": analysis.motion}
        return self.cache[key]

    def prepare(self, dataset):
        """Compute every clip's tensors now and return ``dataset`` without its frames and flow.

        The trainer fetches each row every epoch; decoding its PNG frames and reading its stored
        flow (unused: the processor measures its own) as Python lists took a third of a tiny
        training step. Once every clip is in the cache, rows need neither.
        """
        missing = [i for i, row_id in enumerate(dataset["id"]) if (row_id, self.flow_method) not in self.cache]
        for i in tqdm(missing, desc="expert inputs", disable=not missing):
            self.clip_tensors(dataset[i])
        return dataset.remove_columns([c for c in ("frames", "flow") if c in dataset.column_names])

    def pending_aus(self, texts: list[str], offsets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, L, num AUs): 1 where the answer has yet to name that AU after token t.

        The state at t writes token t + 1, so an AU is pending up to and including the state
        that writes its number: deciding to go on listing, and which AU comes next, needs
        what is left to say, not only what the clip shows.
        """
        pending = torch.zeros(*labels.shape, len(self.au_position))
        for b, text in enumerate(texts):
            position = 0
            for is_answer, run in itertools.groupby((labels[b] != -100).tolist()):
                first, position = position, position + len(list(run))
                if not is_answer:
                    continue
                begin, stop = int(offsets[b, first, 0]), int(offsets[b, position - 1, 1])
                for name, char in facs.evidence_mentions(text[begin:stop]):
                    if name in self.au_position:
                        token = first + int((offsets[b, first:position, 1] <= begin + char).sum())
                        pending[b, first - 1:token, self.au_position[name]] = 1
        return pending

    def __call__(self, rows: list[dict]) -> dict:
        clips = [self.clip_tensors(row) for row in rows]
        texts = [self.processor.expand_placeholders(self.processor.apply_chat_template(row["messages"], tokenize=False))
                 for row in rows]
        tokenizer = self.processor.tokenizer
        encoded = tokenizer(texts, padding=True, return_tensors="pt", return_offsets_mapping=tokenizer.is_fast)
        labels = self.processor.build_labels(encoded["input_ids"], encoded["attention_mask"])
        au_targets = torch.tensor([row["au_targets"] for row in rows], dtype=torch.float32)
        batch = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": labels,
            "emotion_labels": torch.tensor([self.label2id.get(row_emotion(row, self.label_set), -100)
                                            for row in rows]),
            "au_labels": au_targets[:, self.au_index],
        }
        if tokenizer.is_fast:
            batch["pending_au_labels"] = self.pending_aus(texts, encoded["offset_mapping"], labels)
        for key in clips[0]:
            batch[key] = torch.from_numpy(np.stack([c[key] for c in clips]))
        return batch


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
CONFIG_OVERRIDES = ("emotion_loss_weight", "au_loss_weight", "grounding_loss_weight", "disentangle_loss_weight",
                    "expert_dropout")


def build_model_and_processor(args: DeftArguments, model_args, emotions: list[str]):
    """A DEFT model + processor: from a checkpoint (``model_name_or_path``) or fresh from a preset."""
    overrides = {k: getattr(args, k) for k in CONFIG_OVERRIDES if getattr(args, k) is not None}
    if model_args.model_name_or_path:
        path = model_args.model_name_or_path
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **_dtype(model_args))
        for key, value in overrides.items():
            setattr(model.config, key, value)
        return model, AutoProcessor.from_pretrained(path, trust_remote_code=True)

    config_kwargs = {"id2label": dict(enumerate(emotions)), **overrides}
    if args.experts:
        config_kwargs["experts"] = args.experts
    if args.preset == "tiny":
        from .tokenizer_build import build_tokenizer

        config = DeftConfig.tiny(**config_kwargs)
        tokenizer = build_tokenizer()
    elif args.preset == "paper_scale":
        from transformers import AutoTokenizer

        name = args.language_model_name_or_path or DeftConfig.paper_scale().pretrained_towers["text"]
        tokenizer = AutoTokenizer.from_pretrained(name)
        placeholders = {**PLACEHOLDERS, "clip": CLIP_TOKEN}
        tokenizer.add_special_tokens({"additional_special_tokens": list(placeholders.values())})
        # The placeholders' ids are wherever this tokenizer put them (151665-8 for Qwen2.5).
        ids = {f"{e}_token_id": tokenizer.convert_tokens_to_ids(t) for e, t in placeholders.items()}
        config = DeftConfig.paper_scale(**config_kwargs, **ids)
        config.pretrained_towers["text"] = name
        if len(tokenizer) > config.text_config.vocab_size:
            raise ValueError(f"tokenizer {name} has {len(tokenizer)} tokens with the placeholders, more than "
                             f"the language model's vocab_size {config.text_config.vocab_size}")
    else:
        raise ValueError(f"unknown preset {args.preset!r}: tiny | paper_scale")
    if args.load_pretrained_towers:
        model = DeftForConditionalGeneration.from_pretrained_towers(config, **_dtype(model_args))
    else:
        model = DeftForConditionalGeneration._from_config(config, **_dtype(model_args))
    return model, DeftProcessor.from_config(config, tokenizer, flow_method=args.flow_method)


def _dtype(model_args) -> dict:
    dtype = getattr(model_args, "dtype", None)
    return {"dtype": getattr(torch, dtype)} if dtype not in (None, "auto") else {}


def lora_config(model_args):
    """The LoRA of ``model_args`` with DEFT's defaults: LM projections adapted, the rest saved whole."""
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or LM_LORA_TARGETS,
        modules_to_save=model_args.lora_modules_to_save or FULLY_TRAINED, bias="none")


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
def _trainer_class():
    from trl import SFTTrainer

    class DeftSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is DEFT's hybrid objective, each part logged.

        TRL scores tokens with a fused LM head on the backbone's hidden states; that path would
        silently drop the emotion, AU and disentanglement terms. Here the model's own forward
        computes the full loss (LM + aux), so every term reaches the gradients.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Our loss is a per-batch mean: let Trainer divide it by the accumulation steps.
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {**inputs, "use_cache": False}
            outputs = model(**inputs)
            mode = "train" if model.training else "eval"
            for part in ("lm_loss", "grounding_loss", "emotion_loss", "au_loss", "disentangle_loss"):
                value = getattr(outputs, part, None)
                if value is not None:
                    value = self.accelerator.gather_for_metrics(value.detach().reshape(1)).mean()
                    self._metrics[mode][part].append(value.item())
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    return DeftSFTTrainer


def train(args: DeftArguments, training_args, model_args, cache: dict | None = None) -> Path:
    """Train and save; returns the final folder (``<output_dir>/final``).

    ``cache``: the collator's clip-tensor cache, shared by callers that train several times on
    the same clips (LOSO folds, ablations).
    """
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    dataset = load_training_dataset(args)
    model, processor = build_model_and_processor(args, model_args, dataset_emotions(dataset, args.label_set))
    collator = DeftDataCollator(processor, model.config, args.flow_method, cache, args.label_set)
    trainer = _trainer_class()(
        model=model, args=training_args, train_dataset=collator.prepare(dataset), data_collator=collator,
        processing_class=processor, peft_config=lora_config(model_args) if model_args.use_peft else None)
    trainer.train(resume_from_checkpoint=_resume_point(training_args))

    final = Path(training_args.output_dir) / "final"
    if trainer.accelerator.is_main_process:
        save_final(trainer.model, processor, final, args, training_args, len(dataset),
                   trainer.accelerator.num_processes)
    trainer.accelerator.wait_for_everyone()
    return final


def _resume_point(training_args):
    """``resume_from_checkpoint``: a path, True (latest in output_dir), or None."""
    resume = training_args.resume_from_checkpoint
    if resume in ("true", "True", True):
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(training_args.output_dir)
    return resume


def save_final(model, processor, folder: Path, args: DeftArguments, training_args, num_rows: int,
               num_processes: int = 1) -> None:
    """Merge the LoRA, save model + processor (+ remote code) + a filled model card."""
    from .model_card import write_model_card

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    training = {"dataset": args.dataset_name, "rows": num_rows, "experts": model.config.experts,
                "epochs": training_args.num_train_epochs, "max_steps": training_args.max_steps,
                "learning_rate": training_args.learning_rate, "seed": training_args.seed,
                "excluded_subjects": args.exclude_subjects or [], "label_set": args.label_set,
                "num_processes": num_processes}
    (folder / "training_args.json").write_text(json.dumps(training, indent=2, default=str))
    write_model_card(folder, training=training)


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((DeftArguments, SFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, training_args, model_args = parse_args(argv)[:3]
    final = train(args, training_args, model_args)
    logger.info("saved %s", final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
