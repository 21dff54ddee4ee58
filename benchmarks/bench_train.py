"""Training speed and memory of the tiny recipe on CPU: samples/s per epoch and peak RSS.

    python benchmarks/bench_train.py [--clips 64] [--epochs 3] [--threads 2] [--out runs/bench-train]

Builds a SynthMER Uni-MER (or reuses --dataset), then runs ``deft_llm.sft.train`` with
configs/sft_synth_tiny.yaml exactly as users do, timing every epoch with a trainer callback.
Each clip's decoding and optical flow run once, before the first epoch (the collator's
``prepare``), and are timed apart; the epochs are the model's own forward and backward. Peak memory is the process's
peak resident set size (RSS), before training (imports, dataset) and at the end.
"""

import argparse
import platform
import resource
import time
from datetime import date
from pathlib import Path

import torch
from transformers import TrainerCallback

from deft_llm.sft import parse_args, train

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "sft_synth_tiny.yaml"


class EpochTimer(TrainerCallback):
    def __init__(self):
        self.seconds, self._start = [], None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="an existing Uni-MER folder (default: build one)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-train")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    out = Path(cli.out)
    dataset = cli.dataset
    if not dataset:
        from deft_llm.data.synthmer import SynthConfig, SynthMER
        from deft_llm.data.uni_mer import build_uni_mer

        dataset = out / "uni-mer"
        if not (dataset / "README.md").exists():
            build_uni_mer(SynthMER(SynthConfig(n_subjects=8, seed=0), cli.clips).records(), dataset,
                          progress=False)
    args, training, model_args = parse_args(
        ["--config", str(RECIPE), "--dataset_name", str(dataset), "--output_dir", str(out / "run"),
         "--num_train_epochs", str(cli.epochs), "--save_strategy", "no", "--disable_tqdm", "true"])[:3]
    rss_before = peak_rss_mb()

    timer = EpochTimer()
    import deft_llm.sft as sft

    trainer_class = sft._trainer_class()

    class TimedTrainer(trainer_class):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(timer)

    sft._trainer_class = lambda: TimedTrainer
    prepare, prepare_seconds = sft.DeftDataCollator.prepare, []

    def timed_prepare(self, dataset):
        t0 = time.perf_counter()
        light = prepare(self, dataset)
        prepare_seconds.append(time.perf_counter() - t0)
        return light

    sft.DeftDataCollator.prepare = timed_prepare
    start = time.perf_counter()
    train(args, training, model_args)
    total = time.perf_counter() - start
    rows = len(__import__("datasets").load_dataset(str(dataset), split="train"))

    print(f"\n{platform.machine()} CPU, {cli.threads} torch threads, torch {torch.__version__}, {date.today()}; "
          f"tiny recipe (batch {training.per_device_train_batch_size}), SynthMER Uni-MER {rows} clips\n")
    print("| epoch | seconds | samples/s |")
    print("|---|---|---|")
    print(f"| before the first (decode + optical flow of each clip, once) | {sum(prepare_seconds):.1f} | "
          f"{rows / sum(prepare_seconds):.1f} |")
    for i, seconds in enumerate(timer.seconds, 1):
        print(f"| {i} | {seconds:.1f} | {rows / seconds:.1f} |")
    print(f"\npeak RSS: {rss_before:.0f} MB before training, {peak_rss_mb():.0f} MB at the end; "
          f"whole run incl. model build and final save: {total:.1f} s")


if __name__ == "__main__":
    main()
