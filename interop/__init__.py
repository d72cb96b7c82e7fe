"""osrm-min and the adapters people already have: PEFT's LoRA format in and out (peft_format.py).
This project's own, beyond the paper; a learner of the method may skip it."""
