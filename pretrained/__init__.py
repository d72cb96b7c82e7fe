"""Pretrained checkpoints and tokenizers read from Hugging Face's file formats, and downloads."""
