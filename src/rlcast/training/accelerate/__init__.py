"""Live acceleration inside TRL's GRPO / RLOO trainers: extrapolate the weights ahead, check, keep or roll back.

`AccelerateCallback(AccelerateConfig(...))` is the interface (what it does and why: docs/JUMPS.md); `CheckSet` is
the check's prompt sample, for measuring the check itself (bench/check_power.py).
"""

from rlcast.training.accelerate.callback import AccelerateCallback
from rlcast.training.accelerate.check import CheckSet
from rlcast.training.accelerate.config import AccelerateConfig

__all__ = ["AccelerateCallback", "AccelerateConfig", "CheckSet"]
