//! Placeholder: the protocol benchmark is being written.
fn main() {}
