//! Raw MQTT 3.1.1 for the load clients: a PUBLISH encoder that writes straight into a
//! batch buffer, a zero-copy frame parser for what brokers send back, and the
//! CONNECT/SUBSCRIBE handshakes over a plain `TcpStream`.
//!
//! Control packets are written with `rumqttc::mqttbytes::v4` (well tested); the two hot
//! paths, encoding PUBLISH and parsing incoming frames, are hand-rolled so that a
//! message costs no allocation: the per-message `String`/`Bytes` of `v4::Publish` made
//! the client, not the broker, the bottleneck.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Packet, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::payload::Header;

/// Largest remaining length MQTT can express.
pub const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed remaining length")]
    BadLength,
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("encode: {0}")]
    Encode(#[from] rumqttc::mqttbytes::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("broker refused: {0}")]
    Refused(String),
}

/// One frame from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Publish {
        qos: u8,
        pkid: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    /// Return code 0 means accepted.
    ConnAck(u8),
    /// Packet id and the first return code (0x80 = failure).
    SubAck(u16, u8),
    PingResp,
    /// Anything a load client does not act on, by packet type.
    Other(u8),
}

pub fn qos_from(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Appends one PUBLISH whose payload is `header` padded to `payload_size`.
pub fn encode_publish(
    out: &mut BytesMut,
    topic: &str,
    qos: u8,
    pkid: u16,
    header: Header,
    payload_size: usize,
) {
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + id_len + payload_size;
    out.reserve(5 + remaining);
    out.put_u8(0x30 | (qos << 1));
    put_remaining_length(out, remaining);
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if qos > 0 {
        out.put_u16(pkid);
    }
    header.write_payload(payload_size, out);
}

/// Appends a control packet (CONNECT, SUBSCRIBE, acks, PINGREQ, DISCONNECT).
pub fn encode(out: &mut BytesMut, packet: Packet) -> Result<(), WireError> {
    packet.write(out, MAX_REMAINING)?;
    Ok(())
}

fn be_u16(body: &[u8], what: &'static str) -> Result<u16, WireError> {
    match body {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(WireError::Malformed(what)),
    }
}

/// Parses the frame at the front of `buf` without consuming it. `Ok(None)` means the
/// frame is not complete yet; otherwise returns the frame and its length in bytes.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&b) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header_len > 4 {
            return Err(WireError::BadLength);
        }
    }
    let frame_len = header_len + remaining;
    let Some(body) = buf.get(header_len..frame_len) else {
        return Ok(None);
    };
    let frame = match byte1 >> 4 {
        3 => {
            let qos = (byte1 >> 1) & 0b11;
            let topic_len = usize::from(be_u16(body, "PUBLISH")?);
            let topic = body
                .get(2..2 + topic_len)
                .ok_or(WireError::Malformed("PUBLISH"))?;
            let mut at = 2 + topic_len;
            let pkid = if qos > 0 {
                at += 2;
                be_u16(&body[at - 2..], "PUBLISH")?
            } else {
                0
            };
            let payload = body.get(at..).ok_or(WireError::Malformed("PUBLISH"))?;
            Frame::Publish {
                qos,
                pkid,
                topic,
                payload,
            }
        }
        2 => Frame::ConnAck(*body.get(1).ok_or(WireError::Malformed("CONNACK"))?),
        4 => Frame::PubAck(be_u16(body, "PUBACK")?),
        5 => Frame::PubRec(be_u16(body, "PUBREC")?),
        6 => Frame::PubRel(be_u16(body, "PUBREL")?),
        7 => Frame::PubComp(be_u16(body, "PUBCOMP")?),
        9 => Frame::SubAck(
            be_u16(body, "SUBACK")?,
            *body.get(2).ok_or(WireError::Malformed("SUBACK"))?,
        ),
        13 => Frame::PingResp,
        other => Frame::Other(other),
    };
    Ok(Some((frame, frame_len)))
}

/// Reads until `want` accepts a frame, with a deadline; frames it declines are dropped.
async fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
    what: &'static str,
    mut want: impl FnMut(Frame<'_>) -> Option<Result<T, WireError>>,
) -> Result<T, WireError> {
    let work = async {
        loop {
            while let Some((frame, len)) = parse_frame(buf)? {
                let got = want(frame);
                buf.advance(len);
                if let Some(result) = got {
                    return result;
                }
            }
            buf.reserve(4096);
            if stream.read_buf(buf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| WireError::Timeout(what))?
}

/// Opens a TCP connection and completes CONNECT/CONNACK (clean session). Returns the
/// stream and whatever bytes were read past the CONNACK.
pub async fn connect(
    addr: &str,
    client_id: &str,
    keep_alive: u16,
    timeout: Duration,
) -> Result<(TcpStream, BytesMut), WireError> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| WireError::Timeout("TCP connect"))??;
    stream.set_nodelay(true)?;
    let mut connect = Connect::new(client_id);
    connect.keep_alive = keep_alive;
    connect.clean_session = true;
    let mut out = BytesMut::new();
    encode(&mut out, Packet::Connect(connect))?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    read_until(
        &mut stream,
        &mut buf,
        timeout,
        "CONNACK",
        |frame| match frame {
            Frame::ConnAck(0) => Some(Ok(())),
            Frame::ConnAck(code) => Some(Err(WireError::Refused(format!("CONNACK code {code}")))),
            _ => None,
        },
    )
    .await?;
    Ok((stream, buf))
}

