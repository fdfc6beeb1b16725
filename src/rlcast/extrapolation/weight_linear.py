"""ExPO / RL-Extra weight extrapolation: W0 + (T/t) (W_t - W0).

Uses only the last window checkpoint; exact when every delta grows linearly in the step from the base.
"""

from __future__ import annotations

import torch

from rlcast.core.numerics import dense
from rlcast.extrapolation.base import Extrapolator, register


@register("weight-linear")
class WeightLinear(Extrapolator):
    """W0 + (T/t) dW_t on the selected tensors (default all); anchored at the base."""

    reference = "ExPO / RL-Extra"
    min_checkpoints = 1

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        return self.reader_.base(name) + (step / self.last_) * dense(self.reader_.delta(self.last_, name))
