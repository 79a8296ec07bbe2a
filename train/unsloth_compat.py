"""Import Unsloth, and undo the one thing its import breaks elsewhere in the same process.

Unsloth (2026.10) swaps transformers' ``create_causal_mask`` for a ``torch.compile``-d copy, and when it loads a
model it turns on Inductor's memory planning. Torch 2.13 checks, on the first call of each compiled graph, that no
custom operator returns an alias of its input, and it counts Inductor's own ``_alloc_from_pool`` (how memory
planning hands out buffers) as one: a false positive. The check only warns, unless the environment has ``CI`` set
(as GitHub Actions and most CI runners do), where it raises. A process that trains and then generates with a plain
transformers model (an experiment, the export tests) then fails in ``generate`` with "inductor::_alloc_from_pool
... must not also be an input to this custom operator". Keeping the check but making it a warning is what torch does
outside CI; the warning goes to forma's log with the other third-party warnings.
"""

from __future__ import annotations


def import_unsloth() -> None:
    """``import unsloth`` (it patches transformers, PEFT and TRL, so it must come before them) and keep torch's
    custom-operator alias check a warning."""
    import unsloth  # noqa: F401

    relax_alias_check()


def relax_alias_check() -> None:
    """Torch's first-call alias check warns instead of raising, whatever ``CI`` says (see the module docstring)."""
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "error_on_custom_op_aliasing"):
        functorch_config.error_on_custom_op_aliasing = False
