"""End-to-end latency of the demo on CPU for one 128 px, 30-frame SynthMER clip, stage by stage.

    python benchmarks/bench_demo.py [--checkpoint PATH] [--runs 5] [--out benchmarks/results_demo.md]

The clip is the first SynthMER clip (seed ``demo.EXAMPLE_SEED``, 128 px, 100 fps) with exactly
30 frames, written as lossless VP9 WebM, analysed the way an upload is: face detection on,
onset = first frame, apex estimated. Stages (``DeftDemo.run``, what the user waits for):

* decode: upload checks (size, packet count) + PyAV decode;
* preprocessing: face detection, apex spotting (one fast flow per frame), onset -> apex DIS flow
  + strain + region statistics, the three experts' input tensors;
* experts + heads: one forward pass (experts, projectors, LLM prefill, emotion and AU heads);
* generation: greedy decoding of the explanation (its own prefill, then one step per token),
  AU-grounded: one more pass for each AU the AU head finds that the free answer left out;
* pictures: apex crop and the matplotlib flow / strain figure.

Sub-splits are timed separately on the same clip: face detection alone, apex spotting (analysis
with the apex estimated minus with it given), the onset -> apex flow alone, the experts alone
(``model.model.encode_experts``), and the free answer's one generation pass with its ms per token. The model stages run with the
demo's thread setting (1 torch thread for this tiny model) and again with torch's default, in
the same run, so the ratio is measured, not assumed. Median of ``--runs`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from deft_llm import demo as demo_module
from deft_llm.data.synthmer import SynthConfig, SynthMER
from deft_llm.evaluate import generate_answers
from deft_llm.optical_flow import measure_motion
from deft_llm.processing_deft import detect_face


def make_clip(folder: Path, num_frames: int = 30) -> tuple[Path, int, int]:
    synth = SynthMER(SynthConfig(image_size=128, fps=100, seed=demo_module.EXAMPLE_SEED), 5000)
    for index in range(len(synth)):
        spec = synth.spec(index)
        if spec.num_frames == num_frames:
            path = folder / f"synthmer_{spec.clip}_{num_frames}f.webm"
            demo_module.write_lossless_webm(path, synth[index].frames, synth.config.fps)
            return path, spec.onset, spec.apex
    raise RuntimeError(f"no {num_frames}-frame SynthMER clip found")


def timed(fn, runs: int) -> tuple[float, object]:
    fn()   # warm-up
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the demo's (flag/env/bundled)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=demo_module.MAX_NEW_TOKENS)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_demo.md")))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    engine = demo_module.DeftDemo(args.checkpoint, max_new_tokens=args.max_new_tokens)
    default_threads = torch.get_num_threads()
    folder = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    clip, onset, apex = make_clip(folder)

    def end_to_end(threads):
        engine.num_threads = threads
        results = [engine.run(clip, face="detect") for _ in range(args.runs + 1)][1:]
        stages = {k: statistics.median(r.timings[k] for r in results) for k in demo_module.STAGES}
        total = statistics.median(sum(r.timings.values()) for r in results)
        return stages, total, results[-1]

    single, single_total, result = end_to_end(engine.num_threads)
    default, default_total, _ = end_to_end(None)
    engine.num_threads = 1

    # Sub-splits (same clip, same settings as an upload).
    frames = engine.decode(clip)
    vp = engine.processor.image_processor
    face_s, _ = timed(lambda: detect_face(frames.gray(0)), args.runs)
    estimated_s, analysis = timed(lambda: vp.analyze(frames, face="detect"), args.runs)
    given_s, _ = timed(lambda: vp.analyze(frames, onset=0, apex=analysis.apex, face="detect"), args.runs)
    flow_s, _ = timed(lambda: measure_motion(analysis.onset_face, analysis.apex_face, vp.flow_method),
                      args.runs)
    inputs = engine.model_inputs(analysis)
    pixels = {k: v for k, v in inputs.items() if k in ("structure_pixels", "texture_pixels", "motion_map")}

    def experts():
        with engine._threads(), torch.inference_mode():
            return engine.model.model.encode_experts(**pixels)
    experts_s, _ = timed(experts, args.runs)
    clip_tensors = engine.clip_tensors(analysis)

    def free_answer():
        with engine._threads(), torch.inference_mode():
            return generate_answers(engine.model, engine.processor, [engine.prompt], [clip_tensors],
                                    args.max_new_tokens, stop_strings=())[0]
    free_s, free = timed(free_answer, args.runs)
    free_tokens = max(len(engine.processor.tokenizer(free)["input_ids"]), 1)

    load = os.getloadavg()[0]
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    params = sum(p.numel() for p in engine.model.parameters())
    trained = ""
    record = Path(engine.checkpoint) / "training_args.json"
    if record.exists():   # written by deft_llm.sft: say which training produced these numbers
        info = json.loads(record.read_text())
        steps = info.get("max_steps")
        trained = (f"; trained on {info.get('rows')} rows, "
                   + (f"{steps} steps" if steps and steps > 0 else f"{info.get('epochs')} epochs"))
    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    lines = [
        "# Demo latency (CPU)",
        "",
        f"Machine: 2-core CPU sandbox ({platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, default torch threads {default_threads}; 1-min load average {load:.1f} "
        "at the end: other jobs shared the cores). Date: " + date + ".",
        f"Checkpoint: `{Path(engine.checkpoint).name}` ({params / 1e6:.2f} M parameters{trained}). Clip: "
        f"`{clip.name}`, 128x128, 30 frames, lossless VP9 WebM; face detection on, apex estimated "
        f"(frame {analysis.apex}; SynthMER's label: {apex}). Generation: greedy, up to "
        f"{args.max_new_tokens} new tokens, AU-grounded (a pass more for each AU the free answer leaves "
        f"out), an answer of {result.new_tokens} tokens. Median of {args.runs} "
        "runs after a warm-up; `python benchmarks/bench_demo.py`.",
        "",
        "| stage | ms, 1 torch thread (demo default) | ms, torch default threads |",
        "|---|---:|---:|",
    ]
    for stage in demo_module.STAGES:
        lines.append(f"| {stage} | {ms(single[stage])} | {ms(default[stage])} |")
    lines += [
        f"| **end to end** | **{ms(single_total)}** | **{ms(default_total)}** |",
        "",
        "Inside the stages (1 torch thread):",
        "",
        "| part | ms |",
        "|---|---:|",
        f"| face detection (Haar, onset frame) | {ms(face_s)} |",
        f"| apex spotting (analysis with apex estimated minus given) | {ms(max(estimated_s - given_s, 0.0))} |",
        f"| onset -> apex flow + strain + regions (DIS, 128 px) | {ms(flow_s)} |",
        f"| preprocessing with the apex given | {ms(given_s)} |",
        f"| experts alone (3 towers + projectors) | {ms(experts_s)} |",
        f"| the free answer alone (one generation pass, {free_tokens} tokens) | {ms(free_s)} |",
        f"| generation per token of the free answer | {ms(free_s / free_tokens)} |",
        "",
        f"One torch thread vs torch's default ({default_threads}): end to end "
        f"{default_total / single_total:.1f}x faster with one thread for this "
        f"{params / 1e6:.1f} M-parameter model (thread hand-offs cost more than the tiny matrix "
        "products; the demo picks one thread below "
        f"{demo_module.SINGLE_THREAD_MAX_PARAMS / 1e6:.0f} M parameters).",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
