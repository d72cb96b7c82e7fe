"""PEFT's LoRA format in and out, and the analysis of adapters trained elsewhere (beyond the paper)."""
