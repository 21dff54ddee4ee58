"""GPU check: bf16 training and generation of a paper-scale DEFT-LLM (random weights, offline).

    python benchmarks/bench_gpu.py [--llm 7b] [--stack-llm 1.5b] [--steps 20] [--out runs/bench-gpu]

Paper-scale towers (SigLIP-B at 224 px, VideoMAE-B on 16 frames at 224 px, ViT-S at 224 px) and
a Qwen2.5-shaped language model, all randomly initialised (nothing is downloaded); the
tokenizer is the offline one of ``tokenizer_build`` with its placeholder ids. Data: a SynthMER
Uni-MER built on the spot. Two parts, each timed and reported on its own:

1. ``scale`` (--llm, default 7B): the model built on the GPU in bf16, the recipe's LoRA (r 64,
   experts/projectors/heads trained fully), activation checkpointing, AdamW; median step time,
   samples/s and peak memory of bf16 training, then ``generate`` latency (prefill + decode).
2. ``stack`` (--stack-llm, default 1.5B, smaller so that saving and reloading stay quick): the
   path users run. An initial checkpoint is saved, ``deft_llm.sft.train`` (TRL SFTTrainer, LoRA,
   bf16, activation checkpointing) trains it for --steps steps, merges and saves; the final folder
   is reloaded with ``AutoModelForImageTextToText`` in bf16 and answers held-out clips.

Prints a markdown table (for benchmarks/results_gpu.md) and writes results.json under --out.
"""

import argparse
import json
import platform
import statistics
import time
import traceback
from datetime import date
from pathlib import Path

import torch
from transformers import Qwen2Config

from deft_llm import DeftConfig, DeftForConditionalGeneration, DeftProcessor
from deft_llm.sft import dataset_emotions
from deft_llm.tokenizer_build import build_tokenizer

# Qwen2.5 shapes (hidden, intermediate, layers, heads, kv heads); vocab 152064 for all but tiny.
LLM_SHAPES = {"7b": (3584, 18944, 28, 28, 4), "1.5b": (1536, 8960, 28, 12, 2),
              "0.5b": (896, 4864, 24, 14, 2), "tiny": (64, 128, 2, 4, 2)}


def paper_config(llm: str, emotions: list[str], small_towers: bool = False) -> DeftConfig:
    """Paper-scale DEFT with a ``llm``-shaped Qwen2.5 and the offline tokenizer's ids (4 to 7)."""
    hidden, intermediate, layers, heads, kv_heads = LLM_SHAPES[llm]
    text = Qwen2Config(vocab_size=152064 if llm != "tiny" else 512, hidden_size=hidden,
                       intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=3, pad_token_id=0)
    kwargs = {}
    if small_towers:  # a CPU dry run of this script: the towers' depth cut to one layer
        base = DeftConfig.paper_scale()
        for key in ("structure_config", "texture_config", "motion_config"):
            sub = getattr(base, key)
            sub.num_hidden_layers = 1
            kwargs[key] = sub
    return DeftConfig.paper_scale(text_config=text, structure_token_id=4, texture_token_id=5,
                                  motion_token_id=6, clip_token_id=7, id2label=dict(enumerate(emotions)),
                                  **kwargs)


