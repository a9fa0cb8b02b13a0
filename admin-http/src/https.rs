//! HTTPS for the admin plane: a listener that hands axum only connections whose TLS 1.3
//! handshake finished. Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at
//! once and each within [`HANDSHAKE_TIMEOUT`], so a client that opens a socket and says
//! nothing holds neither the accept loop nor a worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshakes in progress at once; more connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 64;
/// A handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP, finishes TLS, yields the secured streams.
pub struct HttpsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl HttpsListener {
    /// Starts accepting on `tcp`.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(HttpsListener {
            ready,
            local,
            accept_task,
        })
    }
}

impl Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (its semaphore closed): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address on an HTTPS connection (axum's `ConnectInfo<SocketAddr>` is for
/// plain TCP listeners only).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, HttpsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, HttpsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}
