//! Numbered payloads, for the checks that matter when many messages flow:
//! nothing missing, nothing out of order, and how long the longest silence
//! was. Payloads are `"<stream>:<n>"`, optionally followed by `":<padding>"`
//! for bulk, so several devices can share a topic.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;

use crate::Received;

/// The payload of message `n` of `stream` (which must not contain `:`).
pub fn numbered(stream: &str, n: u64) -> Bytes {
    Bytes::from(format!("{stream}:{n}"))
}

/// Like [`numbered`], padded to at least `len` bytes.
pub fn numbered_padded(stream: &str, n: u64, len: usize) -> Bytes {
    let mut text = format!("{stream}:{n}:");
    let pad = len.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('.', pad));
    Bytes::from(text)
}

/// Splits a [`numbered`] or [`numbered_padded`] payload into `(stream, n)`.
pub fn parse_numbered(payload: &[u8]) -> Result<(String, u64)> {
    let text = std::str::from_utf8(payload).context("payload is not UTF-8")?;
    let mut parts = text.splitn(3, ':');
    let (Some(stream), Some(n)) = (parts.next(), parts.next()) else {
        let shown: String = text.chars().take(40).collect();
        return Err(anyhow!("payload {shown:?} is not <stream>:<n>"));
    };
    let n = n
        .parse()
        .with_context(|| format!("payload of stream {stream:?}: bad number {n:?}"))?;
    Ok((stream.to_owned(), n))
}

/// The numbers received per stream, in arrival order.
pub fn streams(messages: &[Received]) -> Result<BTreeMap<String, Vec<u64>>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in messages {
        let (stream, n) = parse_numbered(&m.payload)?;
        out.entry(stream).or_default().push(n);
    }
    Ok(out)
}

/// Numbers of `0..count` that never arrived (duplicates are fine here).
pub fn missing(numbers: &[u64], count: u64) -> Vec<u64> {
    let mut seen = vec![false; usize::try_from(count).unwrap_or(usize::MAX)];
    for &n in numbers {
        if let Some(slot) = usize::try_from(n).ok().and_then(|i| seen.get_mut(i)) {
            *slot = true;
        }
    }
    (0..count)
        .filter(|&n| !usize::try_from(n).is_ok_and(|i| seen[i]))
        .collect()
}

/// The longest time between two consecutive arrivals (zero for < 2 messages).
pub fn largest_gap(messages: &[Received]) -> Duration {
    messages
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_round_trips_and_gaps_are_found() {
        assert_eq!(
            parse_numbered(&numbered("dev1", 42)).expect("parse"),
            ("dev1".to_owned(), 42)
        );
        let padded = numbered_padded("s", 7, 100);
        assert_eq!(padded.len(), 100);
        assert_eq!(parse_numbered(&padded).expect("parse"), ("s".to_owned(), 7));
        assert!(parse_numbered(b"nonumber").is_err());
        assert_eq!(missing(&[0, 2, 2, 4, 9], 5), [1, 3]);
        assert!(missing(&[1, 0], 2).is_empty());
    }
}
