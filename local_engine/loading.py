"""Loading a DiffusionGemma checkpoint exactly as a real one loads: from_pretrained + AutoTokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion
from transformers.utils import logging as hf_logging

from local_engine.checkpoint import (  # re-exported: the engine and tools import them from here
    BUNDLED,
    BUNDLED_NAME,
    canvas_lengths,
    check_checkpoint,
    check_first_canvas,
    context_window,
    model_source,
)
from local_engine.errors import EngineUnavailableError
from local_engine.interface import EngineConfig

__all__ = ["BUNDLED", "BUNDLED_NAME", "LoadedModel", "canvas_lengths", "check_checkpoint", "check_first_canvas",
           "context_window", "load_model", "no_progress_bar", "pick_device", "pick_dtype"]
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


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """from_pretrained draws a tqdm bar ("Loading weights"): carriage returns in a server's log, where vLLM
    and LiteLLM write plain lines. The setting is transformers' own, so it is put back afterwards."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def load_model(config: EngineConfig) -> LoadedModel:
    """Loads weights, tokenizer (with its chat template) and generation config; raises if missing."""
    source = model_source(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    try:
        with no_progress_bar():
            model = DiffusionGemmaForBlockDiffusion.from_pretrained(source, dtype=pick_dtype(config.dtype, device))
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:  # missing files; a path that is not a valid hub id
        raise EngineUnavailableError(f"cannot load the local model {source!r}: {exc}") from exc
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() for its own wrappers
    name = BUNDLED_NAME if config.model is None else config.model
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, device=device)
