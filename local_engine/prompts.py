"""A request's prompt as the model sees it: chat-template text, token ids, context check and prefix cuts.

All of it is CPU work on the messages and the tokenizer (only read, so any thread may do it): the engine
runs it in a worker thread for long prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import TemplateError

from local_engine.errors import ContextLengthError, RequestRejectedError
from local_engine.prefix import PrefixCache


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def flatten(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Role and text only, the form the chat template renders; computed once per request. OpenAI's
    `developer` role is the system prompt under its newer name: chat templates know `system`."""
    return [{"role": "system" if m.get("role") == "developer" else m.get("role", "user"), "content": message_text(m)}
            for m in messages]


class PromptBuilder:
    """Renders and tokenizes prompts for one tokenizer and prefix cache."""

    def __init__(self, tokenizer: Any, prefixes: PrefixCache) -> None:
        self._tokenizer = tokenizer
        self._prefixes = prefixes

    def text(self, flat: list[dict[str, Any]], generation_prompt: bool) -> str:
        """The chat template's rendering; RequestRejectedError when the template refuses the messages (Gemma's
        refuses roles that do not alternate, such as `tool` turns): the request's fault, a 400 as vLLM answers."""
        try:
            rendered: str = self._tokenizer.apply_chat_template(flat, add_generation_prompt=generation_prompt,
                                                                tokenize=False)
        except TemplateError as exc:
            raise RequestRejectedError(f"the local model's chat template refuses these messages: {exc}",
                                       400) from exc
        return rendered

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def prepare(self, messages: Sequence[Mapping[str, Any]], context_length: int | None,
                ) -> tuple[list[int], tuple[int, ...]]:
        """The prompt's token ids and prefix cuts; ContextLengthError when it leaves no room for an answer."""
        flat = flatten(messages)
        ids = self.tokenize(self.text(flat, generation_prompt=True))
        if context_length is not None and len(ids) >= context_length:
            raise ContextLengthError(len(ids), context_length)
        return ids, self.cuts(flat, ids)

    def cuts(self, flat: list[dict[str, Any]], ids: list[int]) -> tuple[int, ...]:
        """Token counts of the prompt's cacheable prefixes, shortest first: its leading system messages
        (shared by every conversation of an app) and every turn before the last message (a retry, a
        fixed few-shot preamble). Only cuts that are token prefixes of `ids` count.

        Templates that fold a system prompt into the first user turn (or refuse a conversation that
        does not end on a user turn) give no usable cut: the request is then encoded whole. Each prefix is
        rendered and tokenized on its own: a template may render a partial conversation differently, and
        a text prefix need not tokenize as a token prefix.
        """
        if len(flat) < 2 or not self._prefixes.enabled:
            return ()
        systems = next((i for i, m in enumerate(flat) if m["role"] not in ("system", "developer")), len(flat))
        cuts = set()
        for count in {systems, len(flat) - 1} - {0, len(flat)}:
            try:
                text = self.text(flat[:count], generation_prompt=False)
            except Exception:  # noqa: BLE001, S112 - a template may reject a partial conversation; not an error
                continue
            prefix = self.tokenize(text)
            if self._prefixes.usable(len(prefix), len(ids)) and ids[:len(prefix)] == prefix:
                cuts.add(len(prefix))
        return tuple(sorted(cuts))
