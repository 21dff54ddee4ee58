"""LOSO results on SynthMER: tiny DEFT, each one-expert-off ablation, and the STSTNet baseline.

    python benchmarks/bench_loso.py --clips 320 --subjects 8 [--folds N] [--out runs/bench-loso]

Builds a SynthMER Uni-MER (or reuses --dataset), then for every variant trains one model per
left-out subject with configs/sft_synth_tiny.yaml (same folds, seeds and schedule), pools the
predictions and scores them: the answers AU-grounded (the evidence names every AU the AU head
found) and, in the same run, free (``--free``: free only). Clip tensors (decode + optical flow)
are computed once and shared by all variants; ``--reuse-folds`` predicts again with the fold
models an earlier run saved under --out, without training. Prints a markdown table and writes
results.json under --out. Runs made apart (per variant, per --fold-subjects part, per --seed)
are pooled with --merge, which also pairs each row with the first (bootstrap over clips, each
with all its seeds).
"""

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import datasets

from deft_llm import facs
from deft_llm.baselines import ststnet_loso
from deft_llm.evaluate import EvalArguments, run_loso, score
from deft_llm.metrics import paired_uf1_difference
from deft_llm.sft import DeftDataCollator, build_model_and_processor, parse_args

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "sft_synth_tiny.yaml"
VARIANTS = {"DEFT-tiny (3 experts)": None,
            "without structure": ["texture", "motion"],
            "without texture": ["structure", "motion"],
            "without motion": ["structure", "texture"]}


def build_dataset(out: Path, clips: int, subjects: int, seed: int) -> Path:
    from deft_llm.data.synthmer import SynthConfig, SynthMER
    from deft_llm.data.uni_mer import build_uni_mer

    folder = out / "uni-mer"
    build_uni_mer(SynthMER(SynthConfig(n_subjects=subjects, seed=seed), clips).records(), folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="an existing Uni-MER folder (default: build one)")
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--folds", type=int, default=None, help="first N subjects only")
    parser.add_argument("--fold-subjects", nargs="+", help="only these subjects' folds: split a variant over "
                        "processes or machines, then --merge their results.json to pool the folds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-loso")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of the variants")
    parser.add_argument("--no-baseline", action="store_true", help="skip STSTNet")
    parser.add_argument("--baseline-epochs", type=int, default=100)
    parser.add_argument("--label", default="", help="appended to each result's name, e.g. '20 epochs'")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                        help="only merge the results.json of separate runs (one per variant, fold part "
                             "or --seed, run in parallel) into one table and --out/results.json")
    parser.add_argument("--free", action="store_true", help="free answers only (no AU-grounded decoding)")
    parser.add_argument("--reuse-folds", action="store_true", help="predict with each fold's model saved "
                        "under --out by an earlier run instead of training it again (the time column is "
                        "then prediction time)")
    parser.add_argument("--sft", nargs=argparse.REMAINDER, default=[], help="extra sft flags")
    cli = parser.parse_args()
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    if cli.merge:
        return merge(cli.merge, out)
    start = time.perf_counter()
    dataset_path = Path(cli.dataset) if cli.dataset else build_dataset(out, cli.clips, cli.subjects, cli.seed)
    build_seconds = time.perf_counter() - start

    results, cache = {}, {}
    for name in cli.variants:
        experts = VARIANTS[name]
        argv = ["--config", str(RECIPE), "--dataset_name", str(dataset_path), "--save_strategy", "no",
                "--seed", str(cli.seed), *cli.sft]
        if experts:
            argv += ["--experts", *experts]
        args, training, model_args = parse_args(argv)[:3]
        report_dir = (out / name.split(" (")[0].replace(" ", "-")).resolve()
        eval_args = EvalArguments(report_dir=str(report_dir), folds=cli.folds, subjects=cli.fold_subjects,
                                  au_grounded=not cli.free, reuse_folds=cli.reuse_folds)
        t0 = time.perf_counter()
        report = run_loso(args, training, model_args, eval_args, cache=cache)
        results[f"{name}, {cli.label}" if cli.label else name] = {
            **report["metrics"], "seconds": round(time.perf_counter() - t0, 1), "folds": report["folds"],
            "report_dir": str(report_dir), "au_grounded": not cli.free}
        print(name, json.dumps({k: round(v["uf1"], 3) for k, v in report["metrics"].items() if "uf1" in v}),
              flush=True)

    rows = datasets.load_dataset(str(dataset_path), split="train")
    classes = [e for e in facs.EMOTIONS if e in set(rows["emotion"])]
    if not cli.no_baseline and not cli.fold_subjects:  # the flow-only baseline on the same folds and the same motion maps
        results["STSTNet (flow only)"] = baseline(rows, dataset_path, classes, cache, cli, out / "STSTNet")
    write_table(results, rows, classes, cli, out, build_seconds, dataset_path)


