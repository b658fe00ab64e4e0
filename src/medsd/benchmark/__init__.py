"""Benchmarks with known truth on the phantom: `medsd benchmark adaptation` (which method teaches a new finding)."""
