"""Training: Unsloth LoRA/QLoRA SFT on the approved dataset, merge, GGUF export."""

import os

#: The values that turn one of forma's training levers off (FORMA_FUSED_QKV=0, FORMA_DEFERRED_LOGS=off, ...).
OFF = ("0", "false", "no", "off")


def switched_off(variable: str) -> bool:
    """Whether the environment turns off the lever named by ``variable`` (on unless set to one of :data:`OFF`)."""
    return os.environ.get(variable, "1").strip().lower() in OFF
