//! Per-device ACLs as pure functions: a user's publish and subscribe filters, with `%u`
//! (username) and `%c` (client id) substituted as mosquitto does, resolved once per
//! connection into an [`Acl`] that answers "may this device publish to / subscribe to".
//!
//! Matching reuses the router's topic-filter functions, so the ACL and the forwarding
//! rules can never disagree about what a filter means.

use crate::router;

/// What one authenticated (or anonymous) device may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acl {
    /// No restriction (anonymous devices when `--allow-anonymous`, users without ACL keys).
    AllowAll,
    /// Only topics matched by these filters (already substituted).
    Filters {
        publish: Vec<String>,
        subscribe: Vec<String>,
    },
}

impl Acl {
    /// Resolves a user's filter patterns for one connection. A pattern whose substitution
    /// would inject `+`, `#` or `/` (a username like `a/#`) is dropped rather than widened:
    /// an ACL must never grant more because of what a device chose as its name.
    /// `None` for a list means "not restricted" (`#`).
    pub fn resolve(
        publish: Option<&[String]>,
        subscribe: Option<&[String]>,
        username: &str,
        client_id: &str,
    ) -> Acl {
        if publish.is_none() && subscribe.is_none() {
            return Acl::AllowAll;
        }
        let all = ["#".to_string()];
        let sub = |list: Option<&[String]>| -> Vec<String> {
            list.unwrap_or(&all)
                .iter()
                .filter_map(|p| substitute(p, username, client_id))
                .filter(|f| router::valid_filter(f))
                .collect()
        };
        Acl::Filters {
            publish: sub(publish),
            subscribe: sub(subscribe),
        }
    }

    /// May the device publish to `topic`?
    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Acl::AllowAll => true,
            Acl::Filters { publish, .. } => publish.iter().any(|f| router::matches(f, topic)),
        }
    }

    /// May the device subscribe to `filter`? Only if one allowed filter covers every
    /// topic the requested one can match (`a/#` allows `a/b/+`, not `#`).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Acl::AllowAll => true,
            Acl::Filters { subscribe, .. } => {
                subscribe.iter().any(|f| router::filter_contains(f, filter))
            }
        }
    }
}

/// `%u` → username, `%c` → client id; `None` when a value would change the filter's
/// structure or when `%u` is used for a device without a username.
pub fn substitute(pattern: &str, username: &str, client_id: &str) -> Option<String> {
    let unsafe_value = |v: &str| v.is_empty() || v.contains(['+', '#', '/', '\0']);
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        match tail.chars().next() {
            Some('u') => {
                if unsafe_value(username) {
                    return None;
                }
                out.push_str(username);
            }
            Some('c') => {
                if unsafe_value(client_id) {
                    return None;
                }
                out.push_str(client_id);
            }
            // Any other `%` is literal, as in mosquitto.
            _ => {
                out.push('%');
                rest = tail;
                continue;
            }
        }
        rest = &tail[1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn substitution_table() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("devices/%u/#", "alice", "c1", Some("devices/alice/#")),
            ("devices/%c/up", "alice", "c1", Some("devices/c1/up")),
            ("%u/%c", "alice", "c1", Some("alice/c1")),
            ("plain/topic", "alice", "c1", Some("plain/topic")),
            ("100%/x", "alice", "c1", Some("100%/x")),
            ("a/%x/%u", "alice", "c1", Some("a/%x/alice")),
            // A name with wildcards or separators must not widen the pattern.
            ("devices/%u/#", "a/#", "c1", None),
            ("devices/%u/#", "+", "c1", None),
            ("devices/%c", "alice", "x/y", None),
            ("devices/%u", "", "c1", None),
            ("trailing%", "alice", "c1", Some("trailing%")),
        ];
        for (pattern, user, client, want) in cases {
            assert_eq!(
                substitute(pattern, user, client).as_deref(),
                *want,
                "substitute({pattern:?}, {user:?}, {client:?})"
            );
        }
    }

    #[test]
    fn publish_and_subscribe_table() {
        let pubs = v(&["devices/%u/#", "shared/status"]);
        let subs = v(&["commands/%c/+", "broadcast/#"]);
        let acl = Acl::resolve(Some(&pubs), Some(&subs), "alice", "c1");
        let publish: &[(&str, bool)] = &[
            ("devices/alice/temp", true),
            ("devices/alice", true),
            ("devices/bob/temp", false),
            ("shared/status", true),
            ("shared/status/x", false),
            ("$SYS/x", false),
        ];
        for (topic, want) in publish {
            assert_eq!(acl.may_publish(topic), *want, "publish {topic}");
        }
        let subscribe: &[(&str, bool)] = &[
            ("commands/c1/+", true),
            ("commands/c1/reboot", true),
            ("commands/c1/#", false),
            ("commands/c2/reboot", false),
            ("broadcast/#", true),
            ("broadcast/a/+", true),
            ("#", false),
            ("+/c1/reboot", false),
        ];
        for (filter, want) in subscribe {
            assert_eq!(acl.may_subscribe(filter), *want, "subscribe {filter}");
        }
    }

    #[test]
    fn omitted_lists_allow_all_and_empty_lists_deny_all() {
        assert_eq!(Acl::resolve(None, None, "u", "c"), Acl::AllowAll);
        let only_pub = Acl::resolve(Some(&v(&["a/#"])), None, "u", "c");
        assert!(only_pub.may_publish("a/b") && !only_pub.may_publish("b"));
        assert!(only_pub.may_subscribe("anything/#"));
        let none = Acl::resolve(Some(&[]), Some(&[]), "u", "c");
        assert!(!none.may_publish("a") && !none.may_subscribe("a"));
    }

    #[test]
    fn an_unsafe_username_drops_the_pattern_instead_of_widening_it() {
        let pubs = v(&["devices/%u/#"]);
        let acl = Acl::resolve(Some(&pubs), Some(&pubs), "#", "c");
        assert!(!acl.may_publish("devices/x/y"));
        assert!(!acl.may_subscribe("devices/#"));
    }
}
