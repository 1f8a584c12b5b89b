//! Placeholder: the loopback benchmark is being written.
fn main() {}
