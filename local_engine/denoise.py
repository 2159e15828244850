"""One denoising step for every denoising row at once, as `DiffusionGemmaGenerationMixin._denoising_step` does.

Everything is one tensor op over the batch (temperature schedule, softmax, entropy, entropy-bound
acceptance, renoising, the stable-and-confident stop) except the random draws: a seeded request owns
a generator, so its multinomial sample and its renoise tokens are drawn from it alone, in the same
order and shapes as `generate()` draws them for one row. That keeps a seed's answer the same whatever
else is in the batch, and equal to `torch.manual_seed(seed); model.generate(...)`. Unseeded rows share
one draw from the global generator.

Rows may denoise canvases of different lengths in one pass (`Row.next_canvas_length`): a row's
positions past its own length are dead — masked out of attention by the batch, zero entropy here,
padding in its canvas — so it takes the same steps, draws and decisions as a pass of its own length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from local_engine.rows import Sampling


@dataclass
class Step:
    """The outcome of one step for b rows."""

    canvas: torch.Tensor  # (b, L) the renoised canvas for the next step
    argmax: torch.Tensor  # (b, L)
    processed: torch.Tensor  # (b, L, V) temperature-scaled logits: the next step's self-conditioning
    done: list[bool]  # canvas finished: converged, or the step cap reached
    cap_hit: list[bool]  # finished by the cap without converging


def temperatures(steps: torch.Tensor, scales: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """(b,) float32: the linear schedule t_max → t_min as `cur_step` counts down N..1, times each request's scale.

    Computed with the same float32 ops as `LinearTemperatureScheduleLogitsProcessor`, so scale 1 is bit-equal.
    """
    cur_step = (sampling.max_steps - steps).to(torch.int32)
    temperature = sampling.t_min + ((sampling.t_max - sampling.t_min) * (cur_step / sampling.max_steps))
    return (temperature * scales).clamp_min(1e-6)


def entropy_of(logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """(…, L) entropy of softmax(logits) over the last axis, as `Categorical(logits=…).entropy()` computes it.

    `probs`, when given, is softmax(logits) already computed (saves a (b, L, V) temporary).
    """
    log_p = torch.log_softmax(logits, dim=-1).clamp_min_(torch.finfo(logits.dtype).min)
    return -(log_p * (log_p.exp() if probs is None else probs)).sum(-1)


def nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """(b, L, V) probabilities with everything outside each row's top-p nucleus zeroed: the most likely
    tokens whose mass reaches top_p (b,), and always the most likely one (unnormalised: multinomial does not
    need it)."""
    ordered, order = torch.sort(probs, dim=-1, descending=True)
    outside = (torch.cumsum(ordered, dim=-1) - ordered) >= top_p[:, None, None]
    outside[..., 0] = False
    return torch.zeros_like(probs).scatter_(-1, order, ordered.masked_fill(outside, 0.0))


def draw(probs: torch.Tensor, greedy_canvas: torch.Tensor, generators: Sequence[torch.Generator | None],
         greedy: Sequence[bool], vocab_size: int, lengths: Sequence[int] | None = None,
         top_ps: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampled, noise), both (b, L): a categorical sample per position and uniform renoise tokens.

    Per row in generate()'s order (multinomial, then randint) over the row's own length (`lengths`;
    default L); greedy rows take the argmax and draw only noise. Rows with a top_p below 1 sample from
    their nucleus (generate() has no top_p; the draws are the same, from a narrower distribution). A
    generator lives on the device of `probs`, so no row's distribution is copied to the host.
    """
    if top_ps is not None and any(p < 1.0 for p in top_ps):
        narrowed = [i for i, p in enumerate(top_ps) if p < 1.0]
        rows = torch.tensor(narrowed, device=probs.device)
        probs = probs.clone()
        probs[rows] = nucleus(probs[rows], torch.tensor([top_ps[i] for i in narrowed], device=probs.device))
    _, length, vocab = probs.shape
    sampled = greedy_canvas.clone()
    noise = torch.empty_like(greedy_canvas)
    shared = [i for i, g in enumerate(generators) if g is None]
    for i, g in enumerate(generators):
        if g is None:
            continue
        own = length if lengths is None else lengths[i]
        if not greedy[i]:
            sampled[i, :own] = torch.multinomial(probs[i, :own], 1, generator=g).view(own)
        noise[i, :own] = torch.randint(0, vocab_size, (1, own), generator=g, device=g.device)
    if shared:
        index = torch.tensor(shared, device=probs.device)
        sampling_rows = [i for i in shared if not greedy[i]]
        if sampling_rows:
            rows = torch.tensor(sampling_rows, device=probs.device)
            picks = torch.multinomial(probs[rows].reshape(-1, vocab), 1).view(len(sampling_rows), length)
            sampled[rows] = picks
        noise[index] = torch.randint(0, vocab_size, (len(shared), length), device=noise.device)
    return sampled, noise


def denoise(logits: torch.Tensor, canvas: torch.Tensor, previous_argmax: torch.Tensor, steps: torch.Tensor,
            scales: torch.Tensor, generators: Sequence[torch.Generator | None], greedy: Sequence[bool],
            sampling: Sampling, lengths: Sequence[int] | None = None, top_ps: Sequence[float] | None = None) -> Step:
    """Applies one step's logits (b, L, V) to b rows; `steps` (b,) counts the steps already taken on each
    canvas; `lengths` (default: all L) are the rows' own canvas lengths."""
    temperature = temperatures(steps, scales, sampling).to(logits.device)  # (b,)
    processed = logits / temperature[:, None, None]  # (b, L, V)
    probs = torch.softmax(processed, dim=-1, dtype=torch.float32)  # (b, L, V)
    entropy = entropy_of(processed, probs)  # (b, L)
    argmax = processed.argmax(-1)  # (b, L)
    live = None
    width = logits.shape[1]
    if lengths is not None and min(lengths) < width:
        live = torch.arange(width, device=logits.device) < torch.tensor(lengths, device=logits.device)[:, None]
        entropy = entropy.masked_fill(~live, 0.0)  # sorts first and adds nothing to the acceptance sums
        argmax = argmax.masked_fill(~live, sampling.pad_id)
    sampled, noise = draw(probs, argmax, generators, greedy, sampling.vocab_size, lengths, top_ps)
    # Entropy-bound acceptance: the lowest-entropy positions whose summed entropy (less the largest) fits the bound.
    sorted_entropy, order = torch.sort(entropy, dim=-1)
    accept_sorted = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= sampling.entropy_bound
    accepted = torch.zeros_like(accept_sorted).scatter(-1, order, accept_sorted)  # (b, L)
    stable = (argmax == previous_argmax).all(-1) & (steps > 0)  # (b,)
    mean = entropy.mean(-1)  # (b,)
    if live is not None:  # a short row's mean is over its own positions; full rows keep generate()'s op
        mean = torch.where(live.all(-1), mean, entropy.sum(-1) / live.sum(-1))
    confident = mean < sampling.confidence_threshold  # (b,)
    converged = stable & confident
    cap = ~converged & (steps + 1 >= sampling.max_steps)
    flags = torch.stack([converged | cap, cap]).tolist()  # one host sync for the whole batch
    next_canvas = torch.where(accepted, sampled, noise)
    if live is not None:
        next_canvas = next_canvas.masked_fill(~live, sampling.pad_id)
    return Step(canvas=next_canvas, argmax=argmax, processed=processed, done=flags[0], cap_hit=flags[1])
