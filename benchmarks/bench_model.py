"""Cost of the experts: forward+backward of tiny DEFT vs its language model alone, same tokens.

    python benchmarks/bench_model.py [--batch-size 8] [--seq-len 128] [--repeats 20]

Both models see the same (batch, seq_len) token ids; DEFT also encodes one clip per row with
its three experts. The two are timed interleaved in one run, so machine noise hits both alike;
the table reports medians and their ratio (target <= 2), then parameters per part.
"""

import argparse
import platform
import statistics
import time
from datetime import date

import torch
from transformers import AutoModelForCausalLM

from deft_llm import DeftConfig, DeftForConditionalGeneration


def deft_batch(config: DeftConfig, batch_size: int, seq_len: int) -> dict:
    token_ids = config.expert_token_ids()
    placeholders = [token_ids[n] for n, k in config.expert_num_tokens().items() for _ in range(k)]
    placeholders.append(config.clip_token_id)
    text = torch.randint(10, config.text_config.vocab_size, (batch_size, seq_len - len(placeholders)))
    input_ids = torch.cat([torch.tensor(placeholders).expand(batch_size, -1), text], dim=1)
    s, t, m = config.structure_config, config.texture_config, config.motion_config
    return {
        "input_ids": input_ids,
        "labels": input_ids.clone(),
        "structure_pixels": torch.randn(batch_size, 3, s.image_size, s.image_size),
        "texture_pixels": torch.randn(batch_size, t.num_frames, 3, t.image_size, t.image_size),
        "motion_map": torch.randn(batch_size, 3, m.image_size, m.image_size),
        "emotion_labels": torch.randint(0, config.num_labels, (batch_size,)),
        "au_labels": torch.randint(0, 2, (batch_size, len(config.au_labels))).float(),
    }


def step_seconds(model, batch) -> float:
    start = time.perf_counter()
    model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = DeftConfig()
    deft = DeftForConditionalGeneration(config).train()
    lm = AutoModelForCausalLM.from_config(config.text_config).train()
    batch = deft_batch(config, args.batch_size, args.seq_len)
    lm_batch = {"input_ids": batch["input_ids"], "labels": batch["labels"]}

    for _ in range(3):  # warm-up
        step_seconds(deft, batch), step_seconds(lm, lm_batch)
    deft_times, lm_times = [], []
    for _ in range(args.repeats):
        deft_times.append(step_seconds(deft, batch))
        lm_times.append(step_seconds(lm, lm_batch))
    deft_s, lm_s = statistics.median(deft_times), statistics.median(lm_times)

    print(f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{date.today()}; batch {args.batch_size} x {args.seq_len} tokens, median of {args.repeats}\n")
    print("| model | forward+backward (ms) | ratio to LM alone |")
    print("|---|---|---|")
    print(f"| tiny DEFT (3 experts + LM) | {deft_s * 1e3:.1f} | {deft_s / lm_s:.2f} (target <= 2) |")
    print(f"| its language model alone | {lm_s * 1e3:.1f} | 1.00 |\n")

    parts = {f"{name} expert (tower + projector)": expert for name, expert in deft.model.experts.items()}
    parts["language model"] = deft.model.language_model
    if not config.tie_word_embeddings:
        parts["LM head"] = deft.lm_head
    parts["heads + expert-type embedding"] = [deft.model.emotion_head, deft.model.au_head,
                                              deft.model.expert_type_embedding]
    parts["clip token readout"] = [m for m in (deft.model.clip_reduce, deft.model.clip_projector) if m is not None]
    parts["grounding head (training only)"] = [deft.model.grounding_head]
    print("| part | parameters |")
    print("|---|---|")
    for name, part in parts.items():
        n = sum(count(m) for m in part) if isinstance(part, list) else count(part)
        print(f"| {name} | {n:,} |")
    print(f"| total | {count(deft):,} |")


if __name__ == "__main__":
    main()
