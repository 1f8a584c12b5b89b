//! Placeholder: the spool benchmark is being written.
fn main() {}