def baseline(rows, dataset_path, classes, cache, cli, report_dir: Path) -> dict:
    """STSTNet on the same folds, fed the same motion maps (the collator's cached clip tensors).
    Its predictions are saved like a variant's, so runs of it merge, pool and pair too."""
    args, _, model_args = parse_args(["--config", str(RECIPE), "--dataset_name", str(dataset_path)])[:3]
    model, processor = build_model_and_processor(args, model_args, classes)
    collator = DeftDataCollator(processor, model.config, args.flow_method, cache)
    t0 = time.perf_counter()
    predictions, _ = ststnet_loso(rows, collator.clip_tensors, classes, folds=cli.folds,
                                  epochs=cli.baseline_epochs, seed=cli.seed)
    seconds = round(time.perf_counter() - t0, 1)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return {**score(predictions, classes), "seconds": seconds, "folds": sorted({p["subject"] for p in predictions}),
            "report_dir": str(report_dir.resolve())}


def machine() -> str:
    import os

    import torch

    cores = f"{os.cpu_count()} cores"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} + {platform.machine()} CPU, {cores}"
    return f"{platform.machine()} CPU, {cores}"


def merge(paths: list[str], out: Path) -> None:
    """One table from runs made apart (e.g. in parallel, or on different machines). The runs must
    share clips, subjects, classes and folds; the dataset folder may differ in path only (each
    machine builds the same seeded SynthMER itself). Rows keep their own machine. A variant run in
    parts (``--fold-subjects``) is pooled: its folds' predictions are scored together. A variant
    run with several ``--seed``s is pooled over them too: one row per clip and seed, every seed
    on the same folds, and ``per_seed`` keeps each seed's own scores."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    meta = dict(runs[0]["meta"])
    for run in runs[1:]:
        for key in ("clips", "subjects", "classes", "folds"):
            if run["meta"].get(key) != meta.get(key):
                raise ValueError(f"cannot merge runs with different {key}: {run['meta'].get(key)} vs {meta.get(key)}")
    parts = {}
    for run in runs:
        for name, r in run["results"].items():
            parts.setdefault(name, []).append({**r, "machine": run["meta"]["machine"], "seed": run["meta"]["seed"]})
    results = {name: pool_seeds(name, p, meta["classes"]) for name, p in parts.items()}
    meta["seed"] = sorted({run["meta"]["seed"] for run in runs})
    meta["machine"] = "; ".join(dict.fromkeys(run["meta"]["machine"] for run in runs))
    meta["dataset"] = list(dict.fromkeys(run["meta"]["dataset"] for run in runs))
    print_table(meta, results)
    compare_to_first(results, meta["classes"])
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))


def predictions_of(result: dict) -> list[dict]:
    """The saved predictions behind a result row (none for a run that saved none, e.g. STSTNet
    before it saved its own), each with the training seed that made it."""
    predictions = []
    folders = result.get("report_dirs", [result["report_dir"]] if "report_dir" in result else [])
    for folder, seed in zip(folders, result.get("report_seeds", [result.get("seed", 0)] * len(folders))):
        lines = (Path(folder) / "predictions.jsonl").read_text().splitlines()
        predictions += [{**json.loads(line), "seed": seed} for line in lines if line.strip()]
    return predictions


def pool_seeds(name: str, parts: list[dict], classes: list[str]) -> dict:
    """One variant's runs: folds run apart are pooled per seed, then the seeds are pooled."""
    if {part.get("au_grounded") for part in parts} >= {True, False}:
        raise ValueError(f"{name}: cannot pool AU-grounded runs with --free ones")
    seeds = sorted({part["seed"] for part in parts})
    per_seed = {seed: pool(name, [p for p in parts if p["seed"] == seed], classes) for seed in seeds}
    if len(seeds) == 1:
        return per_seed[seeds[0]]
    if missing := [seed for seed, r in per_seed.items() if "report_dirs" not in r]:
        raise ValueError(f"{name}: seed {', '.join(map(str, missing))} saved no predictions, so its seeds "
                         "cannot be pooled; rerun it")
    folds = {seed: sorted(r.get("folds") or []) for seed, r in per_seed.items()}
    if len({json.dumps(f) for f in folds.values()}) > 1:
        raise ValueError(f"{name}: every seed must cover the same folds to be pooled, got {folds}")
    pooled = {"report_dirs": [d for r in per_seed.values() for d in r["report_dirs"]],
              "report_seeds": [s for s, r in per_seed.items() for _ in r["report_dirs"]]}
    return {**score(predictions_of(pooled), classes), "seconds": sum(r["seconds"] for r in per_seed.values()),
            "folds": folds[seeds[0]], "machine": "; ".join(dict.fromkeys(r["machine"] for r in per_seed.values())),
            "seeds": seeds, **pooled,
            "per_seed": {str(s): seed_summary(score(predictions_of(r), classes)) for s, r in per_seed.items()}}


