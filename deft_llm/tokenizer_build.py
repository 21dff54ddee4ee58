"""Build DEFT-LLM's tiny tokenizer offline, and the default processor around it.

The embedded default model needs a tokenizer on a fresh machine with no downloads, so one is
trained here in about a second: byte-level BPE (any text round-trips exactly, byte by byte)
with at most 512 tokens, trained on text made from the shared FACS vocabulary
(:mod:`facs`: regions, AU names and directions, emotions) in the Uni-MER answer format, plus
ChatML role words and prompt phrasing. Special tokens have FIXED ids, which the model config
relies on:

    0 <|pad|>  1 <|endoftext|>  2 <|im_start|>  3 <|im_end|>
    4 <|structure|>  5 <|texture|>  6 <|motion|>  7 <|clip|>

eos is ``<|im_end|>`` (end of an assistant turn), pad is ``<|pad|>``. Training is
deterministic: the corpus is generated in a fixed order.

This module uses the ``tokenizers`` library and is not remote code (``save_pretrained`` copies
the tokenizer files, not this builder).
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from . import facs
from .processing_deft import CHAT_TEMPLATE, DeftProcessor, DeftVideoProcessor

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                  "<|structure|>", "<|texture|>", "<|motion|>", "<|clip|>"]
MAX_VOCAB_SIZE = 512

PROMPTS = [
    "Which micro-expression does this clip show? Describe the facial motion first.",
    "What emotion is this micro-expression? Explain which facial muscles moved.",
    "Analyse the facial motion from onset to apex and name the emotion.",
    "You are an expert in facial action coding. Describe the Action Units and the emotion.",
]


def training_corpus() -> list[str]:
    """Text in the shapes the model reads and writes, from the shared vocabulary."""
    lines = list(PROMPTS)
    lines += ["system", "user", "assistant", "Reason: ", "Motion evidence: ", "Emotion: "]
    lines += [f"AU{au.number} {au.name}: {', '.join(facs.region_label(r) for r in au.regions)}, "
              f"{au.motion_text}." for au in facs.ACTION_UNITS.values()]
    lines += [f"The {facs.region_label(r)} moved." for r in facs.REGIONS]
    sizes = [0.12, 0.25, 0.38, 0.47, 0.5, 0.62, 0.75, 0.86, 0.93, 1.04, 1.1, 1.26, 1.58, 2.31, 3.07, 4.9]
    size_cycle = itertools.cycle(sizes)
    pairs = [(au, r) for au in facs.ACTION_UNITS.values() for r in au.regions]
    for i, emotion in enumerate(facs.EMOTIONS):
        for j in range(0, len(pairs), 3):
            chosen = pairs[j:j + 1 + (i + j) % 3]
            evidence = [facs.AUEvidence(f"AU{au.number}", r, au.motion_text, next(size_cycle))
                        for au, r in chosen]
            names = " and ".join(f"AU{au.number} ({au.name})" for au, _ in chosen)
            reason = f"{names} point to {emotion}; the motion is small and brief, as in a micro-expression."
            lines.append(facs.format_answer(emotion, evidence, reason))
        lines.append(facs.format_answer(emotion, []))
    lines += [f"{c}" for c in facs.COMPOSITE_CLASSES]
    lines += [" ".join(str(n) for n in range(k, k + 20)) for k in range(0, 200, 20)]
    return lines


def build_tokenizer(vocab_size: int = MAX_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer and wrap it for transformers (chat template set)."""
    if not len(SPECIAL_TOKENS) + 256 <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be in {len(SPECIAL_TOKENS) + 256}..{MAX_VOCAB_SIZE}, got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = training_corpus()
    backend.train_from_iterator(corpus * 4, trainer=trainer)
    for expected, token in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(token) != expected:
            raise RuntimeError(f"special token {token} got id {backend.token_to_id(token)}, expected {expected}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|im_end|>",
        extra_special_tokens=SPECIAL_TOKENS[4:], chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False, padding_side="left", model_max_length=4096)


def build_processor(config=None, tokenizer=None, **video_kwargs) -> DeftProcessor:
    """The default processor: from a DeftConfig when given, else the tiny defaults."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    if config is not None:
        return DeftProcessor.from_config(config, tokenizer, **video_kwargs)
    return DeftProcessor(DeftVideoProcessor(**video_kwargs), tokenizer)
