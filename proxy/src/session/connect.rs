//! The first packet: reading CONNECT within the connect timeout, refusing what the proxy
//! cannot serve (unknown protocol level, persistent session without client id), assigning
//! a client id to an empty one, and the CONNACK the session answers with.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::{wait_true, Session, Shared};
use crate::auth::{Credentials, Grant};
use crate::codec::{self, CodecError, Connect, Packet, Protocol};
use crate::metrics::METRICS;
use crate::transport::Io;

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before CONNECT")]
    Closed,
    #[error("unsupported protocol level {0}")]
    Unsupported(u8),
}

fn refusal(code: u8) -> Packet {
    Packet::ConnAck {
        session_present: false,
        code,
        receive_maximum: None,
        maximum_qos: None,
        max_packet_size: None,
        assigned_client_id: None,
        topic_alias_max: None,
    }
}

async fn refuse(stream: &mut Box<dyn Io>, proto: Protocol, code: u8, reason: &str) {
    let mut w = BytesMut::new();
    let _ = codec::write(proto, &refusal(code), &mut w);
    let _ = timeout(
        std::time::Duration::from_secs(1),
        super::write_flush(stream, &w),
    )
    .await;
    METRICS.device_rejected.with_label_values(&[reason]).inc();
}

/// Reads and checks the CONNECT. Returns it (with a client id) and, when the proxy chose
/// the id, that id for the CONNACK's Assigned Client Identifier; `None` when the connection
/// was refused or gave up.
pub(super) async fn accept(
    stream: &mut Box<dyn Io>,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(Connect, Option<String>)> {
    let max = shared.opts.max_packet_size;
    // A connection that has not sent CONNECT yet must not hold up a shutdown.
    let mut stop = shared.shutdown.clone();
    let first = tokio::select! {
        r = timeout(shared.opts.connect_timeout, read_connect(stream, rbuf, max)) => r,
        _ = wait_true(&mut stop) => return None,
    };
    let mut connect = match first {
        Ok(Ok(c)) => c,
        Ok(Err(ConnectError::Unsupported(level))) => {
            // MQTT 3.1.1 §3.1.2.2: answer an unknown level with return code 1, then close.
            refuse(stream, Protocol::V4, 0x01, "protocol_version").await;
            debug!(%peer, level, "refused unsupported protocol level");
            return None;
        }
        Ok(Err(e)) => {
            METRICS
                .device_rejected
                .with_label_values(&["bad_connect"])
                .inc();
            debug!(%peer, error = %e, "closing connection without a valid CONNECT");
            return None;
        }
        Err(_) => {
            METRICS
                .device_rejected
                .with_label_values(&["connect_timeout"])
                .inc();
            debug!(%peer, "no CONNECT within the timeout");
            return None;
        }
    };
    let proto = connect.protocol;
    let mut assigned = None;
    if connect.client_id.is_empty() {
        if !connect.clean_session && proto == Protocol::V4 {
            // MQTT 3.1.1 §3.1.3.1: a persistent session needs a client id.
            refuse(stream, proto, 0x02, "client_id").await;
            return None;
        }
        connect.client_id = format!("mqtt-proxy-{:016x}", rand::random::<u64>());
        // MQTT 5 §3.2.2.3.7: the server tells the client the id it assigned.
        if proto == Protocol::V5 {
            assigned = Some(connect.client_id.clone());
        }
    }
    Some((connect, assigned))
}

static AUTH_LOG: crate::metrics::RateLimit = crate::metrics::RateLimit::new();

/// Authenticates the CONNECT (users file, anonymous opt-in); a refusal gets the CONNACK
/// code for the device's protocol version and `None`.
pub(super) async fn authorize(
    stream: &mut Box<dyn Io>,
    connect: &Connect,
    peer: SocketAddr,
    cert_identity: Option<&str>,
    shared: &Shared,
) -> Option<Grant> {
    let creds = Credentials {
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        client_id: &connect.client_id,
        cert_identity,
        peer: peer.ip(),
    };
    match shared.auth.authenticate(creds).await {
        Ok(g) => Some(g),
        Err(denied) => {
            let proto = connect.protocol;
            refuse(stream, proto, denied.connack_code(proto), "auth").await;
            if let Some(held) = AUTH_LOG.allow(10) {
                // The username may be a mistyped password: never log it.
                warn!(%peer, reason = denied.reason(), suppressed = held, "device authentication failed");
            }
            None
        }
    }
}

async fn read_connect(
    stream: &mut Box<dyn Io>,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Connect, ConnectError> {
    loop {
        match codec::read_connect(rbuf, max) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(CodecError::UnsupportedProtocol(l)) => return Err(ConnectError::Unsupported(l)),
            Err(e) => return Err(e.into()),
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}

impl Session {
    /// The CONNACK: `session present` when a kept session was resumed or a bidirectional
    /// broker kept one (e.g. after a proxy restart); the proxy's limits.
    pub(super) fn connack(&self, assigned: Option<String>) -> Packet {
        Packet::ConnAck {
            session_present: self.resume.is_some() || self.upstream_present,
            code: 0,
            receive_maximum: Some(self.shared.opts.receive_maximum),
            maximum_qos: None,
            max_packet_size: Some(self.shared.opts.max_packet_size as u32),
            assigned_client_id: assigned,
            topic_alias_max: Some(self.shared.opts.topic_alias_max),
        }
    }
}