def seed_summary(scores: dict) -> dict:
    def value(key, field):
        return scores[key][field] if key in scores else None

    return {"text_uf1": value("text_native", "uf1"), "head_uf1": value("head_native", "uf1"),
            "au_f1_vs_labelled": value("aus_vs_labelled", "f1"),
            "free_text_uf1": value("free_text_native", "uf1"),
            "free_text_au_f1_vs_labelled": value("free_text_aus_vs_labelled", "f1")}


def pool(name: str, parts: list[dict], classes: list[str]) -> dict:
    """One variant's folds at one seed, run apart, scored as one LOSO run (pooled predictions)."""
    if len(parts) == 1:
        part = parts[0]
        return {**part, "report_dirs": [part["report_dir"]]} if "report_dir" in part else part
    folds = [s for part in parts for s in part.get("folds", [])]
    if len(folds) != len(set(folds)) or any("report_dir" not in part for part in parts):
        raise ValueError(f"{name}: cannot pool parts that share folds or saved no predictions: "
                         f"{[part.get('folds') for part in parts]}")
    pooled = {"report_dirs": [part["report_dir"] for part in parts], "seed": parts[0]["seed"]}
    predictions = predictions_of(pooled)
    if sorted({p["subject"] for p in predictions}) != sorted(folds):
        raise ValueError(f"{name}: the saved predictions' subjects do not match the parts' folds {sorted(folds)}")
    return {**score(predictions, classes), "seconds": sum(part["seconds"] for part in parts),
            "folds": sorted(folds), "machine": "; ".join(dict.fromkeys(part["machine"] for part in parts)),
            **pooled}


