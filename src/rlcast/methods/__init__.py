"""Layer 4, methods: one module per published forecasting method (and our own), each an `Extrapolator`."""
