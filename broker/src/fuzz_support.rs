//! Entry points for the stateful broker fuzz target in `fuzz/` (hidden from the docs; not an
//! API): the real broker state and handshake, served over in-memory streams instead of TCP.

use std::sync::Arc;

use crate::config::{Config, ListenerConfig};
use crate::handle::BrokerHandle;
use crate::state::BrokerState;
use crate::transport::connection::Transport;

impl Transport for tokio::io::DuplexStream {}

/// A broker without listeners; each [`FuzzBroker::connect`] is one client connection.
pub struct FuzzBroker {
    state: Arc<BrokerState>,
    listener: Arc<ListenerConfig>,
    timers: tokio::task::JoinHandle<()>,
}

impl FuzzBroker {
    /// Starts the broker's state and timer task on the current runtime.
    pub fn new(config: Config) -> Result<Self, crate::BrokerError> {
        let listener = Arc::new(ListenerConfig {
            allow_anonymous: true,
            tenant: Some(crate::DEFAULT_TENANT.to_owned()),
            ..ListenerConfig::default()
        });
        // In memory: the fuzzer exercises the protocol engine, not the disk.
        let state = Arc::new(BrokerState::new(config, None)?);
        let timers = tokio::spawn(state.clone().run_timers(std::time::Duration::from_secs(60)));
        Ok(FuzzBroker {
            state,
            listener,
            timers,
        })
    }

    /// A new client connection: the returned stream is the client's end.
    pub fn connect(&self) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let deadline = tokio::time::Instant::now() + self.state.config.limits.connect_timeout();
        self.state.tasks.spawn(crate::handshake::serve_within(
            self.state.clone(),
            server,
            peer,
            self.listener.clone(),
            deadline,
            None,
            std::future::ready(()),
            (
                crate::handshake::HandshakeSlot::new(None, self.state.stats.clone()),
                (),
            ),
        ));
        client
    }

    /// The broker's handle (sessions, stats).
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle::new(self.state.clone())
    }

    /// Shuts down as `Broker::run` does and waits for every connection task.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        self.state
            .sessions
            .kick_all(messs_codec::ReasonCode::ServerShuttingDown);
        self.state.tasks.close();
        self.state.tasks.wait().await;
        self.timers.abort();
    }
}
