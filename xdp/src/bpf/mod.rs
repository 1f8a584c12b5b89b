//! The XDP program and bpf(2): owned by the bpf work in progress.
