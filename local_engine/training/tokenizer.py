"""The tiny model's tokenizer, with Gemma-style chat turns, saved in the checkpoint like any other.

Numbers split into chunks of up to three digits, left to right ("2029" -> "202", "9"), as the cl100k and
Llama 3 tokenizers do: a two-digit number is one token, so sorting copies whole numbers and a sum is one
output token instead of a carry across characters. The words of the task family are whole tokens
(with and without a leading space); anything else falls back to single characters, so every ASCII text
round-trips. Fewer tokens per prompt and answer is most of what makes training fit in ~20 CPU-minutes.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from local_engine.training.tasks import sample, system_prompt

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]  # ids 0..5: pad/eos/bos
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]
DIGIT_CHUNKS = [f"{n:02d}" for n in range(100)] + [f"{n:03d}" for n in range(1000)]  # single digits: CHARS
PIECES = [", ", '": ', ' "', '"}', '{"', ". "]  # punctuation runs of JSON records and lists
WORD_COUNT = 224  # the most frequent words of the task family (it has 216)
VOCAB_SIZE = 1664  # 6 specials + 96 characters + 1,100 digit chunks + 6 pieces + 2 x 216 words, padded

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@cache  # a pure function of the task family; every tokenizer build (tests, each training stage) needs it
def task_words(count: int = WORD_COUNT, samples: int = 3_000) -> tuple[str, ...]:
    """The `count` most frequent words (ties: alphabetical) in training-side prompts, answers and
    system prompts: a deterministic word list, like a BPE vocabulary learned from the corpus."""
    counts: Counter[str] = Counter()
    for seed in range(samples):
        _, prompt, answer = sample(seed)
        text = f"{prompt} {answer} {system_prompt(seed)}"
        counts.update(w for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", text) if len(w) > 1)  # camelCase: 2
    return tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:count])


def build_tokenizer() -> PreTrainedTokenizerFast:
    words = task_words()
    tokens = [*SPECIALS, *CHARS, *DIGIT_CHUNKS, *PIECES, *words, *(" " + w for w in words)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == len(tokens) <= VOCAB_SIZE
    for i in range(len(vocab), VOCAB_SIZE):
        vocab[f"<unused{i}>"] = i
    # Leftmost-first alternation: digit chunks, then the longest listed word or piece, then one character.
    listed = "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))
    pieces = "|".join(re.escape(p) for p in PIECES)
    pattern = rf"[0-9]{{1,3}}|{pieces}| ?(?:{listed})(?![a-z])|(?m:.)"
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",  # type: ignore[no-untyped-call]
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer
