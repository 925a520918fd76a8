"""waflow's benchmarks: each prints figures; none asserts a duration."""
