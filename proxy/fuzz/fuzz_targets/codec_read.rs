//! The device-facing decoder on arbitrary bytes, both protocol versions: CONNECT first,
//! then packet after packet from the same buffer, as the session reads them; every
//! decoded packet is encoded again (the proxy writes what it read, e.g. acks).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_proxy::codec::{self, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let max = 4096;
    let mut buf = BytesMut::from(rest);
    let proto = match codec::read_connect(&mut buf, max) {
        Ok(Some(c)) => c.protocol,
        Ok(None) | Err(_) if selector & 1 == 0 => Protocol::V4,
        Ok(None) | Err(_) => Protocol::V5,
    };
    let mut buf = if selector & 2 == 0 { buf } else { BytesMut::from(rest) };
    let mut out = BytesMut::new();
    for _ in 0..64 {
        match codec::read(proto, &mut buf, max) {
            Ok(Some(p)) => {
                out.clear();
                let _ = codec::write(proto, &p, &mut out);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
