"""`rlcast tune`: the tuned plain run for a fraction of a full sweep (successive halving over rungs counted in
generation batches, the promotions decided on forecasts of each trial's held-out accuracy).

`Sweep` drives a user's `train_fn(config, report)`; `rlcast.tune.trials` makes `rlcast train` runs such a function;
`rlcast.tune.schedulers` holds the decisions; `rlcast.tune.ray_engine` runs the same sweep as Ray Tune trials;
`rlcast.tune.report` the leaderboard and the HTML page.
"""

from rlcast.tune.schedulers import ASHA, SCHEDULERS, ForecastScheduler, MedianStopping, RandomSearch, Scheduler, \
    final_score, make_scheduler
from rlcast.tune.sweep import Reporter, Sweep, Trial

__all__ = ["ASHA", "SCHEDULERS", "ForecastScheduler", "MedianStopping", "RandomSearch", "Reporter", "Scheduler",
           "Sweep", "Trial", "final_score", "make_scheduler"]
