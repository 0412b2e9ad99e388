"""montecarlo layer."""
