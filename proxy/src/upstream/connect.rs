//! Opening the transport (TCP, optionally TLS) and building the CONNECT that impersonates
//! the device towards the broker.

use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::warn;

use super::{Io, Upstream, CONNECT_TIMEOUT};
use crate::codec::{Connect, Packet, Protocol, Will};

impl Upstream {
    pub(super) async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let c = &self.broker().config;
        let addr = (c.address.as_str(), c.port);
        let tcp = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect {}:{}: {e}", c.address, c.port)),
            Err(_) => return Err(format!("connect {}:{}: timed out", c.address, c.port)),
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.broker().tls else {
            return Ok(Box::new(tcp));
        };
        if c.insecure_skip_verify {
            warn!(
                broker = c.label(),
                "TLS certificate verification is disabled (insecureSkipVerify)"
            );
        }
        let name = crate::tls::server_name(&c.address).map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        match timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Box::new(s)),
            Ok(Err(e)) => Err(format!("TLS handshake with {}: {e}", c.address)),
            Err(_) => Err(format!("TLS handshake with {}: timed out", c.address)),
        }
    }

    /// The largest packet read from the broker.
    pub(super) fn inbound_max(&self) -> usize {
        self.p.max_packet_size.max(1 << 20)
    }

    pub(super) fn connect_packet(&self) -> Packet {
        let b = self.broker();
        // The will follows the same rules as a publish: topic filters, prefix, QoS cap.
        let will = self
            .p
            .will
            .as_ref()
            .filter(|w| b.rule.accepts(w.message.topic_str()))
            .map(|w| {
                let mut m = w.message.clone();
                if let Some(t) = b.rule.outbound_topic(m.topic_str()) {
                    m.topic = t.into();
                }
                m.qos = b.rule.qos(m.qos);
                Will {
                    message: m,
                    delay_interval: w.delay_interval,
                }
            });
        Packet::Connect(Box::new(Connect {
            protocol: self.proto,
            client_id: self.client_id(),
            clean_session: self.p.clean_session,
            keep_alive: self.p.keep_alive,
            will,
            username: b.config.username.clone(),
            password: b.password.as_ref().map(|p| p.expose().to_string()),
            session_expiry: if self.proto == Protocol::V5 {
                self.p.session_expiry
            } else {
                None
            },
            receive_maximum: None,
            // Our own inbound limit, so an MQTT 5 broker drops what we could not read
            // instead of closing the connection over it (3.1.1 has no way to say this).
            max_packet_size: (self.proto == Protocol::V5)
                .then(|| u32::try_from(self.inbound_max()).unwrap_or(u32::MAX)),
        }))
    }
}
