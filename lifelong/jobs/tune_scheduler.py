"""ASHA whose rungs survive a driver restart.

Tune restores an experiment's trials but not its scheduler: after a resume, ASHA's rungs start
empty and restarted trials are compared only with trials that report afterwards. `ResumableASHA`
writes its state (rungs, brackets, trial assignments) beside the experiment after every result
it records, atomically, and a restored experiment's scheduler reloads it once, before its first
trial is added.
"""
from __future__ import annotations

import os
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

STATE = "asha_state.pkl"


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_path: str | Path, **asha) -> None:
        super().__init__(**asha)
        self._state_path = str(state_path)
        self._loaded = False

    def _load_once(self) -> None:
        if not self._loaded:
            self._loaded = True
            if os.path.exists(self._state_path):
                self.restore(self._state_path)

    def _save(self) -> None:
        tmp = self._state_path + ".tmp"
        self.save(tmp)
        os.replace(tmp, self._state_path)  # a driver killed mid-write leaves the previous state

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load_once()
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
        self._save()
