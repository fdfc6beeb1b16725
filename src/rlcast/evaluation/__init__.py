"""Layer 3, evaluation: verifiable-reward tasks, generation, confidence intervals, scoring a run's checkpoints."""
