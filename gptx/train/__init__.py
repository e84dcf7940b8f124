"""Training: state and optimizer, the one loop, and the step functions plugged into it."""
