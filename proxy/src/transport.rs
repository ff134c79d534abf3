//! What a device connection is once its transport is set up, whatever carried it (TCP,
//! TLS, WebSocket, WebSocket over TLS): a byte stream, the peer, and the identity of a
//! verified client certificate. The listeners produce it, the session consumes it; neither
//! knows the other's details.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A device byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The transport a connection came in on; the `transport` label of listener metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// One accepted device connection, ready for MQTT.
pub struct Conn {
    pub io: Box<dyn Io>,
    pub peer: SocketAddr,
    pub transport: Transport,
    /// CN (else first DNS SAN) of a client certificate the TLS listener verified.
    pub cert_identity: Option<String>,
}
