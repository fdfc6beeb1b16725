"""Layer 5, training: the tiny testbed, RL runs through TRL, and the live acceleration callback."""
