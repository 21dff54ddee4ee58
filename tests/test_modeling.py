"""DEFT-LLM as a transformers model: losses, training, generation, save/load as remote code."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from deft_llm import DeftConfig, DeftForConditionalGeneration, DeftModel
from deft_llm.modeling_deft import disentangle_penalty, region_pooling_weights

LOSS_PARTS = ["lm_loss", "grounding_loss", "emotion_loss", "au_loss", "disentangle_loss", "aux_loss"]


def make_batch(config: DeftConfig, batch_size: int = 2, seed: int = 0, answer_len: int = 6) -> dict:
    """A random batch shaped the way the processor shapes one: prompt with placeholders + answer."""
    g = torch.Generator().manual_seed(seed)
    token_ids = config.expert_token_ids()
    placeholders = [token_ids[name] for name, n in config.expert_num_tokens().items() for _ in range(n)]
    rows, labels = [], []
    for _ in range(batch_size):
        prompt = [2, *torch.randint(10, 500, (3,), generator=g).tolist(), *placeholders, config.clip_token_id, 3, 2]
        answer = [*torch.randint(10, 500, (answer_len,), generator=g).tolist(), 3]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    s, t, m = config.structure_config, config.texture_config, config.motion_config
    return {
        "input_ids": torch.tensor(rows),
        "attention_mask": torch.ones(batch_size, len(rows[0]), dtype=torch.long),
        "labels": torch.tensor(labels),
        "structure_pixels": torch.randn(batch_size, 3, s.image_size, s.image_size, generator=g),
        "texture_pixels": torch.randn(batch_size, t.num_frames, 3, t.image_size, t.image_size, generator=g),
        "motion_map": torch.randn(batch_size, 3, m.image_size, m.image_size, generator=g),
        "emotion_labels": torch.randint(0, config.num_labels, (batch_size,), generator=g),
        "au_labels": torch.randint(0, 2, (batch_size, len(config.au_labels)), generator=g).float(),
    }


def model_inputs(batch: dict) -> dict:
    """What `generate` takes: no training targets."""
    return {k: v for k, v in batch.items() if k not in ("labels", "emotion_labels", "au_labels")}


def train(model, batch, steps: int, lr: float = 3e-3) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def config():
    return DeftConfig()


def test_forward_backward_reports_every_finite_loss_part(config):
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config)
    batch = make_batch(config, batch_size=3)
    out = model(**batch)
    for part in LOSS_PARTS:
        assert torch.isfinite(getattr(out, part)), part
    expected = (config.lm_loss_weight * out.lm_loss + config.grounding_loss_weight * out.grounding_loss
                + config.emotion_loss_weight * out.emotion_loss
                + config.au_loss_weight * out.au_loss + config.disentangle_loss_weight * out.disentangle_loss)
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (3, batch["input_ids"].shape[1], config.text_config.vocab_size)
    assert out.emotion_logits.shape == (3, config.num_labels)
    assert out.au_logits.shape == (3, len(config.au_labels))
    out.loss.backward()
    for name, expert in model.model.experts.items():
        grad = expert.projector.linear_1.weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in expert.tower.parameters()), name
    assert model.model.emotion_head.weight.grad.abs().sum() > 0
    assert model.model.au_head.weight.grad.abs().sum() > 0


def test_config_tokens_and_head_tying(config):
    assert config.expert_num_tokens() == {"structure": 4, "texture": 8, "motion": 14}
    # The tiny LM trains its embeddings and head separately (untied); a tied LLM stays tied.
    model = DeftForConditionalGeneration(config)
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight
    from transformers import LlamaConfig

    tied_text = LlamaConfig(**{**config.text_config.to_dict(), "tie_word_embeddings": True})
    tied = DeftForConditionalGeneration(DeftConfig(text_config=tied_text))
    assert tied.config.tie_word_embeddings
    assert tied.lm_head.weight is tied.model.language_model.embed_tokens.weight
    with pytest.raises(ValueError, match="square"):
        DeftConfig(num_structure_tokens=5)
    with pytest.raises(ValueError, match="subset"):
        DeftConfig(experts=["structure", "audio"])


def test_region_pooling_weights_follow_region_boxes():
    weights = region_pooling_weights({"top_left": (0.0, 0.0, 0.5, 0.5), "right_strip": (0.75, 0.0, 1.0, 1.0)}, 4)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    top_left = weights[0].reshape(4, 4)
    assert torch.allclose(top_left[:2, :2], torch.full((2, 2), 0.25)) and top_left[2:].sum() == 0
    right = weights[1].reshape(4, 4)
    assert torch.allclose(right[:, 3], torch.full((4,), 0.25)) and right[:, :3].sum() == 0


def test_disentangle_penalty_is_zero_for_uncorrelated_and_high_for_copies():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, 8, generator=g), torch.randn(4096, 8, generator=g)
    assert disentangle_penalty([a, b]) < 0.01
    # a copy correlates each dim with itself: 8 of 64 entries are 1 -> mean 1/8
    assert disentangle_penalty([a, a.clone()]).item() == pytest.approx(1 / 8, rel=0.02)
    assert disentangle_penalty([a[:1], b[:1]]) == 0


def test_overfits_eight_fixed_samples(config):
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config)
    batch = make_batch(config, batch_size=8, seed=1)
    losses = train(model, batch, steps=30)
    assert losses[-1] < losses[0] / 5, losses
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    assert (out.emotion_logits.argmax(-1) == batch["emotion_labels"]).all()
    assert ((out.au_logits > 0).float() == batch["au_labels"]).float().mean() > 0.95


@pytest.mark.parametrize("off", ["structure", "texture", "motion"])
def test_each_expert_switched_off_still_trains_and_ignores_its_input(off):
    config = DeftConfig(experts=[e for e in ("structure", "texture", "motion") if e != off])
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config)
    assert off not in model.model.experts
    batch = make_batch(config, batch_size=4, seed=2)  # still carries the off expert's input
    assert {"structure_pixels", "texture_pixels", "motion_map"} <= set(batch)
    losses = train(model, batch, steps=12)
    assert losses[-1] < losses[0] / 2, losses
    if off == "motion":
        assert model(**batch).au_logits is None and model.model.au_head is None


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(config):
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config)
    batch = make_batch(config, batch_size=2)
    model.train()
    plain = model(**batch).loss
    plain.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.model.language_model.gradient_checkpointing
    checkpointed = model(**batch).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, plain)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_generate_with_cache_equals_greedy_without_and_encodes_experts_once(config):
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config).eval()
    inputs = model_inputs(make_batch(config, batch_size=2))
    calls = {name: 0 for name in model.model.experts}
    for name, expert in model.model.experts.items():
        expert.tower.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    model.generation_config.eos_token_id = None  # compare all 8 steps, no early stop
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
    assert calls == {"structure": 1, "texture": 1, "motion": 1}

    # Greedy decoding by hand, recomputing the whole sequence every step (no cache).
    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(8):
            step = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            next_id = model(**step, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(cached, ids)


def test_placeholder_mismatches_are_clear_errors(config):
    model = DeftForConditionalGeneration(config).eval()
    batch = model_inputs(make_batch(config, batch_size=2))
    missing = {k: v for k, v in batch.items() if k != "texture_pixels"}
    with pytest.raises(ValueError, match=r"16 <\|texture\|> placeholders but no `texture_pixels`"):
        model(**missing)
    one_clip = {**batch, "motion_map": batch["motion_map"][:1]}
    with pytest.raises(ValueError, match=r"motion expert: 28 <\|motion\|> placeholder tokens.*1 clip\(s\) x 14"):
        model(**one_clip)
    no_motion = DeftForConditionalGeneration(DeftConfig(experts=["structure", "texture"])).eval()
    with pytest.raises(ValueError, match="motion expert is switched off"):
        no_motion(**batch)
    # Right total, wrong split between rows: the emotion head reads each row's tokens in order.
    uneven = batch["input_ids"].clone()
    first_motion = int((uneven[0] == config.motion_token_id).nonzero()[0])
    uneven[0, first_motion] = 11
    uneven[1, 1] = config.motion_token_id
    with pytest.raises(ValueError, match=r"needs 14 <\|motion\|> tokens in every row of input_ids, got \[13, 15\]"):
        model(**{**batch, "input_ids": uneven})


def test_emotion_head_reads_each_region_token_not_their_mean(config):
    """Swapping two motion region tokens changes the emotion head's input (a mean would not)."""
    model = DeftForConditionalGeneration(config).eval()
    batch = model_inputs(make_batch(config, batch_size=2))
    hidden = torch.randn(*batch["input_ids"].shape, config.text_config.hidden_size)
    states = model.model.expert_states(batch["input_ids"], hidden)
    n_tokens = sum(config.expert_num_tokens().values())
    assert states.shape == (2, n_tokens * config.text_config.hidden_size)
    assert model.model.emotion_head.in_features == states.shape[1]
    motion = (batch["input_ids"][0] == config.motion_token_id).nonzero().flatten()
    swapped = hidden.clone()
    swapped[0, motion[0]], swapped[0, motion[1]] = hidden[0, motion[1]], hidden[0, motion[0]]
    assert not torch.equal(model.model.expert_states(batch["input_ids"], swapped)[0], states[0])
    # The structure tokens come first in the features, wherever the prompt put them.
    first_structure = int((batch["input_ids"][0] == config.structure_token_id).nonzero()[0])
    assert torch.equal(states[0, :config.text_config.hidden_size], hidden[0, first_structure])


