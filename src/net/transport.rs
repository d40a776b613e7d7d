//! The transport: TCP with TCP_NODELAY, noise and yamux (README "Transport"), and the
//! swarm's behaviours: the stream protocols and libp2p's connection limits.

use super::NetError;
use super::limits::{
    MAX_CONNECTIONS_PER_PEER, MAX_NEGOTIATING_STREAMS, MAX_PENDING_INCOMING,
    MAX_STREAMS_PER_CONNECTION,
};
use crate::trust::SecretKey;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, connection_limits, noise, tcp, yamux};
use std::time::Duration;

/// What the swarm runs: the connection limits, then the four stream protocols.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub struct Behaviour {
    limits: connection_limits::Behaviour,
    pub streams: libp2p_stream::Behaviour,
}

/// Builds this node's swarm, keyed by its node key, taking at most `inbound` inbound
/// connections at once (its share of the open files, `fds`).
pub fn build_swarm(key: &SecretKey, inbound: Option<u32>) -> Result<Swarm<Behaviour>, NetError> {
    let t = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_established_incoming(inbound)
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER));
    Ok(
        libp2p::SwarmBuilder::with_existing_identity(key.to_keypair())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                || {
                    let mut c = yamux::Config::default();
                    c.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
                    c
                },
            )
            .map_err(|e| t(&e))?
            .with_behaviour(|_| Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                streams: libp2p_stream::Behaviour::new(),
            })
            .map_err(|e| t(&e))?
            .with_swarm_config(|c| {
                // The control stream keeps a tree connection busy; idle ones are strays.
                c.with_idle_connection_timeout(Duration::from_secs(60))
                    .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_STREAMS)
            })
            .build(),
    )
}
