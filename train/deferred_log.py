"""Per-step training logs without a GPU sync: each loss is read once the GPU has got there, not when the host asks.

Why: transformers' ``Trainer`` reads the accumulated loss and the gradient norm on the host at every logging step
(``.item()`` in ``_maybe_log_save_evaluate``). With ``logging_steps: 1`` (forma's default, so the report has a loss
per step) that is a sync per optimiser step: the GPU drains, then idles while the host runs the callbacks, collates
the next batch and launches the next forward. Measured on the H200 (bench/results/
train_gpu_sweep-deferred-logs-h200-2026-12-01.json, one machine, 16 steps): 60.1% MFU with the lines deferred,
59.3% without. The ~14 ms of idle GPU a step that the trace shows while the host is between operators did not go
away with it, so that idle has another cause (not found yet).

:class:`DeferredLogs` keeps every log line (the same values, steps, epochs and order as ``Trainer`` writes) but
takes the values from a pinned host copy queued on the stream behind the step, and writes the line once that copy's
CUDA event has completed: usually one step later. Evaluation, checkpoints, the end of an epoch and the end of
training write what is pending first, so the log order and the final training loss are ``Trainer``'s. On the CPU the
values are ready at once and nothing waits.

It wraps two ``Trainer`` methods that are private (``_maybe_log_save_evaluate``, ``_finalize_training``); where
their signatures are not the ones this was written against (transformers 5.17), or training is distributed,
:func:`install` leaves the trainer as it is and says so.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass
from typing import Any

from train import switched_off

#: The leading parameters of ``Trainer._maybe_log_save_evaluate`` this module was written against (transformers 5.x).
EXPECTED_PARAMETERS = ("tr_loss", "grad_norm", "model", "trial", "epoch", "ignore_keys_for_eval", "start_time")


@dataclass
class _Pending:
    """One log line whose values may still be on their way from the GPU."""

    step: int
    epoch: float | None
    steps: int  # optimiser steps the summed loss covers
    learning_rate: float
    values: Any  # tensor [loss summed over `steps`, gradient norm or 0]: on the host once `event` has completed
    grad_norm: float | None  # a gradient norm the trainer already had as a float; None: read from `values`
    has_grad_norm: bool
    event: Any  # torch.cuda.Event, or None when `values` lives on the host


class DeferredLogs:
    """Wraps one trainer's logging so that no log line makes the host wait for the GPU (see the module doc)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.pending: deque[_Pending] = deque()
        self.written = 0
        self.written_late = 0  # lines written after the step that made them: the syncs this saved
        self._log_save_evaluate = trainer._maybe_log_save_evaluate
        self._finalize_training = trainer._finalize_training
        trainer._maybe_log_save_evaluate = self._maybe_log_save_evaluate
        trainer._finalize_training = self._finalize

    def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, model: Any, trial: Any, epoch: Any,
                                 ignore_keys_for_eval: Any, start_time: Any, *args: Any, **kwargs: Any) -> Any:
        t = self.trainer
        control = t.control
        if control.should_log and t.state.global_step > t._globalstep_last_logged:
            learning_rate = kwargs.get("learning_rate", args[0] if args else None)
            self._queue(tr_loss, grad_norm, learning_rate)
            control.should_log = False  # the line is queued: the wrapped method must not log it again
        everything = bool(control.should_evaluate or control.should_save or control.should_training_stop
                          or control.should_epoch_stop)
        self.write(everything=everything, start_time=start_time)
        return self._log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time,
                                       *args, **kwargs)

    def _finalize(self, *args: Any, **kwargs: Any) -> Any:
        self.write(everything=True)  # before Trainer reads the total loss for its train_loss
        return self._finalize_training(*args, **kwargs)

    def _queue(self, tr_loss: Any, grad_norm: Any, learning_rate: float | None) -> None:
        """What ``Trainer`` does at a logging step, with the loss snapshotted on the stream instead of read."""
        import torch

        t = self.trainer
        state = t.state
        norm_tensor = isinstance(grad_norm, torch.Tensor)
        values = torch.stack([tr_loss.detach().float().reshape(()),
                              grad_norm.detach().float().reshape(()).to(tr_loss.device) if norm_tensor
                              else torch.zeros((), device=tr_loss.device)])  # a copy, taken before the reset below
        tr_loss -= tr_loss  # as Trainer: the sum restarts (in stream order, after the copy above)
        event = None
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            values = host
        self.pending.append(_Pending(
            step=state.global_step, epoch=state.epoch, steps=state.global_step - t._globalstep_last_logged,
            learning_rate=learning_rate if learning_rate is not None else t._get_learning_rate(), values=values,
            grad_norm=None if norm_tensor or grad_norm is None else float(grad_norm),
            has_grad_norm=grad_norm is not None, event=event))
        t._globalstep_last_logged = state.global_step
        t.store_flos()

    def _ready(self, pending: _Pending) -> bool:
        """Whether the line's values are on the host (a query: it never waits)."""
        return pending.event is None or bool(pending.event.query())

    def write(self, everything: bool = False, start_time: float | None = None) -> None:
        """Write the pending lines whose values have arrived, in order; all of them (waiting) when ``everything``."""
        t = self.trainer
        state = t.state
        while self.pending:
            p = self.pending[0]
            if not everything and not self._ready(p):
                break
            if p.event is not None:
                p.event.synchronize()  # a no-op once query() said so; waits only when everything is asked for
            self.pending.popleft()
            loss_sum, norm = p.values.tolist()
            logs: dict[str, float] = {"loss": loss_sum / p.steps}
            if p.has_grad_norm:
                logs["grad_norm"] = norm if p.grad_norm is None else p.grad_norm
            logs["learning_rate"] = p.learning_rate
            t._total_loss_scalar += loss_sum
            self.written += 1
            self.written_late += p.step != state.global_step
            # Trainer.log stamps the line with the state's step and epoch: those of the step that made it
            now = (state.global_step, state.epoch)
            state.global_step, state.epoch = p.step, p.epoch
            try:
                t.log(logs, start_time)
            finally:
                state.global_step, state.epoch = now


def install(trainer: Any) -> DeferredLogs | None:
    """Defer ``trainer``'s log lines (see the module doc); None, with the trainer unchanged, where it cannot or where
    ``FORMA_DEFERRED_LOGS=0`` turns it off."""
    if switched_off("FORMA_DEFERRED_LOGS"):
        return None
    method = getattr(trainer, "_maybe_log_save_evaluate", None)
    if method is None or not hasattr(trainer, "_finalize_training") or not hasattr(trainer, "log"):
        return None
    if getattr(trainer.args, "world_size", 1) != 1:  # Trainer gathers the loss over processes; this does not
        return None
    names = tuple(inspect.signature(method).parameters)[:len(EXPECTED_PARAMETERS)]
    if names != EXPECTED_PARAMETERS:
        return None
    return DeferredLogs(trainer)
