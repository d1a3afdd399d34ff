"""The train step's progress: one bar (optimizer steps with the latest loss and held-out reward accuracy) and
a record in the store that the dashboard reads while training runs.

transformers' own ProgressCallback prints every log record as a raw dict under its bar; a person running
`make run` wants the bar and the step's summary line, while the full records are kept in train_log.jsonl.
"""

from __future__ import annotations

import time
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


class StoreProgress(TrainerCallback):
    """`rounds/<name>/progress/train.json` rewritten at every logged step, for the dashboard: the step, the
    planned steps, and per step the loss and reward accuracy (training, and held out when evaluated). The
    adapter and train_log.jsonl are published only when training ends; this is what shows it under way."""

    MEASURES = {"loss": "loss", "rewards/accuracies": "rewardAccuracy", "eval_loss": "evalLoss",
                "eval_rewards/accuracies": "evalRewardAccuracy"}

    def __init__(self, store: Any, key: str, method: str) -> None:
        self.store, self.key, self.method = store, key, method
        self.doc: dict[str, Any] = {}

    def _save(self, state: Any) -> None:
        self.doc.update(step=state.global_step, maxSteps=state.max_steps, updatedTime=time.time())
        self.store.put_json(self.key, self.doc)

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.doc = {"method": self.method, "startTime": time.time(), "history": []}
        self._save(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        found = {short: float(logs[key]) for key, short in self.MEASURES.items()
                 if isinstance((logs or {}).get(key), int | float)}
        if found:
            self.doc["history"].append({"step": state.global_step, **found})
            self._save(state)
