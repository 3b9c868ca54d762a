"""detzoo's benchmark suite: ``python -m benchmarks`` measures everything and writes BENCHMARKS.md.

Every figure is a ratio of two things measured side by side in one run (interleaved, median of
several repeats), so load from other processes on a shared machine slows both sides alike.
"""
