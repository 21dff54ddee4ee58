"""Uni-MER build benchmark: throughput and peak memory, and precision/recall of kept AUs.

1. Build throughput (clips/s) and peak memory for N SynthMER clips (default 100 and 1,000),
   each size in a fresh subprocess: peak resident memory (``ru_maxrss``, includes the
   interpreter, torch and transformers imported by the processor) and the peak of Python/numpy
   allocations during the build (``tracemalloc``, a second run so its overhead does not touch
   the timing). Target: peak at 1,000 <= 1.2 x peak at 100 (the build streams shard by shard).
2. On SynthMER with annotation errors (``label_noise``), per flow method: precision / recall
   of the AUs kept by the dual constraint against the rendered ground truth, per (AU, region)
   pair (sides respected), next to the labels alone and the flow alone.

    python benchmarks/bench_uni_mer.py                   # defaults as in results_uni_mer.md
    python benchmarks/bench_uni_mer.py --sizes 100 --pr-clips 30 --methods dis
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(n: int, image_size: int, fps: int, trace: bool) -> None:
    """One build in this process; prints a JSON line."""
    import tracemalloc

    from deft_llm.data import BuildConfig, SynthConfig, SynthMER, build_uni_mer

    records = list(SynthMER(SynthConfig(image_size=image_size, fps=fps), n).records())
    config = BuildConfig(image_size=image_size, flow_store_size=min(64, image_size), shard_size=100)
    with tempfile.TemporaryDirectory() as out:
        if trace:
            tracemalloc.start()
        start = time.perf_counter()
        report = build_uni_mer(records, out, config, progress=False)
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
        size = sum(os.path.getsize(os.path.join(out, "data", f)) for f in os.listdir(os.path.join(out, "data")))
    print(json.dumps({"clips": report.stats["clips"], "seconds": seconds,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "traced_peak_mb": traced, "dataset_mb": size / 2**20}))


def run_child(n: int, image_size: int, fps: int, trace: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--image-size", str(image_size), "--fps", str(fps)]
    if trace:
        cmd.append("--trace")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def precision_recall(n: int, methods: list[str], image_size: int, fps: int, label_noise: float) -> list[dict]:
    from deft_llm import facs
    from deft_llm.data import BuildConfig, SynthConfig, SynthMER
    from deft_llm.data.uni_mer import BLINK_AUS, _make_processor, dual_constraint
    from deft_llm.optical_flow import au_evidence

    synth = SynthMER(SynthConfig(image_size=image_size, fps=fps, label_noise=label_noise), n)
    clips = [synth[i] for i in range(n)]

    def pairs(codes):
        return {(c.number, r) for c in codes for r in c.regions}

    rows = []
    variants = [(m, True) for m in methods] + ([("dis", False)] if "dis" in methods else [])
    for method, noise_reference in variants:
        config = BuildConfig(image_size=image_size, flow_method=method, noise_reference=noise_reference)
        processor = _make_processor(config)
        min_px = config.min_px * image_size / 128
        counts = {k: [0, 0, 0] for k in ("labels", "flow", "kept")}   # tp, fp, fn
        start = time.perf_counter()
        for clip in clips:
            spec = clip.spec
            truth = {(a.number, r) for a in spec.aus for r in a.regions}
            labelled = facs.parse_au_string(spec.au_string)
            analysis = processor.analyze(clip.frames, onset=spec.onset, apex=spec.apex,
                                         offset=spec.offset, face="none")
            evidence = au_evidence(analysis.measurement, config.min_snr)
            flow = {(int(e.au[2:]), e.region) for e in evidence
                    if e.size >= min_px and int(e.au[2:]) not in BLINK_AUS}
            kept = {(int(e.au[2:]), e.region) for e in dual_constraint(labelled, evidence, min_px).kept}
            for key, predicted in (("labels", pairs(labelled)), ("flow", flow), ("kept", kept)):
                counts[key][0] += len(predicted & truth)
                counts[key][1] += len(predicted - truth)
                counts[key][2] += len(truth - predicted)
        seconds = time.perf_counter() - start
        floor = "onset -> next frame" if noise_reference else "onset -> apex median"
        row = {"method": method, "noise_floor": floor, "clips": n, "seconds_per_clip": seconds / n}
        for key, (tp, fp, fn) in counts.items():
            row[f"{key}_precision"] = tp / max(tp + fp, 1)
            row[f"{key}_recall"] = tp / max(tp + fn, 1)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--image-size", type=int, default=64, help="SynthMER size for the build runs")
    parser.add_argument("--fps", type=int, default=60)
    parser.add_argument("--pr-clips", type=int, default=100)
    parser.add_argument("--pr-image-size", type=int, default=128)
    parser.add_argument("--label-noise", type=float, default=0.3)
    parser.add_argument("--methods", nargs="+", default=["dis", "tvl1", "farneback"])
    parser.add_argument("--out", default=None, help="also write the markdown here")
    parser.add_argument("--skip-build", action="store_true", help="only the precision/recall part")
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.image_size, args.fps, args.trace)
        return

    lines = []
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    lines += [f"Machine: 2-core CPU sandbox. Date: {date}.", ""]
    lines += [f"### Build throughput and peak memory (SynthMER {args.image_size} px, {args.fps} fps, "
              "DIS, shards of 100 clips)", "",
              "| clips | seconds | clips/s | peak RSS (MB) | peak traced allocations (MB) | dataset (MB) |",
              "|---|---|---|---|---|---|"]
    results = {}
    for n in ([] if args.skip_build else args.sizes):
        timed = run_child(n, args.image_size, args.fps, trace=False)
        traced = run_child(n, args.image_size, args.fps, trace=True)
        results[n] = (timed, traced)
        lines.append(f"| {n} | {timed['seconds']:.1f} | {n / timed['seconds']:.1f} | {timed['maxrss_mb']:.0f} | "
                     f"{traced['traced_peak_mb']:.1f} | {timed['dataset_mb']:.1f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    if len(results) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        rss = results[large][0]["maxrss_mb"] / results[small][0]["maxrss_mb"]
        traced = results[large][1]["traced_peak_mb"] / results[small][1]["traced_peak_mb"]
        lines += ["", f"Peak memory ratio {large} / {small} clips: RSS {rss:.2f}x, traced allocations "
                  f"{traced:.2f}x (target <= 1.2x)."]
    lines += ["", f"### Kept AUs vs SynthMER ground truth ({args.pr_clips} clips, {args.pr_image_size} px, "
              f"{args.fps} fps, medium nuisances, label noise {args.label_noise}; per (AU, region) pair)", "",
              "| flow method | noise floor from | s/clip | labels P / R | flow alone P / R | kept (dual constraint) P / R |",
              "|---|---|---|---|---|---|"]
    for row in precision_recall(args.pr_clips, args.methods, args.pr_image_size, args.fps, args.label_noise):
        lines.append(f"| {row['method']} | {row['noise_floor']} | {row['seconds_per_clip']:.3f} | "
                     f"{row['labels_precision']:.3f} / {row['labels_recall']:.3f} | "
                     f"{row['flow_precision']:.3f} / {row['flow_recall']:.3f} | "
                     f"{row['kept_precision']:.3f} / {row['kept_recall']:.3f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("# Uni-MER benchmark\n\n" + text + "\n")


if __name__ == "__main__":
    main()