def test_clip_token_is_a_linear_readout_of_every_expert_token(config):
    model = DeftForConditionalGeneration(config).eval()
    batch = model_inputs(make_batch(config, batch_size=2))
    ids = batch["input_ids"]
    with torch.no_grad():
        tokens = model.model.encode_experts(**{k: v for k, v in batch.items() if k.endswith(("pixels", "map"))})
        merged = model.model.merge(ids, model.get_input_embeddings()(ids), tokens)
        expected = model.model.clip_projector(torch.cat([tokens[n] for n in config.experts], 1).flatten(1))
    clip = ids == config.clip_token_id
    assert clip.sum(1).tolist() == [1, 1]
    torch.testing.assert_close(merged[clip], expected)
    # Each region token has its own weights: swapping two motion tokens changes the clip token.
    swapped = {**tokens, "motion": tokens["motion"][:, [1, 0, *range(2, config.num_motion_tokens)]]}
    with torch.no_grad():
        assert not torch.allclose(model.model.merge(ids, model.get_input_embeddings()(ids), swapped)[clip], merged[clip])


def test_clip_token_width_narrows_each_token_first():
    """Paper scale narrows each expert token before the readout (62 x 3584 -> 3584 would be 796 M
    parameters); here 26 tokens x 128 -> 8 each."""
    config = DeftConfig(clip_token_width=8)
    model = DeftForConditionalGeneration(config).eval()
    assert model.model.clip_reduce.weight.shape == (8, 128)
    assert model.model.clip_projector.weight.shape == (128, 26 * 8)
    assert DeftForConditionalGeneration(DeftConfig()).model.clip_reduce is None
    batch = model_inputs(make_batch(config))
    ids = batch["input_ids"]
    with torch.no_grad():
        tokens = model.model.encode_experts(**{k: v for k, v in batch.items() if k.endswith(("pixels", "map"))})
        merged = model.model.merge(ids, model.get_input_embeddings()(ids), tokens)
        narrow = model.model.clip_reduce(torch.cat([tokens[n] for n in config.experts], 1))
        torch.testing.assert_close(merged[ids == config.clip_token_id], model.model.clip_projector(narrow.flatten(1)))
    assert DeftConfig.paper_scale().clip_token_width == 64


