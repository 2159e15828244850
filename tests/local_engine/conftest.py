"""A tiny random DiffusionGemma saved with save_pretrained, so engine tests never need the trained one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion, DiffusionGemmaGenerationConfig

from local_engine.training.config import GENERATION, tiny_config
from local_engine.training.tokenizer import build_tokenizer


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-random")
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    model.generation_config = DiffusionGemmaGenerationConfig(**{**GENERATION, "max_new_tokens": 8,
                                                                "max_denoising_steps": 4})
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out
