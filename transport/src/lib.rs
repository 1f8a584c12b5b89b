//! sluice-transport: wire format, sans-IO reliable sessions, UDP datapath.
