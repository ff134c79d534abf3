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

/// Sizes a connection's read buffer to its traffic. `read_buf` needs room before the
/// socket is readable, so a fixed buffer is paid by every idle connection: 4,000 devices
/// × 4 sockets × 8 KiB is 128 MB of buffers that mostly hold a 4-byte PUBACK. This starts
/// small, doubles while reads fill the room given (a busy connection reaches
/// [`ReadSizer::MAX`] in a few reads, so batching is unchanged), and hands a large buffer
/// back once it is empty and the reads got small again.
#[derive(Debug)]
pub struct ReadSizer {
    /// Room to give the next read.
    next: usize,
    /// Room the last [`prepare`](Self::prepare) left.
    room: usize,
}

impl Default for ReadSizer {
    fn default() -> Self {
        Self {
            next: Self::MIN,
            room: 0,
        }
    }
}

impl ReadSizer {
    /// Enough for a CONNACK, acks and a small PUBLISH in one read.
    pub const MIN: usize = 512;
    /// What the busiest connection reads at once.
    pub const MAX: usize = 64 * 1024;

    /// Makes room for the next read.
    pub fn prepare(&mut self, buf: &mut bytes::BytesMut) {
        if buf.capacity() - buf.len() < self.next {
            buf.reserve(self.next);
        }
        self.room = buf.capacity() - buf.len();
    }

    /// After a read of `n` bytes into the room [`prepare`](Self::prepare) made.
    pub fn read(&mut self, n: usize) {
        if n >= self.room {
            self.next = (self.next * 2).min(Self::MAX);
        } else if n < self.next / 4 {
            self.next = (self.next / 2).max(Self::MIN);
        }
    }

    /// Once the buffer is empty: drops an allocation much larger than the reads need now.
    pub fn shrink(&self, buf: &mut bytes::BytesMut) {
        if buf.is_empty() && buf.capacity() > 4 * self.next {
            *buf = bytes::BytesMut::new();
        }
    }
}

/// Clears a write buffer whose contents went out, letting go of an allocation a burst
/// left much larger than what is written now (a busy connection keeps its buffer, so it
/// does not reallocate per write).
pub fn clear_written(buf: &mut bytes::BytesMut) {
    if buf.capacity() > 16 * 1024 && buf.len() < buf.capacity() / 16 {
        *buf = bytes::BytesMut::new();
    } else {
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn read_room_grows_with_full_reads_and_shrinks_when_idle() {
        let mut s = ReadSizer::default();
        let mut buf = BytesMut::new();
        s.prepare(&mut buf);
        assert!(buf.capacity() >= ReadSizer::MIN && buf.capacity() < 4 * ReadSizer::MIN);
        // Busy: every read fills the room, which doubles up to MAX.
        for _ in 0..12 {
            s.prepare(&mut buf);
            let room = buf.capacity() - buf.len();
            buf.resize(buf.len() + room, 0);
            s.read(room);
        }
        s.prepare(&mut buf);
        assert!(buf.capacity() - buf.len() >= ReadSizer::MAX);
        // Idle again: small reads halve the room; an emptied big buffer is let go.
        buf.clear();
        for _ in 0..12 {
            s.prepare(&mut buf);
            s.read(4);
            buf.clear();
            s.shrink(&mut buf);
        }
        assert!(buf.capacity() < 4 * ReadSizer::MIN, "{}", buf.capacity());
        s.prepare(&mut buf);
        assert!(buf.capacity() >= ReadSizer::MIN);
    }

    #[test]
    fn write_buffer_is_kept_while_busy_and_released_after_a_burst() {
        let mut buf = BytesMut::with_capacity(256 * 1024);
        buf.resize(200 * 1024, 0);
        clear_written(&mut buf);
        assert!(buf.is_empty() && buf.capacity() >= 256 * 1024, "busy: kept");
        buf.resize(100, 0);
        clear_written(&mut buf);
        assert!(
            buf.is_empty() && buf.capacity() == 0,
            "after the burst: released"
        );
    }
}
