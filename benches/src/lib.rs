//! Shared support for sluice's benchmarks.
