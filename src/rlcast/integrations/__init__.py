"""Integrations of rlcast with training frameworks (TRL: `rlcast.integrations.trl.AccelerateCallback`)."""
