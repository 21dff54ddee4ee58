"""DEFT-LLM: disentangled expert feature tuning for micro-expression recognition.

Read top to bottom:

1. three **experts** turn a clip into tokens, each from its own view of the face:
   structure (the onset frame: who, and where the features are), texture (frames minus the
   onset frame: how the skin changes) and motion (the onset->apex optical flow: which region
   moved, pooled into one token per facial region);
2. each expert's tokens go through its own **projector** into the LLM width and get a learned
   **expert-type embedding**;
3. the processor left one placeholder token per expert token in the prompt, then one
   ``<|clip|>``; the **merge** scatters the expert tokens there (the llava-onevision pattern)
   and a **clip token** at ``<|clip|>``: a linear readout of all of them, one place where the
   answer finds the whole clip;
4. the **language model** reads the prompt and writes the answer;
5. two **heads** make the model discriminative too: an emotion head on the LLM's states at the
   expert tokens, read token by token (which region moved matters; a mean would lose it), an
   AU head on the motion tokens;
6. the **hybrid loss**: LM + grounding (the LLM's state that starts the answer must tell the
   emotion and AUs) + emotion cross-entropy + AU binary cross-entropy + a disentanglement
   penalty that decorrelates the experts' pooled features.

Expert features are computed once per ``generate`` call (prefill): later decoding steps get
no expert inputs (see ``prepare_inputs_for_generation``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput

from .configuration_deft import EXPERTS, DeftConfig

# Where `trust_remote_code` finds each class in a saved folder.
AUTO_MAP = {"AutoConfig": "configuration_deft.DeftConfig", "AutoModel": "modeling_deft.DeftModel",
            "AutoModelForImageTextToText": "modeling_deft.DeftForConditionalGeneration"}

# The forward inputs of each expert, as the processor names them.
EXPERT_INPUTS = {"structure": "structure_pixels", "texture": "texture_pixels", "motion": "motion_map"}


@dataclass
class DeftModelOutputWithPast(BaseModelOutputWithPast):
    """The LLM's states plus the discriminative heads and the auxiliary (non-LM) losses.

    ``aux_loss`` is the weighted sum of the emotion, AU and disentanglement terms; trainers that
    score tokens themselves (TRL's fused LM head) add it to their LM loss.
    """

    emotion_logits: torch.FloatTensor | None = None
    au_logits: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    emotion_loss: torch.FloatTensor | None = None
    au_loss: torch.FloatTensor | None = None
    disentangle_loss: torch.FloatTensor | None = None


@dataclass
class DeftCausalLMOutputWithPast(ModelOutput):
    """``loss`` = lm_loss_weight * lm_loss + grounding_loss_weight * grounding_loss + aux_loss;
    every part is reported."""

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    grounding_loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    emotion_loss: torch.FloatTensor | None = None
    au_loss: torch.FloatTensor | None = None
    disentangle_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    emotion_logits: torch.FloatTensor | None = None
    au_logits: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def _build_tower(config) -> PreTrainedModel:
    """Any ``transformers`` encoder by config; its pooler is dropped (we pool our own way)."""
    tower = AutoModel.from_config(config)
    if getattr(tower, "pooler", None) is not None:
        tower.pooler = None
    return tower


def _patch_grid(config) -> int:
    return config.image_size // config.patch_size


def _last_patch_tokens(hidden: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Drop leading CLS/register tokens: ViT-style towers put them before the patch tokens."""
    return hidden[:, hidden.shape[1] - num_patches:]


def region_pooling_weights(regions: dict, grid: int) -> torch.Tensor:
    """(num_regions, grid*grid) weights: each patch's area inside each region box, rows sum to 1."""
    cells = torch.arange(grid, dtype=torch.float32)
    lo, hi = cells / grid, (cells + 1) / grid
    rows = []
    for x0, y0, x1, y1 in regions.values():
        overlap_x = (torch.minimum(hi, torch.tensor(x1)) - torch.maximum(lo, torch.tensor(x0))).clamp(min=0)
        overlap_y = (torch.minimum(hi, torch.tensor(y1)) - torch.maximum(lo, torch.tensor(y0))).clamp(min=0)
        area = torch.outer(overlap_y, overlap_x).flatten()  # row-major, like the patch sequence
        rows.append(area / area.sum().clamp(min=1e-8))
    return torch.stack(rows)


class DeftProjector(nn.Module):
    """Two-layer MLP from an expert's width into the LLM's width (llava's projector)."""

    def __init__(self, in_features: int, out_features: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class DeftExpert(nn.Module):
    """One expert: encoder tower -> its own token pooling -> projector (+ expert-type embedding).

    ``structure`` pools the patch grid to a small square grid, ``texture`` pools the
    spatio-temporal tokens in time order, ``motion`` pools one token per facial region.
    """

    def __init__(self, name: str, config: DeftConfig):
        super().__init__()
        self.name = name
        tower_config = getattr(config, f"{name}_config")
        self.tower = _build_tower(tower_config)
        self.num_tokens = config.expert_num_tokens()[name]
        grid = _patch_grid(tower_config)
        self.grid = grid
        self.num_patches = grid * grid
        if name == "texture":
            self.num_patches *= tower_config.num_frames // getattr(tower_config, "tubelet_size", 1)
        if name == "motion":
            self.register_buffer("region_weights", region_pooling_weights(config.region_boxes(), grid),
                                 persistent=False)
        self.projector = DeftProjector(tower_config.hidden_size, config.text_config.hidden_size,
                                       config.projector_hidden_act)

    def pool(self, patches: torch.Tensor) -> torch.Tensor:
        if self.name == "structure":
            side = math.isqrt(self.num_tokens)
            grid = patches.transpose(1, 2).unflatten(2, (self.grid, self.grid))
            return F.adaptive_avg_pool2d(grid, side).flatten(2).transpose(1, 2)
        if self.name == "texture":
            return F.adaptive_avg_pool1d(patches.transpose(1, 2), self.num_tokens).transpose(1, 2)
        return torch.einsum("rp,bpd->brd", self.region_weights.to(patches.dtype), patches)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, ...) expert input -> (B, num_tokens, llm_hidden) projected tokens."""
        pixels = pixels.to(self.tower.dtype)
        hidden = self.tower(pixel_values=pixels).last_hidden_state
        return self.projector(self.pool(_last_patch_tokens(hidden, self.num_patches)))


def emotion_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the clips whose emotion is known (label -100: unknown); 0 if none."""
    labels = labels.to(logits.device)
    known = labels != -100
    return F.cross_entropy(logits.float()[known], labels[known]) if known.any() else logits.sum() * 0


def au_binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known AU entries (negative targets: not annotated)."""
    targets = targets.to(logits.device).float()
    known = targets >= 0
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0), reduction="none")
    return (bce * known).sum() / known.sum().clamp(min=1)


def disentangle_penalty(pooled: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared cross-correlation between every pair of experts' pooled features.

    Features are standardised over the batch, so the penalty is 0 when experts are
    uncorrelated; it needs a batch of at least 2 clips (0 otherwise).
    """
    if len(pooled) < 2 or pooled[0].shape[0] < 2:
        return pooled[0].new_zeros(())
    z = [(p - p.mean(0)) / (p.std(0) + 1e-4) for p in pooled]
    pairs = [(a, b) for i, a in enumerate(z) for b in z[i + 1:]]
    return torch.stack([((a.T @ b) / a.shape[0]).pow(2).mean() for a, b in pairs]).mean()


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------
class DeftPreTrainedModel(PreTrainedModel):
    config: DeftConfig
    config_class = DeftConfig
    base_model_prefix = "model"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeftExpert"]
    _skip_keys_device_placement = "cache"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DeftExpert) and module.name == "motion":
            # A buffer derived from the config, not saved: rebuilt on every load.
            init.copy_(module.region_weights, region_pooling_weights(self.config.region_boxes(), module.grid))

    def save_pretrained(self, save_directory, **kwargs):
        """Map both Auto classes in config.json, whichever of the two models is saved."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        super().save_pretrained(save_directory, **kwargs)


class DeftModel(DeftPreTrainedModel):
    """Experts + projectors + merge + language model + heads; no LM head."""

    def __init__(self, config: DeftConfig):
        super().__init__(config)
        self.experts = nn.ModuleDict({name: DeftExpert(name, config) for name in config.experts})
        hidden = config.text_config.hidden_size
        self.expert_type_embedding = nn.Embedding(len(EXPERTS), hidden)
        width = config.clip_token_width or hidden  # a wide LLM reads a narrowed copy of each token
        self.clip_reduce = nn.Linear(hidden, width) if config.clip_token_width else None
        self.clip_projector = nn.Linear(sum(config.expert_num_tokens().values()) * width, hidden)
        self.language_model = AutoModel.from_config(config.text_config)
        self.emotion_head = nn.Linear(sum(config.expert_num_tokens().values()) * hidden, config.num_labels)
        self.au_head = (nn.Linear(config.num_motion_tokens * hidden, len(config.au_labels))
                        if "motion" in config.experts else None)
        # Per answer-writing state: emotion | the clip's AUs | the AUs the answer has yet to name.
        self.grounding_head = nn.Linear(hidden, config.num_labels + 2 * len(config.au_labels))
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def encode_experts(self, **expert_inputs) -> dict[str, torch.Tensor]:
        """Projected, type-embedded tokens of every switched-on expert that got an input."""
        tokens = {}
        for name, expert in self.experts.items():
            pixels = expert_inputs.get(EXPERT_INPUTS[name])
            if pixels is not None:
                type_id = torch.tensor(EXPERTS.index(name), device=self.device)
                tokens[name] = expert(pixels) + self.expert_type_embedding(type_id)
        return tokens

    def drop_experts(self, expert_tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training only: blank each expert's tokens for a clip with p = ``expert_dropout``
        (its type embedding stays), so no expert becomes a shortcut the others lean on."""
        p = self.config.expert_dropout
        if not self.training or p == 0:
            return expert_tokens
        type_embeddings = self.expert_type_embedding.weight
        dropped = {}
        for name, tokens in expert_tokens.items():
            keep = (torch.rand(tokens.shape[0], 1, 1, device=tokens.device) >= p).to(tokens.dtype)
            type_embedding = type_embeddings[EXPERTS.index(name)].to(tokens.dtype)
            dropped[name] = (tokens - type_embedding) * keep + type_embedding
        return dropped

    def merge(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
              expert_tokens: dict[str, torch.Tensor], decoding: bool = False) -> torch.Tensor:
        """Scatter each expert's tokens into its placeholder positions, with clear mismatches.

        ``decoding``: a cached decoding step; a placeholder id the model generated there is an
        ordinary token (the clip was merged at prefill), not a request for expert features.
        """
        if decoding and not expert_tokens:
            return inputs_embeds
        token_ids = self.config.expert_token_ids()
        for name in EXPERTS:
            mask = input_ids == token_ids[name]
            placeholders = int(mask.sum())
            if name not in self.config.experts:
                if placeholders:
                    raise ValueError(f"input_ids contain {placeholders} <|{name}|> placeholders but "
                                     f"the {name} expert is switched off in this model")
                continue
            features = expert_tokens.get(name)
            if features is None:
                if placeholders:
                    raise ValueError(f"input_ids contain {placeholders} <|{name}|> placeholders but no "
                                     f"`{EXPERT_INPUTS[name]}` was given")
                continue
            if placeholders != features.shape[0] * features.shape[1]:
                raise ValueError(
                    f"{name} expert: {placeholders} <|{name}|> placeholder tokens in input_ids, but "
                    f"{features.shape[0]} clip(s) x {features.shape[1]} tokens = "
                    f"{features.shape[0] * features.shape[1]} features; the processor and the model "
                    f"disagree on the token count")
            features = features.reshape(-1, features.shape[-1]).to(inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)
        return self.merge_clip_token(input_ids, inputs_embeds, expert_tokens)

    def merge_clip_token(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                         expert_tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Put one summary of the whole clip at ``<|clip|>``: a linear readout of every expert
        token, slot by slot (so which region moved survives, as in the emotion head).

        The answer then needs to attend to a single informative token; learning to pick the
        moving regions out of the expert tokens by attention alone takes a small LLM several
        times more training.
        """
        mask = input_ids == self.config.clip_token_id
        placeholders = int(mask.sum())
        if not placeholders:
            return inputs_embeds
        missing = [name for name in self.config.experts if name not in expert_tokens]
        if missing:
            raise ValueError(f"input_ids contain <|clip|> but no input for the {', '.join(missing)} expert(s)")
        batch = next(iter(expert_tokens.values())).shape[0]
        if placeholders != batch:
            raise ValueError(f"input_ids contain {placeholders} <|clip|> tokens for {batch} clip(s); "
                             f"each clip takes exactly one")
        tokens = torch.cat([expert_tokens[name] for name in self.config.experts], 1)
        if self.clip_reduce is not None:
            tokens = self.clip_reduce(tokens)
        clip = self.clip_projector(tokens.flatten(1))
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), clip.to(inputs_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        structure_pixels: torch.FloatTensor | None = None,
        texture_pixels: torch.FloatTensor | None = None,
        motion_map: torch.FloatTensor | None = None,
        emotion_labels: torch.LongTensor | None = None,
        au_labels: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> DeftModelOutputWithPast:
        r"""
        structure_pixels (`(B, 3, S, S)`): the onset frame, scaled to [-1, 1].
        texture_pixels (`(B, K, 3, T, T)`): K frames minus the onset frame (processor's gain).
        motion_map (`(B, 3, M, M)`): onset->apex flow u, v and optical strain.
        emotion_labels (`(B,)`): emotion class ids, -100 where unknown.
        au_labels (`(B, len(au_labels))`): 0/1 per AU, negative where unknown.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds")
        expert_tokens = self.encode_experts(structure_pixels=structure_pixels,
                                            texture_pixels=texture_pixels, motion_map=motion_map)
        if inputs_embeds is None:
            decoding = cache is not None and cache.get_seq_length() > 0
            inputs_embeds = self.merge(input_ids, self.get_input_embeddings()(input_ids),
                                       self.drop_experts(expert_tokens), decoding)
        elif expert_tokens:
            raise ValueError("Expert inputs need input_ids to find their placeholders, not inputs_embeds")

        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      position_ids=position_ids, cache=cache, use_cache=use_cache,
                                      **kwargs)
        hidden = outputs.last_hidden_state

        emotion_logits = au_logits = None
        if expert_tokens and set(expert_tokens) == set(self.config.experts):
            emotion_logits = self.emotion_head(self.expert_states(input_ids, hidden))
        if "motion" in expert_tokens:
            au_logits = self.au_head(expert_tokens["motion"].flatten(1))

        losses = self._aux_losses(expert_tokens, emotion_logits, au_logits, emotion_labels, au_labels)
        return DeftModelOutputWithPast(last_hidden_state=hidden, cache=outputs.cache,
                                       hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions, emotion_logits=emotion_logits,
                                       au_logits=au_logits, **losses)

    def expert_states(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, num_expert_tokens * hidden): the LLM's states at each expert's tokens, concatenated
        in the model's expert order whatever the prompt's, so every feature keeps its meaning
        (motion token k is always region k)."""
        token_ids, counts = self.config.expert_token_ids(), self.config.expert_num_tokens()
        states = []
        for name, count in counts.items():
            mask = input_ids == token_ids[name]
            per_clip = mask.sum(1)
            if not bool((per_clip == count).all()):
                raise ValueError(f"the emotion head needs {count} <|{name}|> tokens in every "
                                 f"row of input_ids, got {per_clip.tolist()}")
            states.append(hidden[mask].reshape(hidden.shape[0], -1))
        return torch.cat(states, dim=-1)

    def grounding_loss(self, hidden: torch.Tensor, labels: torch.Tensor, emotion_labels: torch.Tensor | None,
                       au_labels: torch.Tensor | None, pending_au_labels: torch.Tensor | None = None
                       ) -> torch.Tensor | None:
        """Every LLM state that writes the answer must tell the clip's emotion and AUs, and
        which AUs the answer has yet to name.

        With the LM loss alone a small LLM learns to write a fluent answer from the prompt and
        its own earlier words, and reads the clip only weakly. This term (through a small head,
        training only) makes each state that picks an answer token hold what the clip shows, so
        the explanation can say what the heads know: at the answer's start, where no earlier
        word helps, and at each later choice of the next AU to list. Knowing the clip's AUs is
        not enough for that choice: the state must also have subtracted the AUs already
        written, or the list stops early (``pending_au_labels``, from the collator).
        """
        answer = labels != -100
        writes_answer = torch.zeros_like(answer)
        writes_answer[:, :-1] = answer[:, 1:]  # the state at t predicts token t + 1
        rows, positions = writes_answer.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return None
        logits = self.grounding_head(hidden[rows, positions])
        num_aus = len(self.config.au_labels)
        emotion_logits, au_logits, pending_logits = logits.split([self.config.num_labels, num_aus, num_aus], dim=-1)
        terms = []
        if emotion_labels is not None:
            terms.append(emotion_cross_entropy(emotion_logits, emotion_labels.to(logits.device)[rows]))
        if au_labels is not None:
            terms.append(au_binary_cross_entropy(au_logits, au_labels.to(logits.device)[rows]))
        if pending_au_labels is not None:
            terms.append(au_binary_cross_entropy(pending_logits, pending_au_labels.to(logits.device)[rows, positions]))
        return sum(terms) if terms else None

    def _aux_losses(self, expert_tokens, emotion_logits, au_logits, emotion_labels, au_labels) -> dict:
        """Emotion CE, AU BCE (unknown entries masked) and the disentanglement penalty."""
        losses = {}
        if emotion_logits is not None and emotion_labels is not None:
            losses["emotion_loss"] = emotion_cross_entropy(emotion_logits, emotion_labels)
        if au_logits is not None and au_labels is not None:
            losses["au_loss"] = au_binary_cross_entropy(au_logits, au_labels)
        if losses and expert_tokens:
            pooled = [tokens.float().mean(1) for tokens in expert_tokens.values()]
            losses["disentangle_loss"] = disentangle_penalty(pooled)
        if losses:
            c = self.config
            weights = {"emotion_loss": c.emotion_loss_weight, "au_loss": c.au_loss_weight,
                       "disentangle_loss": c.disentangle_loss_weight}
            losses["aux_loss"] = sum(weights[k] * v for k, v in losses.items())
        return losses


class DeftForConditionalGeneration(DeftPreTrainedModel, GenerationMixin):
    """DeftModel + LM head: generates the explanation; ``loss`` is the full hybrid objective."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: DeftConfig):
        super().__init__(config)
        self.model = DeftModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        structure_pixels: torch.FloatTensor | None = None,
        texture_pixels: torch.FloatTensor | None = None,
        motion_map: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        emotion_labels: torch.LongTensor | None = None,
        au_labels: torch.FloatTensor | None = None,
        pending_au_labels: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> DeftCausalLMOutputWithPast:
        r"""
        labels (`(B, L)`): LM targets, -100 outside the answer (the processor builds them).
        pending_au_labels (`(B, L, len(au_labels))`): 1 where the answer has yet to name that AU
            after token t (the collator builds them; grounding loss only).
        Other inputs: see :meth:`DeftModel.forward`.
        """
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                             structure_pixels=structure_pixels, texture_pixels=texture_pixels,
                             motion_map=motion_map, emotion_labels=emotion_labels,
                             au_labels=au_labels, use_cache=use_cache, **kwargs)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])

        lm_loss = grounding_loss = loss = None
        if labels is not None:
            lm_loss = self.loss_function(logits=logits, labels=labels,
                                         vocab_size=self.config.text_config.vocab_size)
            loss = self.config.lm_loss_weight * lm_loss
            if self.config.grounding_loss_weight:
                grounding_loss = self.model.grounding_loss(hidden, labels, emotion_labels, au_labels,
                                                           pending_au_labels)
            if grounding_loss is not None:
                loss = loss + self.config.grounding_loss_weight * grounding_loss
        if outputs.aux_loss is not None:
            loss = outputs.aux_loss if loss is None else loss + outputs.aux_loss

        return DeftCausalLMOutputWithPast(
            loss=loss, lm_loss=lm_loss, grounding_loss=grounding_loss, aux_loss=outputs.aux_loss,
            emotion_loss=outputs.emotion_loss, au_loss=outputs.au_loss,
            disentangle_loss=outputs.disentangle_loss, logits=logits, cache=outputs.cache,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            emotion_logits=outputs.emotion_logits, au_logits=outputs.au_logits)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool = False, **kwargs):
        """Expert inputs go to the prefill step only; decoding steps reuse the cached prompt."""
        model_inputs = super().prepare_inputs_for_generation(
            *args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in EXPERT_INPUTS.values():
                model_inputs.pop(key, None)
        return model_inputs

    @classmethod
    def from_pretrained_towers(cls, config: DeftConfig, **load_kwargs) -> "DeftForConditionalGeneration":
        """A fresh DEFT model whose towers/LLM start from ``config.pretrained_towers`` (Hub ids).

        Projectors, heads and towers without a name start from scratch. Each tower is loaded
        with its class and sub-config here (a SigLIP checkpoint gives only its vision tower);
        the LLM comes with its own LM head. Downloads weights.
        """
        model = cls(config)
        for name, repo in config.pretrained_towers.items():
            if name == "text":
                causal_lm = AutoModelForCausalLM.from_pretrained(repo, config=config.text_config, **load_kwargs)
                model.model.language_model = causal_lm.get_decoder()
                model.lm_head = causal_lm.get_output_embeddings()
            elif name in model.model.experts:
                expert = model.model.experts[name]
                tower = type(expert.tower).from_pretrained(repo, config=getattr(config, f"{name}_config"),
                                                           **load_kwargs)
                if getattr(tower, "pooler", None) is not None:
                    tower.pooler = None
                expert.tower = tower
        return model


DeftConfig.register_for_auto_class()
DeftModel.register_for_auto_class("AutoModel")
DeftForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["DeftPreTrainedModel", "DeftModel", "DeftForConditionalGeneration", "EXPERT_INPUTS",
           "disentangle_penalty", "region_pooling_weights"]
