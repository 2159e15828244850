"""What a checkpoint's config files say, read without its weights (and without importing the model code):
the settings that depend on them are checked here, by `serve` before its server starts and by `check-config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig  # configuration classes only: no model code, no weights

from local_engine.errors import EngineUnavailableError
from local_engine.interface import EngineConfig

BUNDLED = Path(__file__).resolve().parent / "assets" / "tiny-diffusiongemma"
BUNDLED_NAME = "draftgate/tiny-diffusiongemma"
PATH_PREFIXES = ("/", "./", "../", "~")  # a model written as a path, never a hub id (namespace/name)


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


def model_source(config: EngineConfig) -> str:
    """Where the checkpoint is read from; a path that does not exist is refused here, in words of our own."""
    if config.model is None and not (BUNDLED / "config.json").exists():
        raise EngineUnavailableError(f"the bundled checkpoint is missing at {BUNDLED}; "
                                     "run `python -m local_engine.training.train` to rebuild it")
    if config.model and config.model.startswith(PATH_PREFIXES) and not Path(config.model).exists():
        # not a hub id either: transformers would answer "Repo id must be in the form 'repo_name' or ..."
        raise EngineUnavailableError(f"cannot load the local model {config.model!r}: no such directory")
    return config.model or str(BUNDLED)


def check_checkpoint(config: EngineConfig) -> None:
    """The checkpoint's config files (no weights) and the settings that depend on them; not the device, which
    depends on the machine rather than the config (`check-config` may run where the server will not)."""
    source = model_source(config)
    try:
        model_config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise EngineUnavailableError(f"cannot load the local model {source!r}: {exc}") from exc
    if not hasattr(model_config, "canvas_length"):
        raise EngineUnavailableError(f"{source!r} is not a DiffusionGemma checkpoint "
                                     f"(model_type {getattr(model_config, 'model_type', None)!r})")
    check_first_canvas(canvas_lengths(model_config), config.first_canvas_length)
    context_window(model_config, config.max_model_len)
