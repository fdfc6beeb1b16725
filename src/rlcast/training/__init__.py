"""Layer 5, training: the tiny testbed, RL runs through TRL, live acceleration, optimizer-side lookahead."""
