"""The speed path (lora.py's encoder, computed faster), worker processes and the benchmarks."""