/// Subscribes to one filter and waits for a successful SUBACK.
pub async fn subscribe(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    filter: &str,
    qos: u8,
    timeout: Duration,
) -> Result<(), WireError> {
    let mut sub = Subscribe::new(filter, qos_from(qos));
    sub.pkid = 1;
    let mut out = BytesMut::new();
    encode(&mut out, Packet::Subscribe(sub))?;
    stream.write_all(&out).await?;
    read_until(stream, buf, timeout, "SUBACK", |frame| match frame {
        Frame::SubAck(1, code) if code & 0x80 != 0 => Some(Err(WireError::Refused(format!(
            "SUBACK failure for {filter}"
        )))),
        Frame::SubAck(1, _) => Some(Ok(())),
        _ => None,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{PubAck, PubComp, PubRec, PubRel, Publish};

    fn header() -> Header {
        Header {
            seq: 7,
            sent_ns: 99,
        }
    }

    #[test]
    fn publish_encoding_matches_rumqttc() {
        for (qos, pkid, size) in [(0u8, 0u16, 16usize), (1, 513, 64), (2, 65535, 300)] {
            let mut ours = BytesMut::new();
            encode_publish(&mut ours, "load/d0/7", qos, pkid, header(), size);

            let mut payload = BytesMut::new();
            header().write_payload(size, &mut payload);
            let mut publish = Publish::from_bytes("load/d0/7", qos_from(qos), payload.freeze());
            publish.pkid = pkid;
            let mut theirs = BytesMut::new();
            encode(&mut theirs, Packet::Publish(publish)).expect("encodes");
            assert_eq!(ours, theirs, "qos {qos} size {size}");
        }
    }

    #[test]
    fn parses_what_it_writes_and_waits_for_partial_frames() {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, "t/d1/7", 1, 9, header(), 200);
        let total = buf.len();
        assert_eq!(parse_frame(&buf[..1]).expect("ok"), None);
        assert_eq!(parse_frame(&buf[..total - 1]).expect("ok"), None);
        let (frame, len) = parse_frame(&buf).expect("ok").expect("complete");
        assert_eq!(len, total);
        let Frame::Publish {
            qos,
            pkid,
            topic,
            payload,
        } = frame
        else {
            panic!("expected publish, got {frame:?}");
        };
        assert_eq!((qos, pkid, topic), (1, 9, &b"t/d1/7"[..]));
        assert_eq!(Header::decode(payload), Some(header()));
        assert_eq!(payload.len(), 200);
    }

    #[test]
    fn parses_acks_and_pings() {
        let cases = [
            (Packet::PubAck(PubAck::new(5)), Frame::PubAck(5)),
            (Packet::PubRec(PubRec::new(6)), Frame::PubRec(6)),
            (Packet::PubRel(PubRel::new(7)), Frame::PubRel(7)),
            (Packet::PubComp(PubComp::new(8)), Frame::PubComp(8)),
            (Packet::PingResp, Frame::PingResp),
            (Packet::PingReq, Frame::Other(12)),
        ];
        for (packet, want) in cases {
            let mut buf = BytesMut::new();
            encode(&mut buf, packet).expect("encodes");
            let (frame, len) = parse_frame(&buf).expect("ok").expect("complete");
            assert_eq!((frame, len), (want, buf.len()));
        }
        // CONNACK accepted, SUBACK failure
        let (frame, _) = parse_frame(&[0x20, 2, 0, 0])
            .expect("ok")
            .expect("complete");
        assert_eq!(frame, Frame::ConnAck(0));
        let (frame, _) = parse_frame(&[0x90, 3, 0, 1, 0x80])
            .expect("ok")
            .expect("complete");
        assert_eq!(frame, Frame::SubAck(1, 0x80));
    }

    #[test]
    fn rejects_malformed_frames() {
        assert!(parse_frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        // PUBLISH whose topic length runs past the frame
        assert!(parse_frame(&[0x30, 3, 0, 9, b'a']).is_err());
        // PUBACK without a packet id
        assert!(parse_frame(&[0x40, 0]).is_err());
    }
}
