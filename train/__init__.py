"""Training: Unsloth LoRA/QLoRA SFT on the approved dataset, merge, GGUF export."""
