"""Token ids to text, and how much of an unfinished answer's text is final (what a stream may send).

A byte-fallback tokenizer (Gemma's, Llama's) spells a character outside its vocabulary as byte tokens
(`<0xC3><0xA9>` is "é") and decodes a run of them as a whole: a run that a canvas boundary cuts decodes
to U+FFFD now and to its character once the next canvas completes it, and a run that is valid now can
turn invalid with the next byte. Text sent to a streaming client cannot be taken back, so the text of a
trailing run of byte tokens waits for the next canvas, as vLLM's detokenizer holds back a trailing U+FFFD.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece's byte-fallback pieces


class Detokenizer:
    """Decodes as vLLM and OpenAI do (special tokens skipped) and says which prefix of a decoding is final."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._bytes = frozenset(i for token, i in tokenizer.get_vocab().items() if BYTE_TOKEN.fullmatch(token))
        added = getattr(tokenizer, "added_tokens_decoder", {})  # <start_of_turn> and the like: special too
        # decode leaves these out, so they do not end a run
        self._skipped = frozenset(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(tokens), skip_special_tokens=True))

    def final_chars(self, tokens: Sequence[int], text: str) -> int:
        """How many leading characters of `text` (the decoding of `tokens`) no later token can change: all of
        them, unless the tokens end in a run of byte tokens (then the text before that run)."""
        if not self._bytes:
            return len(text)
        cut, in_run = len(tokens), False
        while cut and (tokens[cut - 1] in self._bytes or tokens[cut - 1] in self._skipped):
            cut -= 1
            in_run = in_run or tokens[cut] in self._bytes
        return min(len(text), len(self.decode(tokens[:cut]))) if in_run else len(text)
