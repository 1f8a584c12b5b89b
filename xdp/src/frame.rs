//! Ethernet/IP/UDP frames: owned by the xsk work in progress.