def test_clip_token_errors(config):
    model = DeftForConditionalGeneration(config).eval()
    batch = model_inputs(make_batch(config, batch_size=2))
    twice = batch["input_ids"].clone()
    twice[0, 1] = config.clip_token_id
    with pytest.raises(ValueError, match=r"3 <\|clip\|> tokens for 2 clip\(s\); each clip takes exactly one"):
        model(**{**batch, "input_ids": twice})
    text_only = torch.tensor([[2, 11, config.clip_token_id, 3]])
    with pytest.raises(ValueError, match=r"<\|clip\|> but no input for the structure, texture, motion expert"):
        model(input_ids=text_only)


def test_grounding_loss_reads_every_state_that_writes_the_answer(config):
    """Zero grounding head: CE over the classes + mean BCE at p = 0.5. Every state that predicts
    an answer token counts (from the one before the answer to the one before its last token);
    the prompt's earlier states and the last token's state do not."""
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config).eval()
    batch = make_batch(config, batch_size=3)
    labels, emotions, aus = batch["labels"], batch["emotion_labels"], batch["au_labels"]
    hidden = torch.randn(*labels.shape, config.text_config.hidden_size)
    loss = model.model.grounding_loss(hidden, labels, emotions, aus)
    first = int((labels[0] != -100).nonzero()[0]) - 1  # the state that predicts the first answer token

    def moved(*positions):
        changed = hidden.clone()
        changed[0, list(positions)] += 1.0
        return not torch.equal(model.model.grounding_loss(changed, labels, emotions, aus), loss)

    assert not moved(*range(first)) and not moved(labels.shape[1] - 1)
    assert moved(first) and moved(labels.shape[1] - 2)
    with torch.no_grad():
        model.model.grounding_head.weight.zero_()
        model.model.grounding_head.bias.zero_()
        zero = model(**batch).grounding_loss
    torch.testing.assert_close(zero, torch.tensor(math.log(config.num_labels) + math.log(2)))
    # The AUs still to name (from the collator): a third term, mean BCE at p = 0.5 too, read
    # from the same states.
    pending = torch.zeros(*labels.shape, len(config.au_labels))
    pending[0, first, 0] = 1
    with torch.no_grad():
        with_pending = model(**batch, pending_au_labels=pending).grounding_loss
    torch.testing.assert_close(with_pending, torch.tensor(math.log(config.num_labels) + 2 * math.log(2)))
    model.model.grounding_head.bias.data[-len(config.au_labels)] = 3.0  # the first AU's "still to name"
    assert model(**batch, pending_au_labels=pending).grounding_loss > with_pending
    # No answer in any row (a prompt-only batch): no grounding term.
    assert model(**{**batch, "labels": torch.full_like(batch["labels"], -100)}).grounding_loss is None


