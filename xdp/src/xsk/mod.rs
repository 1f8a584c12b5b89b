//! AF_XDP sockets, UMEM and rings: owned by the xsk work in progress.
