//! Support code for sluice's end-to-end tests.
