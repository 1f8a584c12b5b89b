//! Tests that need root (network namespaces, veth, nftables, AF_XDP) run in
//! CI, which runs as root. Elsewhere they skip and say why; with `CI=true`
//! a skip is a failure, so CI cannot pass by skipping them. (The rules live
//! with the namespace tooling in `sluice_testkit::testnet`.)

pub use sluice_testkit::testnet::{has_tool, in_ci, is_root, require, require_netns, require_root};
