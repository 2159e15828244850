"""Loading a DiffusionGemma checkpoint exactly as a real one loads: from_pretrained + AutoTokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion

from local_engine.errors import EngineUnavailableError
from local_engine.interface import EngineConfig

BUNDLED = Path(__file__).resolve().parent / "assets" / "tiny-diffusiongemma"
BUNDLED_NAME = "draftgate/tiny-diffusiongemma"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: DiffusionGemmaForBlockDiffusion
    tokenizer: Any
    name: str
    device: torch.device


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailableError(f"device {requested} requested but CUDA is not available")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[requested]


def load_model(config: EngineConfig) -> LoadedModel:
    """Loads weights, tokenizer (with its chat template) and generation config; raises if missing."""
    source = config.model or str(BUNDLED)
    if config.model is None and not (BUNDLED / "config.json").exists():
        raise EngineUnavailableError(f"the bundled checkpoint is missing at {BUNDLED}; "
                                     "run `python -m local_engine.training.train` to rebuild it")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    try:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(source, dtype=pick_dtype(config.dtype, device))
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise EngineUnavailableError(f"cannot load the local model {source!r}: {exc}") from exc
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() for its own wrappers
    name = BUNDLED_NAME if config.model is None else config.model
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, device=device)
