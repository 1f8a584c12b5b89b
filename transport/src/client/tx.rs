//! Another way out for a producer's datagrams than the kernel's UDP
//! stack: an AF_XDP TX ring (provided by `sluice-xdp`). The producer keeps
//! its UDP socket, to receive the daemon's answers on the same port and to
//! send whatever the other way cannot.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::udp::SendBatch;

/// Sends datagrams from `local` (the producer's UDP socket's address) to
/// the destinations in a batch.
pub trait DatagramTx: Send + 'static {
    /// Sends the datagrams of `batch` in order, as many as it can without
    /// blocking; returns how many (the caller sends the rest through its
    /// socket).
    fn send(&mut self, local: SocketAddr, batch: &SendBatch) -> io::Result<usize>;
}

/// Makes a [`DatagramTx`] for a producer whose socket is bound to `local`
/// and connected to `remote`.
type Make = dyn Fn(SocketAddr, SocketAddr) -> io::Result<Box<dyn DatagramTx>> + Send + Sync;

/// How producers get their [`DatagramTx`] (a cloneable factory: each link a
/// producer opens asks it for one).
#[derive(Clone)]
pub struct TxProvider {
    name: String,
    make: Arc<Make>,
}

impl TxProvider {
    pub fn new(
        name: impl Into<String>,
        make: impl Fn(SocketAddr, SocketAddr) -> io::Result<Box<dyn DatagramTx>> + Send + Sync + 'static,
    ) -> Self {
        TxProvider {
            name: name.into(),
            make: Arc::new(make),
        }
    }

    pub fn make(&self, local: SocketAddr, remote: SocketAddr) -> io::Result<Box<dyn DatagramTx>> {
        (self.make)(local, remote)
    }
}

impl fmt::Debug for TxProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxProvider({})", self.name)
    }
}

/// Sends through `tx` if there is one, the rest (or all) through `socket`.
pub(crate) async fn send(
    socket: &tokio::net::UdpSocket,
    tx: Option<&mut Box<dyn DatagramTx>>,
    batch: &mut SendBatch,
) -> io::Result<()> {
    let sent = match tx {
        Some(tx) => tx.send(socket.local_addr()?, batch).unwrap_or(0),
        None => 0,
    };
    if sent >= batch.len() {
        batch.clear();
        return Ok(());
    }
    if sent > 0 {
        // What did not fit the ring goes through the kernel.
        let mut rest = SendBatch::new();
        for (to, d) in batch.iter().skip(sent) {
            rest.push(to, d);
        }
        batch.clear();
        return rest.send(socket).await.map(|_| ());
    }
    batch.send(socket).await.map(|_| ())
}
