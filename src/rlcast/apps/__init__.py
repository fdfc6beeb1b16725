"""Layer 6, applications: analysis, dominance, dynamics, compare, report, demo and the command line."""
