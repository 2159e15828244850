"""The block-diffusion loss and the synthetic task family."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion

from local_engine.training import tasks
from local_engine.training.config import CANVAS_LENGTH, tiny_config
from local_engine.training.objective import block_diffusion_loss, corrupt
from local_engine.training.tokenizer import VOCAB_SIZE, build_tokenizer
from local_engine.training.train import NUMBER_FEATURE_SCALE, PERIODS, encode_batch, init_number_embeddings


def test_corruption_rate_is_respected() -> None:
    canvas = torch.zeros(4, 4000, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    rate = torch.tensor([[0.0], [0.25], [0.5], [1.0]])
    noisy, mask = corrupt(canvas, 128, generator, rate=rate)
    assert noisy.shape == canvas.shape
    observed = mask.float().mean(dim=1)
    assert observed[0] == 0 and observed[3] == 1
    assert observed[1] == pytest.approx(0.25, abs=0.03) and observed[2] == pytest.approx(0.5, abs=0.03)
    assert torch.equal(noisy[~mask], canvas[~mask])  # clean positions untouched


def test_loss_is_finite_scores_the_canvas_and_overfits_a_batch() -> None:
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    tokenizer = build_tokenizer()
    prompt_ids, prompt_mask, _ = encode_batch(tokenizer, list(range(4)))
    target = torch.randint(6, 100, (4, 8))
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = block_diffusion_loss(model, prompt_ids, prompt_mask, target, generator=generator,
                                    self_condition_p=0.0)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(VOCAB_SIZE))).item(), rel=0.25)  # starts near uniform
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]  # and learns the canvas


def test_self_conditioning_path_runs_with_gradients() -> None:
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    prompt_ids, prompt_mask, _ = encode_batch(build_tokenizer(), [0, 1])
    loss = block_diffusion_loss(model, prompt_ids, prompt_mask, torch.randint(6, 100, (2, 8)),
                                generator=torch.Generator().manual_seed(0), self_condition_p=1.0)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "self_conditioning" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", list(tasks.KINDS))
def test_tasks_are_deterministic_and_checkable(kind: str) -> None:
    a = tasks.generate(kind, random.Random(42))
    b = tasks.generate(kind, random.Random(42))
    assert a == b
    _, answer = a
    assert tasks.check(answer, answer) and tasks.check(f"  {answer}\n", answer)
    assert not tasks.check(answer + "x", answer)
    assert len(answer) < 31  # fits one canvas with its EOS


def test_answers_are_right() -> None:
    assert tasks.arithmetic(random.Random(1))[1] == str(eval(
        tasks.arithmetic(random.Random(1))[0].split("is ")[-1].split("?")[0].split(" =")[0].replace("Compute ", "")
        .rstrip(".").replace("plus", "+").replace("minus", "-")))
    prompt, answer, problem = tasks.sort_numbers(random.Random(3))
    numbers = [int(x) for x in prompt.split(": ")[1].split(", ")]
    assert answer == ", ".join(map(str, sorted(numbers))) and problem == prompt.split(": ")[1]


def test_tokenizer_round_trips_and_renders_the_chat_template() -> None:
    tokenizer = build_tokenizer()
    text = 'Extract city as JSON: {"name": "Ada", "city": "Oslo"}\n'
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


def test_tokenizer_splits_numbers_into_three_digit_chunks_and_keeps_task_words_whole() -> None:
    tokenizer = build_tokenizer()

    def pieces(text: str) -> list[str]:
        return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert pieces("2029-03-05") == ["202", "9", "-", "03", "-", "05"]
    assert pieces("1234567") == ["123", "456", "7"]
    assert pieces("Sort ascending: 39, 42") == ["Sort", " ascending", ":", " ", "39", ", ", "42"]
    assert pieces("firstLastOrder") == ["first", "Last", "Order"]
    # A listed word at the start of a longer one does not swallow it: characters take over.
    assert pieces("Sorted") == list("Sorted") and pieces("the theme") == ["the", " ", *"theme"]
    for text in ["Explain why the sky is blue.\n", "x=1; y = [1, 22, 333, 4444]", "Spaces   and\nnew lines"]:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tokenizer) == VOCAB_SIZE
    longest = max(len(tokenizer(tasks.sample(seed)[2], add_special_tokens=False)["input_ids"])
                  for seed in range(2000))
    assert longest < CANVAS_LENGTH  # every answer fits one canvas with its EOS


def test_the_training_stream_replays_and_names_the_problems_it_saw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from local_engine.training.evaluate import held_out_problems, seen_in_training
    from local_engine.training.train import trained_problems, training_batches

    batches = list(training_batches(3, 4, 0))
    assert batches == list(training_batches(3, 4, 0)) and len(batches) == 3
    assert all(0 <= s < tasks.HELD_OUT_SEED_BASE for batch in batches for s in batch)
    drawn = {tasks.sample_problem(s) for batch in batches for s in batch}
    assert trained_problems([{"steps": 3, "batch_size": 4, "seed": 0}]) == {(kind, problem) for kind, _, _, problem in drawn}

    (tmp_path / "training_log.json").write_text(json.dumps({"summary": {"steps": 3, "batch_size": 4, "seed": 0}}))
    trained_row = next(iter(drawn))
    rows = held_out_problems(1)[:2] + [trained_row]
    assert seen_in_training(tmp_path, rows)[-1] is True
    assert seen_in_training(tmp_path / "nowhere", rows) is None  # not a checkpoint this repo trained


def test_kind_weights_shift_the_stream_and_the_replay_follows_them() -> None:
    import argparse
    from collections import Counter

    from local_engine.training.train import parse_weights, trained_problems, training_batches

    weights = {"sort": 3.0, "case": 0.5}
    batches = list(training_batches(60, 32, 0, weights))
    assert batches == list(training_batches(60, 32, 0, weights))
    assert all(len(batch) == 32 for batch in batches)
    counts = Counter(tasks.sample_problem(s)[0] for batch in batches for s in batch)
    assert counts["sort"] / counts["date"] == pytest.approx(3.0, rel=0.2)
    assert counts["case"] / counts["date"] == pytest.approx(0.5, rel=0.25)
    even = random.Random(0)  # kinds alike: exactly the stream the shipped checkpoint's log replays
    assert list(training_batches(3, 4, 0, {})) == [[even.randrange(tasks.HELD_OUT_SEED_BASE) for _ in range(4)]
                                                   for _ in range(3)]
    stage = {"steps": 60, "batch_size": 32, "seed": 0}
    weighted = {(k, p) for k, _, _, p in (tasks.sample_problem(s) for b in batches for s in b)}
    assert trained_problems([{**stage, "kind_weights": weights}]) == weighted != trained_problems([stage])

    assert parse_weights("sort=2.5, case=0.6") == {"sort": 2.5, "case": 0.6} and parse_weights("") == {}
    for bad in ("poems=2", "sort=x", "sort=0", "sort=nan", "sort=inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_weights(bad)


def test_length_sorted_pieces_keep_every_seed_and_the_gradient() -> None:
    from local_engine.training.train import length_chunks

    seeds = list(range(12))
    pieces = length_chunks(seeds, 3)
    assert sorted(s for piece in pieces for s in piece) == seeds and len(pieces) == 3
    widths = [[len(tasks.sample(s)[1]) for s in piece] for piece in pieces]
    assert max(widths[0]) <= min(widths[1]) and max(widths[1]) <= min(widths[2])

    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    tokenizer = build_tokenizer()
    target = {s: torch.randint(6, 100, (8,)) for s in seeds}

    noisy = {s: torch.randint(6, 100, (8,)) for s in seeds}

    def gradient(groups: list[list[int]]) -> torch.Tensor:
        """The gradient of the mean canvas loss over all seeds, accumulated group by group."""
        model.zero_grad()
        for group in groups:
            prompt_ids, prompt_mask, _ = encode_batch(tokenizer, group)
            canvas_mask = torch.ones(len(group), 8, dtype=prompt_mask.dtype)
            positions = torch.arange(prompt_ids.shape[1], prompt_ids.shape[1] + 8).unsqueeze(0)
            logits = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                           decoder_input_ids=torch.stack([noisy[s] for s in group]),
                           decoder_attention_mask=torch.cat([prompt_mask, canvas_mask], 1),
                           decoder_position_ids=positions).logits
            clean = torch.stack([target[s] for s in group])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), clean.reshape(-1))
            (loss * len(group) / len(seeds)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    assert torch.allclose(gradient([seeds]), gradient(pieces), atol=1e-5)  # left padding changes nothing


def test_the_self_conditioning_pass_on_a_subset_of_rows_matches_the_full_batch() -> None:
    """The loss runs the first pass only for the rows that use it; rows must not depend on each other."""
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    prompt_ids, prompt_mask, _ = encode_batch(build_tokenizer(), [0, 1, 2, 3])
    kwargs = dict(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=torch.randint(6, 100, (4, 8)),
                  decoder_attention_mask=torch.cat([prompt_mask, torch.ones(4, 8, dtype=prompt_mask.dtype)], 1),
                  decoder_position_ids=torch.arange(prompt_ids.shape[1], prompt_ids.shape[1] + 8).unsqueeze(0))
    use = torch.tensor([True, False, True, False])
    with torch.no_grad():
        full = model(**kwargs).logits
        subset = model(**{k: v[use] if v.shape[0] == 4 else v for k, v in kwargs.items()}).logits
    assert torch.allclose(full[use], subset, atol=1e-4)


def test_one_encoder_pass_gives_the_loss_and_gradients_of_running_the_whole_model_twice() -> None:
    """The loss encodes the prompt once and runs both decoder passes on that cache; the plain formulation runs
    the whole model for the self-conditioning pass and again for the scored one. Same numbers either way."""
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    prompt_ids, prompt_mask, _ = encode_batch(build_tokenizer(), [0, 1, 2, 3, 4, 5])
    target = torch.randint(6, 100, (6, 8))

    def reference(generator: torch.Generator) -> torch.Tensor:
        noisy, _ = corrupt(target, VOCAB_SIZE, generator)
        kwargs = dict(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=noisy,
                      decoder_attention_mask=torch.cat([prompt_mask, torch.ones(6, 8, dtype=prompt_mask.dtype)], 1),
                      decoder_position_ids=torch.arange(prompt_ids.shape[1], prompt_ids.shape[1] + 8).unsqueeze(0))
        use = torch.rand(6, generator=generator) < 0.5
        assert 0 < int(use.sum()) < 6  # the seed below gives a mixed batch: both kinds of row are checked
        first = torch.zeros(6, 8, VOCAB_SIZE)
        with torch.no_grad():
            first[use] = model(**{k: v[use] if v.shape[0] == 6 else v for k, v in kwargs.items()}).logits
        logits = model(**kwargs, self_conditioning_logits=first, self_conditioning_mask=use).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), target.reshape(-1))

    def loss_and_gradient(fn) -> tuple[float, torch.Tensor]:  # type: ignore[no-untyped-def]
        model.zero_grad()
        loss = fn(torch.Generator().manual_seed(3))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    ours, ours_grad = loss_and_gradient(
        lambda g: block_diffusion_loss(model, prompt_ids, prompt_mask, target, generator=g, self_condition_p=0.5))
    plain, plain_grad = loss_and_gradient(reference)
    assert ours == pytest.approx(plain, abs=1e-6)
    assert ours_grad.shape == plain_grad.shape and torch.allclose(ours_grad, plain_grad, atol=1e-6)
    assert ours_grad.abs().sum() > 0


def test_system_prompts_are_deterministic_held_apart_and_leave_the_answer_alone() -> None:
    prompt = tasks.sample(5)[1]
    assert tasks.messages_for(5, prompt, 0.0) == [{"role": "user", "content": prompt}]
    chats = {seed: tasks.messages_for(seed, prompt, 0.5) for seed in range(400)}
    assert chats == {seed: tasks.messages_for(seed, prompt, 0.5) for seed in range(400)}
    with_system = [c for c in chats.values() if len(c) == 2]
    assert 0.4 < len(with_system) / len(chats) < 0.6
    assert all(c[0]["role"] == "system" and c[1] == {"role": "user", "content": prompt} for c in with_system)
    assert len({c[0]["content"] for c in with_system}) > 0.9 * len(with_system)  # not a handful of fixed texts
    assert all(len(tasks.messages_for(s, prompt, 1.0)) == 2 for s in range(20))
    rendered = build_tokenizer().apply_chat_template(tasks.messages_for(0, "hi", 1.0), add_generation_prompt=True,
                                                     tokenize=False)
    assert rendered.startswith("<bos><start_of_turn>system\n") and rendered.endswith("<start_of_turn>model\n")


def test_conversations_end_on_the_task_and_keep_history_on_its_side_of_the_held_out_line() -> None:
    prompt = "Sort ascending: 3, 1"
    for seed in (7, tasks.HELD_OUT_SEED_BASE + 7):
        chat = tasks.messages_for(seed, prompt, 1.0, 1.0)
        assert chat == tasks.messages_for(seed, prompt, 1.0, 1.0)
        assert chat[0]["role"] == "system" and chat[-1] == {"role": "user", "content": prompt}
        history = chat[1:-1]
        assert 2 <= len(history) <= 6 and [m["role"] for m in history] == ["user", "assistant"] * (len(history) // 2)
        others = tasks.history_seeds(seed, 1.0)
        assert [m["content"] for m in history[::2]] == [tasks.sample(s)[1] for s in others]
        assert all((s < tasks.HELD_OUT_SEED_BASE) == (seed < tasks.HELD_OUT_SEED_BASE) for s in others)
    shares = [len(tasks.messages_for(s, prompt, 0.0, 0.5)) > 1 for s in range(400)]
    assert 0.4 < sum(shares) / len(shares) < 0.6


def test_a_second_stage_goes_on_from_the_first_and_the_log_keeps_both(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from local_engine.training.evaluate import seen_in_training
    from local_engine.training.train import stages_of, train, trained_problems, training_batches

    first = train(tmp_path / "one", steps=2, batch_size=4, lr=1e-3, seed=0, threads=None)
    second = train(tmp_path / "two", steps=2, batch_size=4, lr=1e-3, seed=1, threads=None,
                   init_from=tmp_path / "one", system_share=1.0)
    log = json.loads((tmp_path / "two" / "training_log.json").read_text())
    stages = stages_of(log)
    assert [(s["seed"], s["system_share"]) for s in stages] == [(0, 0.0), (1, 1.0)]
    assert len(log["earlier_logs"]) == 1 and second["total_wall_s"] >= first["wall_s"]
    only_second = {tasks.sample_problem(s) for b in training_batches(2, 4, 1) for s in b}
    assert {(k, p) for k, _, _, p in only_second} <= trained_problems(stages)
    row = next(iter(only_second))
    assert seen_in_training(tmp_path / "two", [row]) == [True]
    assert seen_in_training(tmp_path / "one", [row]) == [(row[0], row[3]) in trained_problems(stages[:1])]


def test_number_tokens_start_from_their_values() -> None:
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    tokenizer = build_tokenizer()
    before = model.get_input_embeddings().weight.clone()
    init_number_embeddings(model, tokenizer)
    weight, vocab = model.get_input_embeddings().weight, tokenizer.get_vocab()
    n = 2 * len(PERIODS)
    # "37" and "037" share the value features and differ in the digit count; a rotation by the same
    # amount maps 10 -> 37 and 20 -> 47 in the period-100 pair (what a sum has to compute).
    assert torch.allclose(weight[vocab["37"], :n], weight[vocab["037"], :n])
    assert not torch.equal(weight[vocab["37"], n:n + 3], weight[vocab["037"], n:n + 3])
    k = PERIODS.index(100)
    pair = [k, k + len(PERIODS)]
    angle = lambda tok: torch.atan2(weight[vocab[tok], pair[0]], weight[vocab[tok], pair[1]])
    assert torch.isclose((angle("37") - angle("10")) % (2 * torch.pi), (angle("47") - angle("20")) % (2 * torch.pi))
    assert torch.equal(weight[vocab["Sort"]], before[vocab["Sort"]])  # words keep their random start
    assert torch.equal(weight[vocab["7"], n + 3:], before[vocab["7"], n + 3:])  # and the rest of each row


def test_number_features_are_sized_in_standard_deviations_of_the_random_start() -> None:
    """The shipped checkpoint started them at 2.5 standard deviations (the default, which reproduces it); the
    arithmetic probe learns a units digit at 20 (tiny_model.md)."""
    tokenizer, vocab = build_tokenizer(), build_tokenizer().get_vocab()
    sizes = {}
    assert NUMBER_FEATURE_SCALE == 2.5
    for scale in (2.5, 20.0):
        torch.manual_seed(0)
        model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
        std = model.get_input_embeddings().weight.std().item()
        init_number_embeddings(model, tokenizer, scale)
        sizes[scale] = model.get_input_embeddings().weight[vocab["37"], : 2 * len(PERIODS)].norm().item() / std
    # ten sin/cos pairs of norm 1 each: sqrt(10) times the scale
    assert sizes[2.5] == pytest.approx(2.5 * 10 ** 0.5, rel=1e-4)
    assert sizes[20.0] == pytest.approx(20.0 * 10 ** 0.5, rel=1e-4)
