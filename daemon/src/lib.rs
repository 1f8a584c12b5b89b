//! sluice-daemon: the parts of `sluiced` that are not transport.
