"""Why the tiny model does not learn sums: can it fetch an operand, and can it combine two?

Trains a fresh tiny DiffusionGemma (the shipped architecture and number-embedding start) on one
question form, "What is A + B?", with the loss on the first canvas position under a fully noised
canvas (the state generation starts from), for one target at a time: A itself (`copy`), the units
digit of A + B (`units`) or A + B (`sum`). As a control, a one-block GeGLU MLP that is handed both
operands' number features side by side learns `sum` and differences. Accuracy is on 300 fresh
questions, one decoder pass.

    python bench/arithmetic_probe.py [--steps 400] [--out bench/results/arithmetic_probe.json]
    python bench/arithmetic_probe.py --targets sum --steps 500 --lr 3e-3 --weight-decay 0.1 --no-mlp
    python bench/arithmetic_probe.py --targets sum --steps 500 --canvas unk --no-mlp

`--canvas` is what the canvas holds while the first position is scored: `random` tokens (what
generation starts from), random non-number tokens (`words`), or `<unk>` everywhere (no noise at all).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import DynamicCache
from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion

from local_engine.training.config import tiny_config
from local_engine.training.tokenizer import build_tokenizer
from local_engine.training.train import PERIODS, init_number_embeddings

TARGETS = {"copy": lambda a, b: a, "units": lambda a, b: (a + b) % 10, "sum": lambda a, b: a + b}


def probe_transformer(target: str, steps: int, lr: float = 2e-3, weight_decay: float = 0.01,
                      canvas_kind: str = "random", qk_scale: float = 1.0,
                      feature_scale: float = 2.5) -> list[dict[str, float]]:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = DiffusionGemmaForBlockDiffusion(tiny_config())
    init_number_embeddings(model, tokenizer, feature_scale)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.fill_(qk_scale)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    vocab = model.config.text_config.vocab_size
    words = torch.tensor([i for t, i in tokenizer.get_vocab().items() if not t.isdigit() and i > 5])

    def batch(n: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompts, labels = [], []
        for _ in range(n):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}],
                                                         add_generation_prompt=True, tokenize=False))
            labels.append(tokenizer(str(TARGETS[target](a, b)), add_special_tokens=False)["input_ids"][0])
        encoded = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"], torch.tensor(labels)

    def first_position_logits(ids: torch.Tensor, mask: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        rows, width = ids.shape
        cache = DynamicCache(config=model.config.text_config)
        model.model.encoder(input_ids=ids, attention_mask=mask, cache=cache)
        if canvas_kind == "random":
            canvas = torch.randint(0, vocab, (rows, 16), generator=noise)
        elif canvas_kind == "words":
            canvas = words[torch.randint(0, len(words), (rows, 16), generator=noise)]
        else:
            canvas = torch.full((rows, 16), tokenizer.unk_token_id)
        return model(cache=cache, decoder_input_ids=canvas,
                     decoder_attention_mask=torch.cat([mask, torch.ones(rows, 16, dtype=mask.dtype)], 1),
                     decoder_position_ids=torch.arange(width, width + 16).unsqueeze(0)).logits[:, 0]

    held_out, rng, noise, log = batch(300, random.Random(99)), random.Random(0), torch.Generator().manual_seed(0), []
    for step in range(steps):
        ids, mask, labels = batch(64, rng)
        loss = F.cross_entropy(first_position_logits(ids, mask, noise), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 100 == 0:
            with torch.no_grad():
                guess = first_position_logits(*held_out[:2], torch.Generator().manual_seed(1)).argmax(-1)
            log.append({"step": step + 1, "loss": round(loss.item(), 3),
                        "accuracy": round((guess == held_out[2]).float().mean().item(), 3)})
            print(json.dumps({"target": target, **log[-1]}), flush=True)
    return log


def probe_mlp(steps: int) -> list[dict[str, float]]:
    """Both operands' features (the number embeddings' sin/cos) and the operator, side by side."""
    torch.manual_seed(0)

    def features(values: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * values[:, None].float() / torch.tensor(PERIODS, dtype=torch.float)
        return torch.cat([angles.sin(), angles.cos()], 1)

    outputs = torch.nn.Parameter(torch.randn(200, 128) * 0.02)  # tied-style output rows, value-initialised
    with torch.no_grad():
        outputs[:, :20] = 0.05 * features(torch.arange(200))
    inp, gate, up, down = (torch.nn.Linear(41, 128), torch.nn.Linear(128, 256), torch.nn.Linear(128, 256),
                           torch.nn.Linear(256, 128))
    norm = torch.nn.LayerNorm(128)
    params = [outputs, *(p for m in (inp, gate, up, down, norm) for p in m.parameters())]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    generator = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = torch.randint(0, 100, (n,), generator=generator), torch.randint(0, 100, (n,), generator=generator)
        minus = torch.randint(0, 2, (n,), generator=generator)
        hi, lo = torch.maximum(a, b), torch.minimum(a, b)
        a, b = torch.where(minus == 1, hi, a), torch.where(minus == 1, lo, b)
        x = inp(torch.cat([features(a), features(b), minus[:, None].float()], 1))
        x = norm(x + down(F.gelu(gate(x)) * up(x)))
        return 11.3 * x @ outputs.T, torch.where(minus == 1, a - b, a + b)

    log = []
    for step in range(steps):
        logits, labels = batch(64)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if (step + 1) % 100 == 0:
            with torch.no_grad():
                logits, labels = batch(2000)
            log.append({"step": step + 1, "loss": round(loss.item(), 3),
                        "accuracy": round((logits.argmax(1) == labels).float().mean().item(), 3)})
            print(json.dumps({"target": "mlp_sum_and_difference", **log[-1]}), flush=True)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--targets", default="copy,units,sum")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--canvas", choices=("random", "words", "unk"), default="random")
    parser.add_argument("--qk-scale", type=float, default=1.0,
                        help="initial q_norm/k_norm weights (attention logits scale with its square)")
    parser.add_argument("--feature-scale", type=float, default=2.5,
                        help="number features' size at the start, in standard deviations of the random start "
                             "(2.5: the shipped checkpoint's; at 20 the units digit of a sum is learnt)")
    parser.add_argument("--no-mlp", action="store_true", help="skip the MLP control")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    results = {target: probe_transformer(target, args.steps, args.lr, args.weight_decay, args.canvas,
                                         args.qk_scale, args.feature_scale)
               for target in args.targets.split(",")}
    if not args.no_mlp:
        results["mlp_sum_and_difference"] = probe_mlp(args.steps)
    report = {"steps": args.steps, "batch": 64, "lr": args.lr, "weight_decay": args.weight_decay,
              "canvas": args.canvas, "qk_scale": args.qk_scale,
              "feature_scale": args.feature_scale, "wall_s": round(time.time() - started, 1), "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