def test_grounding_loss_alone_trains_the_clip_path(config):
    config = DeftConfig(lm_loss_weight=0.0, emotion_loss_weight=0.0, au_loss_weight=0.0, disentangle_loss_weight=0.0)
    model = DeftForConditionalGeneration(config)
    out = model(**make_batch(config))
    assert out.emotion_loss is not None and out.grounding_loss > 0
    out.loss.backward()
    for name in ("clip_projector", "grounding_head"):
        assert getattr(model.model, name).weight.grad.abs().sum() > 0, name
    assert model.model.experts["motion"].projector.linear_1.weight.grad.abs().sum() > 0


def test_bf16_forward(config):
    model = DeftForConditionalGeneration(config).to(torch.bfloat16)
    out = model(**make_batch(config))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


SUBPROCESS_LOAD = textwrap.dedent("""
    import sys, json, torch
    sys.modules["deft_llm"] = None  # make `import deft_llm` impossible in this process
    try:
        import deft_llm
        raise SystemExit("deft_llm was importable")
    except ImportError:
        pass
    from transformers import AutoModel, AutoModelForImageTextToText
    folder, inputs_path = sys.argv[1], sys.argv[2]
    inputs = torch.load(inputs_path)
    gen = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    half = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = gen(**inputs).logits
        hidden = base(**inputs).last_hidden_state
        half_out = half(**inputs)
    assert type(gen).__module__.startswith("transformers_modules"), type(gen).__module__
    torch.save({"logits": logits, "hidden": hidden, "class": type(gen).__name__,
                "base_class": type(base).__name__, "half_dtype": str(half_out.logits.dtype),
                "half_finite": bool(torch.isfinite(half_out.logits.float()).all())}, sys.argv[3])
""")


