"""Reproduces the bundled tiny DiffusionGemma: task family, tokenizer, block-diffusion loss, training."""
