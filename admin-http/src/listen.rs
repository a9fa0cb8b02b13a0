//! The admin plane's listeners: every connection holds one of `[admin] max_connections`
//! places for as long as it is open (a client that opens sockets and keeps them can take
//! the admin plane's places, never the broker's memory), and is closed when it moves no
//! byte either way for `[admin] idle_timeout_secs` (a slow or silent client gives its place
//! back); over HTTPS only connections whose TLS 1.3 handshake finished reach axum. Handshakes run in their own tasks, each
//! within [`HANDSHAKE_TIMEOUT`], so a client that says nothing holds neither the accept
//! loop nor a worker.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection, the place it holds, and its idle deadline.
pub struct Held<S> {
    stream: S,
    _place: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Held<S> {
    fn new(stream: S, place: OwnedSemaphorePermit, idle: Duration) -> Self {
        Held {
            stream,
            _place: place,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Bytes moved: the idle clock starts again.
    fn progress(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Waiting: an error once the connection has been idle too long.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin connection idle",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Takes a place, then accepts one TCP connection (retrying after errors such as running
/// out of file descriptors).
async fn accept_held(
    tcp: &TcpListener,
    places: &Arc<Semaphore>,
    idle: Duration,
) -> Option<(Held<TcpStream>, SocketAddr)> {
    let place = places.clone().acquire_owned().await.ok()?;
    loop {
        match tcp.accept().await {
            Ok((stream, peer)) => return Some((Held::new(stream, place, idle), peer)),
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Plain HTTP, at most `max` connections at once.
pub struct PlainListener {
    tcp: TcpListener,
    places: Arc<Semaphore>,
    idle: Duration,
}

impl PlainListener {
    /// Limits `tcp` to `max` open connections, each closed after `idle` without traffic.
    pub fn new(tcp: TcpListener, max: usize, idle: Duration) -> Self {
        PlainListener {
            tcp,
            places: Arc::new(Semaphore::new(max)),
            idle,
        }
    }
}

impl Listener for PlainListener {
    type Io = Held<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match accept_held(&self.tcp, &self.places, self.idle).await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// HTTPS (TLS 1.3), at most `max` connections at once, handshakes included.
pub struct HttpsListener {
    ready: mpsc::Receiver<(Held<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl HttpsListener {
    /// Accepts on `tcp`, finishing each TLS handshake in a task of its own.
    pub fn new(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        max: usize,
        idle: Duration,
    ) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(max.max(1));
        let places = Arc::new(Semaphore::new(max));
        let accept_task = tokio::spawn(async move {
            while let Some((held, peer)) = accept_held(&tcp, &places, idle).await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Held { stream, _place, .. } = held;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((Held::new(tls, _place, idle), peer)).await;
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
    type Io = Held<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address, as the admin plane's listeners give it to handlers.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, PlainListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, HttpsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, HttpsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}
