//! The one rule for the client id a device's upstream sessions use on a broker, and its
//! inverse (spool files are named by client id and are mapped back to their device).
//!
//! A broker allows one connection per client id: a second one kicks the first off, the
//! first reconnects and kicks the second, and so on. One proxy never does that to itself
//! (its registry hands a device's sessions over), but two replicas in front of the same
//! brokers would whenever the same device id is live on both (a device that reconnected
//! through the load balancer to another pod while its old pod still drains, or devices
//! sharing an id). So:
//!
//! - [`UpstreamClientId::Device`] (default): `{prefix}{device id}`. The broker sees the
//!   device's own id and keeps its persistent session whichever pod serves it next. Safe
//!   with one replica, or when the Service pins each device to one replica (session
//!   affinity).
//! - [`UpstreamClientId::Instance`]: `{prefix}{device id}@{instance id}` (the instance id is
//!   the pod name in Kubernetes). Replicas never collide; the price is that a device's
//!   broker-side persistent session belongs to the replica that created it.

use clap::ValueEnum;
use serde::Deserialize;

/// How upstream client ids are made (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamClientId {
    /// `{prefix}{device id}`.
    #[default]
    Device,
    /// `{prefix}{device id}@{instance id}`.
    Instance,
}

/// Separates the device id from the instance id in [`UpstreamClientId::Instance`] mode.
pub const INSTANCE_SEPARATOR: char = '@';

/// The suffix every upstream client id of this process carries (`None` in device mode).
pub fn suffix(mode: UpstreamClientId, instance_id: &str) -> Option<String> {
    match mode {
        UpstreamClientId::Device => None,
        UpstreamClientId::Instance => Some(format!("{INSTANCE_SEPARATOR}{instance_id}")),
    }
}

/// The client id of `device_id`'s session on a broker with `prefix`.
pub fn upstream(prefix: &str, device_id: &str, suffix: Option<&str>) -> String {
    format!("{prefix}{device_id}{}", suffix.unwrap_or_default())
}

/// The device an upstream client id made by [`upstream`] belongs to; `None` when the id was
/// not made with this prefix and suffix (another broker's, or another instance's).
pub fn device_of<'a>(client_id: &'a str, prefix: &str, suffix: Option<&str>) -> Option<&'a str> {
    let rest = client_id.strip_prefix(prefix)?;
    match suffix {
        Some(s) => rest.strip_suffix(s),
        None => Some(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_mode_is_prefix_and_device_id() {
        let s = suffix(UpstreamClientId::Device, "pod-a");
        assert_eq!(s, None);
        assert_eq!(upstream("px-", "dev/1", s.as_deref()), "px-dev/1");
        assert_eq!(device_of("px-dev/1", "px-", None), Some("dev/1"));
    }

    #[test]
    fn instance_mode_differs_per_instance_and_round_trips() {
        let a = suffix(UpstreamClientId::Instance, "proxy-7d9-a");
        let b = suffix(UpstreamClientId::Instance, "proxy-7d9-b");
        let (ida, idb) = (
            upstream("", "dev-1", a.as_deref()),
            upstream("", "dev-1", b.as_deref()),
        );
        assert_eq!(ida, "dev-1@proxy-7d9-a");
        assert_ne!(ida, idb);
        assert_eq!(device_of(&ida, "", a.as_deref()), Some("dev-1"));
        // Another instance's spool is not this instance's device.
        assert_eq!(device_of(&idb, "", a.as_deref()), None);
        assert_eq!(device_of("dev-1", "x-", a.as_deref()), None);
    }
}
