"""The train step's one progress bar: optimizer steps with the latest loss and held-out reward accuracy.

transformers' own ProgressCallback prints every log record as a raw dict under its bar; a person running
`make run` wants the bar and the step's summary line, while the full records are kept in train_log.jsonl.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm
from transformers import ProgressCallback, TrainerCallback


class StepBar(TrainerCallback):
    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        # disable=None: a bar on a terminal, none in a pod's log.
        self.bar = tqdm(total=state.max_steps, desc="train", unit="step", disable=None, dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        shown = {"loss": "loss", "eval_rewards/accuracies": "eval_acc"}
        if self.bar is not None and logs:
            self.bar.set_postfix({short: f"{logs[key]:.3g}" for key, short in shown.items()
                                  if isinstance(logs.get(key), int | float)}, refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_step_bar(trainer: Any) -> Any:
    """Swap the trainer's printing progress callback for StepBar; returns the trainer."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepBar())
    return trainer
