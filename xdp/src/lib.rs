//! AF_XDP kernel-bypass datapath for sluice.
//!
//! Empty for now: the AF_XDP layer arrives with its own issue. The crate exists so
//! the workspace has the layout the design fixes.
