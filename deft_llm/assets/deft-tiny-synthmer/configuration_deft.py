"""Configuration of DEFT-LLM: three expert towers, a language model, and how they meet.

The defaults are the *tiny* preset: a model that trains on a 2-core CPU in minutes on SynthMER.
``DeftConfig.paper_scale()`` describes the realistic model (a SigLIP structure tower, a
VideoMAE texture tower, a ViT-S motion tower, Qwen2.5-7B-Instruct); it is a description only,
nothing is downloaded until ``DeftForConditionalGeneration.from_pretrained_towers`` is called.

Every tower is an ordinary ``transformers`` config (``model_type`` picks the class through
``AutoConfig``/``AutoModel``), so a real pretrained encoder or LLM plugs in by name.
"""

from __future__ import annotations

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .facs import AU_VOCAB, EMOTIONS, REGIONS

EXPERTS = ("structure", "texture", "motion")

# Fixed ids of the special tokens of the embedded tokenizer (see tokenizer_build.py).
PAD_TOKEN_ID, EOS_TOKEN_ID = 0, 3
STRUCTURE_TOKEN_ID, TEXTURE_TOKEN_ID, MOTION_TOKEN_ID, CLIP_TOKEN_ID = 4, 5, 6, 7

_TINY_VIT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 128, "num_channels": 3}


