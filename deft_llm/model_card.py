"""The Hub model card of a DEFT-LLM checkpoint, filled in from its config, training and results.

``sft`` writes it into every saved folder as README.md; the repository's ``model_card.md`` is
the card of the bundled demo checkpoint, made by the same function.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

CARD = """\
---
{metadata}
---

# DEFT-LLM ({name})

DEFT-LLM reads a short face clip and says which **micro-expression** it shows and why, in
terms of facial muscle movements (FACS Action Units). Three experts split the face's dynamics
into **structure** (the onset frame), **dynamic texture** (frames minus the onset frame) and
**motion semantics** (onset -> apex optical flow pooled per facial region); their tokens feed a
language model that writes a parseable answer:

```
Motion evidence: AU6 (left cheek, up, 0.62 px); AU12 (left mouth corner, up and outward, 1.10 px).
Emotion: happiness.
```

This is the open, Hugging Face-native implementation of *DEFT-LLM: Disentangled Expert Feature
Tuning for Micro-Expression Recognition* (arXiv:2511.10948) by the deft-llm project. Only the
paper's abstract is public: encoders, sizes and loss weights here are the project's choices.

## This checkpoint

| | |
|---|---|
| experts | {experts} |
| towers | structure: {structure}; texture: {texture}; motion: {motion} |
| language model | {text} |
| parameters | {parameters} |
| emotion classes | {classes} |
| AU vocabulary | {aus} |

Training: {training}

## Results

{results}

## How to use

```python
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
messages = [{{"role": "user", "content": [
    {{"type": "video", "path": "clip.mp4", "onset": 0, "apex": 12}},
    {{"type": "text", "text": "Which micro-expression is this? Describe the facial movements."}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=96, do_sample=False)
print(processor.post_process(out, inputs["input_ids"])[0])   # {{'emotion': ..., 'aus': [...], 'text': ...}}
```

The folder carries its own code (`auto_map`), so `deft_llm` need not be installed. Train your
own with `accelerate launch -m deft_llm.sft --config configs/sft_synth_tiny.yaml` (see the
project README for Uni-MER and the paper-scale recipe).

## Intended use

Research on micro-expression recognition and its explanation: benchmarking on licensed MER
datasets (CASME II, SAMM, SMIC, CAS(ME)^3) under LOSO, studying which facial motions drive a
prediction, teaching FACS.

## Out-of-scope uses

Micro-expressions are not a window into truth or intent. Do **not** use this model for lie or
deception detection, surveillance or monitoring of people, hiring, admission, credit,
insurance, policing, border control, or **any decision about a person**. Do not run it on
people who have not consented.

## Limitations

- {limitations}
- Real MER datasets are small (hundreds of clips, tens of subjects), mostly young East Asian or
  European participants, posed in a lab under controlled lighting: accuracy drops across
  datasets, demographics, head poses and lighting.
- Labels are the datasets' "estimated emotions"; AU codes are human annotations. The model's
  AU evidence reports measured motion, not muscle activity.
- The licences of the source datasets forbid redistributing their frames: a model trained on
  them may be shared only as their licences allow.

## Ethics

Facial analysis can be misused for surveillance and can work unequally across groups. Report
per-group results where the data allow, keep a human in the loop, and never present an output
as evidence about a person's honesty or state of mind.

## Citation

```bibtex
@article{{deftllm2025,
  title   = {{DEFT-LLM: Disentangled Expert Feature Tuning for Micro-Expression Recognition}},
  journal = {{arXiv preprint arXiv:2511.10948}},
  year    = {{2025}}
}}
```
"""

SYNTHETIC_LIMITATION = ("This checkpoint was trained on **SynthMER**, the project's procedural "
                        "micro-expressions: it demonstrates the pipeline and is not a model of "
                        "real faces. Do not use it on real people's clips for anything but a demo.")


def _tower(config) -> str:
    name = getattr(config, "_name_or_path", "") or ""
    return f"{config.model_type} ({config.hidden_size} wide, {config.num_hidden_layers} layers)" + (
        f", from {name}" if name else "")


def render_model_card(config, training: dict | None = None, results: dict | None = None,
                      repo: str = "path/to/checkpoint", num_parameters: int | None = None,
                      synthetic: bool = True) -> str:
    """The card as text. ``results``: ``{"task": ..., "dataset": ..., "metrics": {name: value}}``."""
    classes = list(config.id2label.values())
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "video-text-to-text",
        "license": "apache-2.0",
        "tags": ["custom_code", "micro-expression", "facial-action-units", "deft-llm", "video"],
        "datasets": [training.get("dataset", "synthmer")] if training else ["synthmer"],
    }
    if results:
        metadata["model-index"] = [{"name": "DEFT-LLM", "results": [{
            "task": {"type": "video-text-to-text", "name": results.get("task", "micro-expression recognition")},
            "dataset": {"type": re.sub(r"[^a-z0-9]+", "-", results.get("dataset", "synthmer").lower()),
                        "name": results.get("dataset", "SynthMER")},
            "metrics": [{"type": re.sub(r"[^a-z0-9]+", "_", k.lower()).strip("_"), "value": round(float(v), 4),
                         "name": k} for k, v in results["metrics"].items()]}]}]
    results_text = ("No evaluation recorded for this checkpoint yet." if not results else
                    "\n".join([f"{results.get('protocol', '')}", "", "| metric | value |", "|---|---|"]
                              + [f"| {k} | {float(v):.3f} |" for k, v in results["metrics"].items()]))
    towers = {name: _tower(getattr(config, f"{name}_config")) for name in ("structure", "texture", "motion")}
    return CARD.format(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        name=repo.rstrip("/").split("/")[-1],
        experts=", ".join(config.experts),
        text=_tower(config.text_config) + f", vocabulary {config.text_config.vocab_size}",
        parameters=f"{num_parameters:,}" if num_parameters else "see config.json",
        classes=", ".join(classes),
        aus=", ".join(config.au_labels),
        training=("`" + json.dumps(training, default=str) + "`") if training else "not recorded",
        results=results_text,
        repo=repo,
        limitations=SYNTHETIC_LIMITATION if synthetic else "Check the training data listed above.",
        **towers,
    )


def write_model_card(folder, training: dict | None = None, results: dict | None = None,
                     repo: str | None = None) -> Path:
    """Write ``README.md`` (the Hub's model card file) into a saved checkpoint folder."""
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    weights = folder / "model.safetensors"
    num_parameters = None
    if weights.exists():
        from safetensors import safe_open

        with safe_open(weights, "pt") as f:
            num_parameters = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    synthetic = not training or "synth" in str(training.get("dataset", "synth")).lower()
    card = render_model_card(config, training, results, repo or folder.name, num_parameters, synthetic)
    path = folder / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
