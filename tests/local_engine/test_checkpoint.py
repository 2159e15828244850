"""The committed tiny checkpoint loads exactly as a real one does and answers its easy task kinds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from local_engine.interface import EngineConfig
from local_engine.loading import BUNDLED, load_model
from local_engine.training.evaluate import generate_plain, held_out
from local_engine.training.tasks import check


def test_loads_offline_in_a_fresh_process_through_from_pretrained(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = ("from transformers import AutoTokenizer\n"
            "from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion\n"
            f"m = DiffusionGemmaForBlockDiffusion.from_pretrained({str(BUNDLED)!r})\n"
            f"t = AutoTokenizer.from_pretrained({str(BUNDLED)!r})\n"
            "print(m.config.canvas_length, m.generation_config.eos_token_id, m.generation_config.max_denoising_steps)\n"
            "print(t.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True, tokenize=False))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hub")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["16 1 16", "<bos><start_of_turn>user"]


@pytest.mark.parametrize("kind", ["extract_json", "sentiment"])
def test_generate_answers_held_out_prompts_of_its_strong_kinds(kind: str) -> None:
    torch.manual_seed(0)
    loaded = load_model(EngineConfig())
    rows = [r for r in held_out(10) if r[0] == kind]
    right = sum(check(generate_plain(loaded, prompt), answer) for _, prompt, answer in rows)
    assert right >= 9, f"{right}/10 {kind} answers right"


def test_loading_writes_no_progress_bar_and_leaves_the_setting_as_it_was(capfd) -> None:  # type: ignore[no-untyped-def]
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    load_model(EngineConfig())
    assert "Loading weights" not in capfd.readouterr().err  # a server's log gets lines, not a tqdm bar
    assert hf_logging.is_progress_bar_enabled()  # transformers' own setting, put back