def test_save_pretrained_then_load_as_remote_code_without_the_package(config, tmp_path):
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config).eval()
    inputs = model_inputs(make_batch(config))
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.model(**inputs).last_hidden_state
    folder = tmp_path / "deft-tiny"
    model.save_pretrained(folder)

    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_deft.py", "modeling_deft.py", "facs.py"} <= files
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "deft_llm"
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_deft.DeftConfig",
        "AutoModel": "modeling_deft.DeftModel",
        "AutoModelForImageTextToText": "modeling_deft.DeftForConditionalGeneration",
    }
    for code in folder.glob("*.py"):  # the saved code imports nothing of ours but its siblings
        text = code.read_text()
        assert "import deft_llm" not in text and "from deft_llm" not in text, code.name

    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(SUBPROCESS_LOAD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "inputs.pt"),
                             str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    assert loaded["class"] == "DeftForConditionalGeneration" and loaded["base_class"] == "DeftModel"
    torch.testing.assert_close(loaded["logits"], logits)
    torch.testing.assert_close(loaded["hidden"], hidden)
    assert loaded["half_dtype"] == "torch.bfloat16" and loaded["half_finite"]


def test_installed_package_registers_auto_classes(config, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    model = DeftForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DeftConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), DeftModel)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(reloaded, DeftForConditionalGeneration)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_expert_dropout_blanks_whole_experts_in_training_only():
    config = DeftConfig(expert_dropout=1.0)  # always drop: the LLM sees only type embeddings
    torch.manual_seed(0)
    model = DeftForConditionalGeneration(config)
    batch = make_batch(config, batch_size=2)
    tokens = model.model.encode_experts(**batch)
    model.train()
    dropped = model.model.drop_experts(tokens)
    for index, name in enumerate(("structure", "texture", "motion")):
        expected = model.model.expert_type_embedding.weight[index].expand_as(dropped[name])
        torch.testing.assert_close(dropped[name], expected)
    model.eval()
    assert all(torch.equal(model.model.drop_experts(tokens)[n], tokens[n]) for n in tokens)
    # the AU head and the disentanglement penalty still see the undropped motion tokens
    model.train()
    out = model(**batch)
    assert out.au_loss > 0 and out.au_logits.std() > 0


def test_pretrained_towers_load_by_name_from_hub_layout_folders(tmp_path):
    """Paper-scale models start from named towers; local folders stand in for Hub ids here."""
    from transformers import LlamaForCausalLM, ViTModel

    config = DeftConfig()
    lm = LlamaForCausalLM(config.text_config)
    lm.save_pretrained(tmp_path / "lm")
    vit = ViTModel(config.motion_config, add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    named = DeftConfig(pretrained_towers={"text": str(tmp_path / "lm"), "motion": str(tmp_path / "vit")})
    model = DeftForConditionalGeneration.from_pretrained_towers(named)
    assert torch.equal(model.lm_head.weight, lm.lm_head.weight)  # the LLM brings its own head
    assert torch.equal(model.model.language_model.layers[0].mlp.up_proj.weight, lm.model.layers[0].mlp.up_proj.weight)
    patch = model.model.experts["motion"].tower.embeddings.patch_embeddings.projection.weight
    assert torch.equal(patch, vit.embeddings.patch_embeddings.projection.weight)
    assert model.model.experts["motion"].tower.pooler is None
    assert torch.isfinite(model(**make_batch(named)).loss)


def test_a_generated_placeholder_id_is_an_ordinary_token_while_decoding(config):
    """An (untrained) model may emit <|motion|> mid-answer; decoding must not ask for a clip."""
    from transformers import DynamicCache

    model = DeftForConditionalGeneration(config).eval()
    inputs = model_inputs(make_batch(config, batch_size=1))
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        step = torch.tensor([[config.motion_token_id]])
        out = model(input_ids=step, cache=prefill.cache, use_cache=True)
    assert isinstance(prefill.cache, DynamicCache) and out.logits.shape == (1, 1, config.text_config.vocab_size)
    with pytest.raises(ValueError, match="placeholders but no `motion_map`"):
        model(input_ids=step)  # without a cache it is a prompt: the clip is missing