def compare_to_first(results: dict, classes: list[str]) -> None:
    """Each row against the first on the same clips and seeds: UF1 differences with paired
    bootstrap 95 % intervals (``vs_first``), since one seed's single numbers cannot say whether
    an ablation hurts. A row with fewer seeds than the first is paired on its own seeds; the
    bootstrap draws clips, each with all its seeds' predictions."""
    rows = {name: {(p["seed"], p["id"]): p for p in predictions_of(r)} for name, r in results.items()}
    rows = {name: by_key for name, by_key in rows.items() if by_key}
    if len(rows) < 2:
        return
    first_name, first = next(iter(rows.items()))
    print(f"\nUF1 of {first_name} minus each row's, same clips and seeds (95 % paired bootstrap interval):\n")
    print("| model | seeds | text | head |\n|---|---|---|---|")
    for name, other in list(rows.items())[1:]:
        keys = sorted(other)
        if not set(keys) <= set(first):
            continue  # other clips: nothing to pair
        truth, groups = [first[k]["emotion"] for k in keys], [k[1] for k in keys]
        seeds = sorted({seed for seed, _ in keys})
        results[name]["vs_first"] = {
            source: {**paired_uf1_difference(truth, [first[k][f"{source}_emotion"] for k in keys],
                                             [other[k][f"{source}_emotion"] for k in keys], classes,
                                             groups=groups), "seeds": seeds}
            for source in ("text", "head") if f"{source}_emotion" in other[keys[0]]}
        cells = [f"{d['difference']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})" if (d := results[name]["vs_first"].get(s))
                 else "-" for s in ("text", "head")]
        print(f"| {name} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")


def write_table(results, rows, classes, cli, out, build_seconds, dataset_path):
    meta = {"machine": machine(), "date": str(date.today()),
            "dataset": str(dataset_path), "clips": len(rows), "subjects": len(set(rows["subject"])),
            "classes": classes, "seed": cli.seed, "folds": cli.folds or len(set(rows["subject"])),
            "build_seconds": round(build_seconds, 1)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print_table(meta, results)


def print_table(meta: dict, results: dict) -> None:
    seeds = meta["seed"] if isinstance(meta["seed"], list) else [meta["seed"]]
    print(f"\n{meta['machine']}, {meta['date']}; SynthMER {meta['clips']} clips, {meta['subjects']} subjects, "
          f"{len(meta['classes'])} classes; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; "
          f"LOSO folds: {meta['folds']}\n")
    mixed = any("machine" in r for r in results.values())  # merged runs: name each row's machine
    several = len(seeds) > 1  # merged seeds: name each row's seeds
    print("| model |" + (" seeds |" if several else "") + " UF1 text | UAR text | UF1 head | UAR head | acc. head | "
          "UF1 3-class head | UF1 3-class text | AU F1 vs labels | AU F1 vs Uni-MER targets | AU F1, AU head | "
          "UF1 free text | AU F1 vs labels, free text | time (s) |" + (" machine |" if mixed else ""))
    print("|---|" + ("---|" if several else "") + "---|" * 13 + ("---|" if mixed else ""))

    def cell(r, key, field="uf1"):
        return f"{r[key][field]:.3f}" if key in r else "-"

    for name, r in results.items():
        cells = ([", ".join(map(str, r.get("seeds", [r.get("seed")])))] if several else []) + [
            cell(r, "text_native"), cell(r, "text_native", "uar"), cell(r, "head_native"),
            cell(r, "head_native", "uar"), cell(r, "head_native", "accuracy"),
            cell(r, "head_composite"), cell(r, "text_composite"),
            cell(r, "aus_vs_labelled", "f1"), cell(r, "aus_vs_uni_mer_targets", "f1"),
            cell(r, "au_head_vs_labelled", "f1"), cell(r, "free_text_native"),
            cell(r, "free_text_aus_vs_labelled", "f1"), f"{r['seconds']:.0f}"] + ([r.get("machine", "")] if mixed else [])
        print(f"| {name} | " + " | ".join(cells) + " |")
    per_seed = {name: r["per_seed"] for name, r in results.items() if "per_seed" in r}
    if per_seed:
        keys = ("text_uf1", "head_uf1", "au_f1_vs_labelled", "free_text_uf1", "free_text_au_f1_vs_labelled")
        print("\nEach seed alone:\n\n| model | seed | UF1 text | UF1 head | AU F1 vs labels | UF1 free text | "
              "AU F1 vs labels, free text |\n|---|---|---|---|---|---|---|")
        for name, scores in per_seed.items():
            for seed, r in scores.items():
                print(f"| {name} | {seed} | " + " | ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
