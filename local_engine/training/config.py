"""The tiny DiffusionGemma architecture and the generation settings shipped with it."""

from __future__ import annotations

from transformers.models.diffusion_gemma import DiffusionGemmaConfig, DiffusionGemmaTextConfig

from local_engine.training.tokenizer import VOCAB_SIZE

CANVAS_LENGTH = 16  # the longest answer in the task family is 9 tokens: room for EOS


def tiny_config(hidden: int = 128, layers: int = 4, canvas_length: int = CANVAS_LENGTH) -> DiffusionGemmaConfig:
    """About a million parameters; the vision tower is the smallest that constructs (704 params)."""
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=16, num_hidden_layers=0,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=16, position_embedding_size=16,
                  patch_size=2)
    text = DiffusionGemmaTextConfig(  # type: ignore[call-arg]  # the global_* keys become per_layer_config
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
        global_head_dim=hidden // 4, num_global_key_value_heads=1,
        num_experts=4, top_k_experts=2, moe_intermediate_size=hidden // 2,
        sliding_window=128, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                image_token_id=VOCAB_SIZE + 2, boi_token_id=VOCAB_SIZE + 3,
                                eoi_token_id=VOCAB_SIZE + 4)


GENERATION = dict(eos_token_id=1, pad_token_id=0, bos_token_id=2, max_new_tokens=CANVAS_LENGTH,
                  max_denoising_steps=16, t_min=0.4, t_max=0.8, stability_threshold=1,
                  confidence_threshold=0.005)
