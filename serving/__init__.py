"""Ray Serve deployments for the latency-budget controller (needs the `serve` extra)."""