class DeftConfig(PreTrainedConfig):
    r"""
    structure_config: vision tower for the onset frame (identity, facial layout).
    texture_config: video tower for the K onset-differenced frames (dynamic skin texture).
    motion_config: vision tower for the (u, v, strain) optical-flow map; its patch tokens are
        pooled into one token per facial region of ``regions``.
    text_config: the language model.
    experts: the experts switched on (an ablation drops one); their inputs are ignored otherwise.
    num_structure_tokens / num_texture_tokens: LLM tokens per clip for those experts (the motion
        expert always gives one token per region). ``num_structure_tokens`` is a square number:
        the patch grid is pooled to a smaller square grid.
    *_token_id: the placeholder token of each expert in ``input_ids``, and ``clip_token_id`` the
        one clip token that follows them (a linear readout of all the expert tokens).
    clip_token_width: None: the clip token reads every expert token whole (tiny LLMs); a number:
        each token is first narrowed to that width, so a wide LLM's readout stays small (paper
        scale: 62 tokens x 3584 -> 3584 would be 796 M parameters; through 64 it is 14 M).
    *_loss_weight: weights of the hybrid objective: LM + grounding + emotion CE + AU BCE +
        disentanglement.
    expert_dropout: training only: chance of blanking one expert's tokens for a clip (the LLM
        sees only its type embedding there), so the answer cannot lean on a single expert.
    au_labels: the AU vocabulary of the AU head; id2label: the emotion classes.
    regions: ``[name, [x0, y0, x1, y1]]`` facial region boxes (fractions of the face crop), in
        motion-token order; a list because config.json sorts dict keys.
    pretrained_towers: optional Hub ids whose weights ``from_pretrained_towers`` loads per tower.
    """

    model_type = "deft_llm"
    sub_configs_defaults = {
        "structure_config": SubConfigSpec(
            config_class=AutoConfig, model_type="vit",
            init_kwargs={**_TINY_VIT, "image_size": 64, "patch_size": 16}),
        "texture_config": SubConfigSpec(
            config_class=AutoConfig, model_type="videomae",
            init_kwargs={**_TINY_VIT, "image_size": 64, "patch_size": 16, "num_frames": 8,
                         "tubelet_size": 2, "use_mean_pooling": False}),
        "motion_config": SubConfigSpec(
            config_class=AutoConfig, model_type="vit",
            init_kwargs={**_TINY_VIT, "image_size": 64, "patch_size": 8}),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama",
            init_kwargs={"vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
                         "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "max_position_embeddings": 512,
                         "pad_token_id": PAD_TOKEN_ID, "bos_token_id": None,
                         "eos_token_id": EOS_TOKEN_ID, "tie_word_embeddings": False}),
    }

    structure_config: dict | PreTrainedConfig | None = None
    texture_config: dict | PreTrainedConfig | None = None
    motion_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    experts: list[str] | None = None
    num_structure_tokens: int = 4
    num_texture_tokens: int = 8
    structure_token_id: int = STRUCTURE_TOKEN_ID
    texture_token_id: int = TEXTURE_TOKEN_ID
    motion_token_id: int = MOTION_TOKEN_ID
    clip_token_id: int = CLIP_TOKEN_ID
    clip_token_width: int | None = None
    projector_hidden_act: str = "gelu"
    lm_loss_weight: float = 1.0
    grounding_loss_weight: float = 1.0
    emotion_loss_weight: float = 0.5
    au_loss_weight: float = 0.5
    disentangle_loss_weight: float = 0.1
    expert_dropout: float = 0.0
    au_labels: list[str] | None = None
    regions: list | None = None
    pretrained_towers: dict | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            self.id2label = dict(enumerate(EMOTIONS))
        super().__post_init__(**kwargs)
        if self.id2label is not None:
            self.label2id = {label: i for i, label in self.id2label.items()}
        self.experts = list(EXPERTS if self.experts is None else self.experts)
        self.au_labels = list(AU_VOCAB if self.au_labels is None else self.au_labels)
        regions = REGIONS.items() if self.regions is None else self.regions
        self.regions = [[name, list(box)] for name, box in regions]
        self.pretrained_towers = dict(self.pretrained_towers or {})
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)
        self._validate()

    def _validate(self):
        unknown = [e for e in self.experts if e not in EXPERTS]
        if unknown or not self.experts:
            raise ValueError(f"experts must be a non-empty subset of {EXPERTS}, got {self.experts}")
        side = math.isqrt(self.num_structure_tokens)
        if side * side != self.num_structure_tokens:
            raise ValueError(f"num_structure_tokens must be a square number, got {self.num_structure_tokens}")
        ids = [self.structure_token_id, self.texture_token_id, self.motion_token_id, self.clip_token_id]
        if len(set(ids)) != 4 or max(ids) >= self.text_config.vocab_size:
            raise ValueError(f"placeholder token ids {ids} must be distinct and < vocab_size "
                             f"{self.text_config.vocab_size}")
        if self.texture_config.num_frames % getattr(self.texture_config, "tubelet_size", 1):
            raise ValueError("texture_config.num_frames must be a multiple of its tubelet_size")

    def region_boxes(self) -> dict[str, tuple[float, float, float, float]]:
        """The facial regions in motion-token order."""
        return {name: tuple(box) for name, box in self.regions}

    @property
    def num_motion_tokens(self) -> int:
        return len(self.regions)

    def expert_num_tokens(self) -> dict[str, int]:
        """LLM tokens per clip of each switched-on expert, in prompt order."""
        counts = {"structure": self.num_structure_tokens, "texture": self.num_texture_tokens,
                  "motion": self.num_motion_tokens}
        return {name: counts[name] for name in EXPERTS if name in self.experts}

    def expert_token_ids(self) -> dict[str, int]:
        return {"structure": self.structure_token_id, "texture": self.texture_token_id,
                "motion": self.motion_token_id}

    @classmethod
    def tiny(cls, **kwargs) -> "DeftConfig":
        """The embedded default: tiny towers and LM, CPU-trainable in minutes."""
        return cls(**kwargs)

    @classmethod
    def paper_scale(cls, **kwargs) -> "DeftConfig":
        """A realistic DEFT-LLM (our reading of the paper; its exact sizes are not public).

        structure: SigLIP-B/16 at 224 px (google/siglip-base-patch16-224), 16 tokens;
        texture: VideoMAE-B, 16 frames at 224 px (MCG-NJU/videomae-base), 32 tokens;
        motion: a ViT-S/16 from scratch on (u, v, strain) at 224 px, one token per region;
        language model: Qwen2.5-7B-Instruct. Placeholder ids are the four added special tokens
        after Qwen2.5's vocabulary (151665-151668), so the tokenizer needs them added.
        """
        from transformers import Qwen2Config, SiglipVisionConfig, VideoMAEConfig, ViTConfig

        defaults = dict(
            structure_config=SiglipVisionConfig(
                image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                num_hidden_layers=12, num_attention_heads=12, vision_use_head=False),
            texture_config=VideoMAEConfig(
                image_size=224, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=768,
                intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                use_mean_pooling=False),
            motion_config=ViTConfig(
                image_size=224, patch_size=16, num_channels=3, hidden_size=384,
                intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6),
            text_config=Qwen2Config(
                vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645),
            num_structure_tokens=16,
            num_texture_tokens=32,
            structure_token_id=151665,
            texture_token_id=151666,
            motion_token_id=151667,
            clip_token_id=151668,
            clip_token_width=64,
            pretrained_towers={"structure": "google/siglip-base-patch16-224",
                               "texture": "MCG-NJU/videomae-base",
                               "text": "Qwen/Qwen2.5-7B-Instruct"},
        )
        defaults.update(kwargs)
        return cls(**defaults)


__all__ = ["DeftConfig", "EXPERTS"]
