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
from local_engine.rows import Sampling

__all__ = ["BUNDLED", "BUNDLED_NAME", "LoadedModel", "canvas_lengths", "check_checkpoint", "check_first_canvas",
           "context_window", "load_model", "no_progress_bar", "pick_device", "pick_dtype", "sampling_of"]
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


def sampling_of(loaded: LoadedModel, first_canvas: int | None = None) -> Sampling:
    """The checkpoint's generation settings; `first_canvas` caps a request's first canvas (None: no cap
    but max_tokens). It must be a length the checkpoint was trained for."""
    lengths = canvas_lengths(loaded.model.config)
    check_first_canvas(lengths, first_canvas)
    gen = loaded.model.generation_config
    sampler = getattr(gen, "sampler_config", None)
    bound = getattr(sampler, "entropy_bound", None) if sampler is not None else None
    return Sampling(canvas_length=int(loaded.model.config.canvas_length or 0),
                    max_steps=int(getattr(gen, "max_denoising_steps", None) or 48),
                    t_min=float(getattr(gen, "t_min", None) or 0.4), t_max=float(getattr(gen, "t_max", None) or 0.8),
                    entropy_bound=float(bound if bound is not None else 0.1),
                    confidence_threshold=float(getattr(gen, "confidence_threshold", None) or 0.005),
                    vocab_size=int(loaded.model.config.get_text_config().vocab_size),
                    eos_id=int(gen.eos_token_id if gen.eos_token_id is not None else 1),
                    pad_id=int(gen.pad_token_id if gen.pad_token_id is not None else 0),
                    canvas_lengths=lengths, first_canvas=first_canvas or 0)