def build_data(out: Path, clips: int) -> tuple[Path, list]:
    import datasets

    from deft_llm.data.synthmer import SynthConfig, SynthMER
    from deft_llm.data.uni_mer import build_uni_mer

    folder = out / "uni-mer"
    if not (folder / "README.md").exists():
        build_uni_mer(SynthMER(SynthConfig(n_subjects=4, seed=0), clips).records(), folder, progress=False)
    rows = datasets.load_dataset(str(folder), split="train")
    return folder, rows


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def cuda_seconds(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def count(module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


# ---------------------------------------------------------------------------------------------
def scale_part(cli, rows, device) -> dict:
    """bf16 LoRA training steps and generation of the --llm model, built on the GPU."""
    from peft import get_peft_model

    from deft_llm.sft import DeftDataCollator, lora_config

    config = paper_config(cli.llm, dataset_emotions(rows), small_towers=cli.dry_run)
    processor = DeftProcessor.from_config(config, build_tokenizer(), flow_method="dis")
    t0 = time.perf_counter()
    with torch.device(device):
        model = DeftForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    init_s = time.perf_counter() - t0
    total = count(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = argparse.Namespace(lora_r=64, lora_alpha=128, lora_dropout=0.05, lora_target_modules=None,
                              lora_modules_to_save=None)
    model = get_peft_model(model, lora_config(lora))
    trainable = count(model, trainable=True)
    model.train()

    collator = DeftDataCollator(processor, config, "dis")
    batches = [collator([rows[(i * cli.batch_size + j) % len(rows)] for j in range(cli.batch_size)])
               for i in range(4)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    seq_len = batches[0]["input_ids"].shape[1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    losses = []

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    for i in range(3):  # warm-up (kernels, allocator)
        step(batches[i % 4])
    reset_peak()
    times = [cuda_seconds(lambda b=batches[i % 4]: step(b)) for i in range(cli.steps)]
    train_peak = peak_gib()
    step_s = statistics.median(times)

    model.eval()
    processor.tokenizer.padding_side = "left"
    prompt = processor.apply_chat_template(rows[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    generation = {}
    for batch_size in (1, cli.batch_size):
        encoded = processor.tokenizer([processor.expand_placeholders(prompt)] * batch_size, return_tensors="pt")
        clip = {k: v[:1].expand(batch_size, *v.shape[1:]) for k, v in batches[0].items()
                if k in ("structure_pixels", "texture_pixels", "motion_map")}
        inputs = {**{k: v.to(device) for k, v in encoded.items()}, **clip}
        with torch.no_grad():
            def generate(n):
                return lambda: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            generate(cli.new_tokens)()  # warm-up
            reset_peak()
            first = statistics.median(cuda_seconds(generate(1)) for _ in range(3))  # prefill + 1 token
            full = statistics.median(cuda_seconds(generate(cli.new_tokens)) for _ in range(3))
        generation[batch_size] = {
            "prompt_tokens": encoded["input_ids"].shape[1], "first_token_ms": round(first * 1e3, 1),
            "generate_s": round(full, 3), "new_tokens": cli.new_tokens,
            "decode_tokens_per_s_per_row": round((cli.new_tokens - 1) / max(full - first, 1e-9), 1),
            "peak_gib": peak_gib()}
    return {"llm": cli.llm, "params_total": total, "params_trainable": trainable, "init_s": round(init_s, 1),
            "batch_size": cli.batch_size, "seq_len": seq_len, "steps": cli.steps,
            "step_s_median": round(step_s, 3), "step_s_min": round(min(times), 3),
            "samples_per_s": round(cli.batch_size / step_s, 2),
            "train_peak_gib": train_peak, "loss_first": round(losses[0], 3),
            "loss_last": round(losses[-1], 3), "generation": generation}


# ---------------------------------------------------------------------------------------------
def stack_part(cli, data_folder: Path, rows, device, out: Path) -> dict:
    """deft_llm.sft.train from a saved paper-scale checkpoint, then Auto-load and answer."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from deft_llm import facs
    from deft_llm.evaluate import predict
    from deft_llm.sft import DeftDataCollator, parse_args, train

    init = out / "stack-init"
    t0 = time.perf_counter()
    config = paper_config(cli.stack_llm, dataset_emotions(rows), small_towers=cli.dry_run)
    model = DeftForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(init)
    DeftProcessor.from_config(config, build_tokenizer(), flow_method="dis").save_pretrained(init)
    del model
    init_s = time.perf_counter() - t0

    recipe = Path(__file__).resolve().parent.parent / "configs" / "sft_paper_scale.yaml"
    subjects = sorted(set(rows["subject"]))
    flags = ["--config", str(recipe), "--dataset_name", str(data_folder), "--model_name_or_path", str(init),
             "--exclude_subjects", subjects[-1], "--flow_method", "dis", "--max_steps", str(cli.steps),
             "--output_dir", str(out / "stack-run"), "--save_strategy", "steps", "--save_steps", str(cli.steps),
             "--report_to", "none",
             "--logging_steps", "5", "--gradient_accumulation_steps", "1",
             "--per_device_train_batch_size", str(cli.batch_size), "--dataloader_num_workers", "0"]
    if device.type == "cpu":
        flags += ["--bf16", "false", "--use_cpu", "true"]
    args, training_args, model_args = parse_args(flags)[:3]
    reset_peak()
    t0 = time.perf_counter()
    final = train(args, training_args, model_args)
    train_s = time.perf_counter() - t0
    train_peak = peak_gib()
    state = out / "stack-run" / f"checkpoint-{cli.steps}" / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"]

    t0 = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(final, trust_remote_code=True, dtype=torch.bfloat16)
    model.to(device)
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    load_s = time.perf_counter() - t0
    held_out = rows.filter(lambda r: r["subject"] == subjects[-1]).select(range(cli.batch_size))
    collator = DeftDataCollator(processor, model.config, "dis")
    t0 = time.perf_counter()
    predictions = predict(model, processor, held_out, collator, batch_size=cli.batch_size, max_new_tokens=32)
    predict_s = time.perf_counter() - t0
    return {"llm": cli.stack_llm, "steps": cli.steps, "init_and_save_s": round(init_s, 1),
            "train_and_save_s": round(train_s, 1), "train_peak_gib": train_peak,
            "losses": [round(h["loss"], 3) for h in history if "loss" in h],
            "final_dtype": str(model.dtype), "load_s": round(load_s, 1), "predict_s": round(predict_s, 2),
            "head_emotions": [p["head_emotion"] for p in predictions],
            "head_emotions_known": all(p["head_emotion"] in facs.EMOTIONS for p in predictions),
            "final_files": sorted(p.name for p in Path(final).iterdir())}


# ---------------------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="7b", choices=list(LLM_SHAPES))
    parser.add_argument("--stack-llm", default="1.5b", choices=list(LLM_SHAPES))
    parser.add_argument("--parts", nargs="*", default=["scale", "stack"], choices=["scale", "stack"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--out", default="runs/bench-gpu")
    parser.add_argument("--dry-run", action="store_true", help="CPU check of this script: 1-layer towers")
    cli = parser.parse_args()
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    t0 = time.perf_counter()
    data_folder, rows = build_data(out, cli.clips)
    results = {"meta": {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.machine(),
                        "torch": torch.__version__, "date": str(date.today()),
                        "clips": len(rows), "data_s": round(time.perf_counter() - t0, 1)}}
    for part in cli.parts:
        print(f"== {part}", flush=True)
        try:
            if part == "scale":
                results["scale"] = scale_part(cli, rows, device)
            else:
                results["stack"] = stack_part(cli, data_folder, rows, device, out)
        except Exception as error:  # report the other part anyway
            traceback.print_exc()
            results[part] = {"error": f"{type(error).__name__}: {error}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results[part], indent=1), flush=True)
    print_table(results)


def print_table(results: dict) -> None:
    meta = results["meta"]
    print(f"\n{meta['device']}, torch {meta['torch']}, {meta['date']}; SynthMER {meta['clips']} clips\n")
    scale = results.get("scale", {})
    if "step_s_median" in scale:
        print(f"| paper-scale DEFT, Qwen2.5-{scale['llm']} shape, bf16 + LoRA r64 | value |\n|---|---|")
        print(f"| parameters (trainable) | {scale['params_total'] / 1e9:.2f} B ({scale['params_trainable'] / 1e6:.0f} M) |")
        print(f"| train step, batch {scale['batch_size']} x {scale['seq_len']} tokens (median of "
              f"{scale['steps']}) | {scale['step_s_median'] * 1e3:.0f} ms ({scale['samples_per_s']} samples/s) |")
        print(f"| peak GPU memory, training | {scale['train_peak_gib']} GiB |")
        for b, g in scale["generation"].items():
            print(f"| generate, batch {b}: first token / {g['new_tokens']} new tokens | {g['first_token_ms']} ms / "
                  f"{g['generate_s']} s ({g['decode_tokens_per_s_per_row']} tok/s per row), peak {g['peak_gib']} GiB |")
    stack = results.get("stack", {})
    if "train_and_save_s" in stack:
        print(f"\n| sft stack, Qwen2.5-{stack['llm']} shape | value |\n|---|---|")
        print(f"| {stack['steps']} SFTTrainer steps + LoRA merge + save | {stack['train_and_save_s']} s, "
              f"peak {stack['train_peak_gib']} GiB, loss {stack['losses'][:1]} -> {stack['losses'][-1:]} |")
        print(f"| Auto-load bf16 ({stack['final_dtype']}) / predict {len(stack['head_emotions'])} clips | "
              f"{stack['load_s']} s / {stack['predict_s']} s |")
    for part in ("scale", "stack"):
        if "error" in results.get(part, {}):
            print(f"\n{part} FAILED: {results[part]['error']}")


if __name__ == "__main__":
    main()
