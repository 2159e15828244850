"""Loading a DiffusionGemma checkpoint exactly as a real one loads: from_pretrained + AutoTokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion
from transformers.utils import logging as hf_logging

from local_engine.errors import EngineUnavailableError
from local_engine.interface import EngineConfig

BUNDLED = Path(__file__).resolve().parent / "assets" / "tiny-diffusiongemma"
BUNDLED_NAME = "draftgate/tiny-diffusiongemma"
PATH_PREFIXES = ("/", "./", "../", "~")  # a model written as a path, never a hub id (namespace/name)
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


def canvas_lengths(model_config: Any) -> tuple[int, ...]:
    """The canvas lengths a checkpoint was trained to denoise (`trained_canvas_lengths`, which draftgate's
    training writes into its config), ascending and ending at its canvas length; else just that length."""
    longest = int(model_config.canvas_length or 0)
    trained = getattr(model_config, "trained_canvas_lengths", None) or ()
    return tuple(sorted({int(n) for n in trained if 0 < int(n) < longest} | {longest}))


def check_first_canvas(lengths: tuple[int, ...], first_canvas: int | None) -> None:
    if first_canvas is not None and first_canvas not in lengths:
        raise EngineUnavailableError(f"first_canvas_length {first_canvas} is not a canvas length this checkpoint "
                                     f"was trained for: {', '.join(map(str, lengths))}")


def context_window(model_config: Any, max_model_len: int | None) -> int | None:
    """The checkpoint's position limit (`max_position_embeddings`), lowered by `max_model_len` (vLLM's name);
    a `max_model_len` above the limit is refused, as vLLM refuses it, rather than quietly served at the limit."""
    limit = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    if max_model_len and limit and max_model_len > int(limit):
        raise EngineUnavailableError(f"max_model_len {max_model_len} is more than this checkpoint's context window "
                                     f"({int(limit)} tokens, its max_position_embeddings): it can only lower it")
    known = [int(n) for n in (limit, max_model_len) if n]
    return min(known) if known else None


def _source(config: EngineConfig) -> str:
    if config.model is None and not (BUNDLED / "config.json").exists():
        raise EngineUnavailableError(f"the bundled checkpoint is missing at {BUNDLED}; "
                                     "run `python -m local_engine.training.train` to rebuild it")
    if config.model and config.model.startswith(PATH_PREFIXES) and not Path(config.model).exists():
        # not a hub id either: transformers would answer "Repo id must be in the form 'repo_name' or ..."
        raise EngineUnavailableError(f"cannot load the local model {config.model!r}: no such directory")
    return config.model or str(BUNDLED)


def check_model(config: EngineConfig) -> None:
    """The cheap part of loading (device, the checkpoint's config, settings that depend on it), so that a
    server can refuse to start with one clear line instead of failing inside its startup."""
    pick_device(config.device)
    source = _source(config)
    try:
        model_config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise EngineUnavailableError(f"cannot load the local model {source!r}: {exc}") from exc
    if not hasattr(model_config, "canvas_length"):
        raise EngineUnavailableError(f"{source!r} is not a DiffusionGemma checkpoint "
                                     f"(model_type {getattr(model_config, 'model_type', None)!r})")
    check_first_canvas(canvas_lengths(model_config), config.first_canvas_length)
    context_window(model_config, config.max_model_len)


@contextmanager
def _no_progress_bar() -> Iterator[None]:
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
    source = _source(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    try:
        with _no_progress_bar():
            model = DiffusionGemmaForBlockDiffusion.from_pretrained(source, dtype=pick_dtype(config.dtype, device))
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:  # missing files; a path that is not a valid hub id
        raise EngineUnavailableError(f"cannot load the local model {source!r}: {exc}") from exc
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() for its own wrappers
    name = BUNDLED_NAME if config.model is None else config.model
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, device=device)
