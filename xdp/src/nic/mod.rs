//! NIC inspection for `sluice nic`: owned by the nic work in progress.
