//! Pure routing decisions: which upstreams get a publish, under which topic and QoS, and
//! how topics and filters are mapped on the way back from a bidirectional broker.
//!
//! No I/O and no `.await` here, so every rule is a table test.

/// A shared subscription `$share/{group}/{filter}` (MQTT 5 §4.8.2) split into its group and
/// filter part; `None` for an ordinary filter. A malformed share (empty group, wildcard in the
/// group, no filter part) also yields `None` and is then refused by [`valid_filter`].
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, f) = rest.split_once('/')?;
    (!group.is_empty() && !group.contains(['+', '#']) && !f.is_empty()).then_some((group, f))
}

/// The part of a filter topics are matched against: the filter of a shared subscription.
pub fn match_part(filter: &str) -> &str {
    split_shared(filter).map_or(filter, |(_, f)| f)
}

/// MQTT topic filter validity (MQTT 3.1.1 §4.7 / 5.0 §4.7): non-empty, no NUL, `#` only as
/// the whole last level, `+` only as a whole level; a shared subscription needs a group
/// without wildcards and a valid filter part.
pub fn valid_filter(filter: &str) -> bool {
    if filter.starts_with("$share/") || filter == "$share" {
        return split_shared(filter).is_some_and(|(_, f)| valid_plain_filter(f));
    }
    valid_plain_filter(filter)
}

fn valid_plain_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65535 || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// A topic name a client may publish to: non-empty, no wildcards, no NUL.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65535 && !topic.contains(['+', '#', '\0'])
}

/// Does `topic` match `filter`? Topics starting with `$` are not matched by a filter whose
/// first level is a wildcard (MQTT §4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Could some topic match both filters? Used to intersect a device subscription with a
/// broker's `subscriptionTopics`.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is every topic matched by `inner` also matched by `outer`?
pub fn filter_contains(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(il)) if il != "#" => {}
            (Some(ol), Some(il)) if ol == il => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The per-broker routing rules, compiled once per broker-set version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRule {
    /// Device publishes must match one of these; empty means all.
    pub topics: Vec<String>,
    pub topic_prefix: Option<String>,
    pub max_qos: Option<u8>,
    pub bidirectional: bool,
    pub subscription_topics: Vec<String>,
}

impl RouteRule {
    pub fn from_broker(b: &crate::broker::BrokerConfig) -> Self {
        Self {
            topics: b.topics.clone(),
            topic_prefix: b.topic_prefix.clone(),
            max_qos: b.max_qos,
            bidirectional: b.bidirectional,
            subscription_topics: b.subscription_topics.clone(),
        }
    }

    /// Does a device publish on `topic` go to this broker?
    pub fn accepts(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|f| matches(f, topic))
    }

    /// QoS used towards this broker.
    pub fn qos(&self, qos: u8) -> u8 {
        self.max_qos.map_or(qos, |m| qos.min(m))
    }

    /// The topic as sent to this broker (prefix prepended), or `None` when it is unchanged.
    pub fn outbound_topic(&self, topic: &str) -> Option<String> {
        self.topic_prefix.as_ref().map(|p| format!("{p}{topic}"))
    }

    /// A topic received from this broker as the device must see it: the prefix stripped.
    /// `None` when the topic lies outside the prefix (not ours to deliver).
    pub fn inbound_topic<'a>(&self, topic: &'a str) -> Option<&'a str> {
        match &self.topic_prefix {
            None => Some(topic),
            Some(p) => topic.strip_prefix(p.as_str()).filter(|t| !t.is_empty()),
        }
    }

    /// The upstream filters that serve a device subscription `filter` on this broker,
    /// intersected with `subscriptionTopics` (when set) and prefixed. Empty when this broker
    /// does not serve it.
    ///
    /// A shared subscription keeps its `$share/{group}/` in front: the prefix and the
    /// intersection apply to the filter part only.
    pub fn upstream_filters(&self, filter: &str) -> Vec<String> {
        if !self.bidirectional {
            return Vec::new();
        }
        if let Some((group, f)) = split_shared(filter) {
            return self
                .upstream_filters(f)
                .into_iter()
                .map(|uf| format!("$share/{group}/{uf}"))
                .collect();
        }
        let prefixed = |f: &str| match &self.topic_prefix {
            Some(p) => format!("{p}{f}"),
            None => f.to_string(),
        };
        if self.subscription_topics.is_empty() {
            return vec![prefixed(filter)];
        }
        let mut out: Vec<String> = Vec::new();
        for s in &self.subscription_topics {
            let narrower = if filter_contains(s, filter) {
                filter
            } else if filter_contains(filter, s) {
                s.as_str()
            } else if filters_overlap(filter, s) {
                // Neither contains the other: subscribe to the device's filter and let
                // `delivers` drop what falls outside `subscriptionTopics`.
                filter
            } else {
                continue;
            };
            let f = prefixed(narrower);
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// Is a message received from this broker (topic already stripped of the prefix)
    /// allowed towards the device by `subscriptionTopics`?
    pub fn delivers(&self, topic: &str) -> bool {
        self.subscription_topics.is_empty()
            || self.subscription_topics.iter().any(|f| matches(f, topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validity() {
        for (f, ok) in [
            ("a/b", true),
            ("#", true),
            ("a/#", true),
            ("+/a/+", true),
            ("+", true),
            ("/", true),
            ("", false),
            ("a/#/b", false),
            ("a#", false),
            ("a/b+", false),
            ("a\0b", false),
            ("$share/g/t/#", true),
            ("$share/g/+", true),
            ("$share/g", false),
            ("$share//t", false),
            ("$share/g+/t", false),
            ("$share/g/t/#/x", false),
            ("$share", false),
        ] {
            assert_eq!(valid_filter(f), ok, "{f:?}");
        }
    }

    #[test]
    fn topic_matching_table() {
        for (filter, topic, want) in [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+/+", "/x", true),
            ("a/+/c", "a//c", true),
            ("a/b", "a/b/", false),
            ("sensors/+/temp", "sensors/kitchen/temp", true),
        ] {
            assert_eq!(matches(filter, topic), want, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn overlap_and_containment() {
        for (a, b, overlap, a_contains_b) in [
            ("cmd/#", "cmd/x", true, true),
            ("cmd/x", "cmd/#", true, false),
            ("+/x", "cmd/+", true, false),
            ("a/b", "a/c", false, false),
            ("a/+", "a/+", true, true),
            ("a/+", "a/#", true, false),
            ("#", "x/y/z", true, true),
        ] {
            assert_eq!(filters_overlap(a, b), overlap, "{a} overlaps {b}");
            assert_eq!(filter_contains(a, b), a_contains_b, "{a} contains {b}");
        }
    }

    #[test]
    fn outbound_rules() {
        let r = RouteRule {
            topics: vec!["sensors/#".into()],
            topic_prefix: Some("site1/".into()),
            max_qos: Some(1),
            ..Default::default()
        };
        assert!(r.accepts("sensors/t"));
        assert!(!r.accepts("cmd/t"));
        assert_eq!(
            r.outbound_topic("sensors/t").as_deref(),
            Some("site1/sensors/t")
        );
        assert_eq!(r.qos(2), 1);
        assert_eq!(r.qos(0), 0);
        let all = RouteRule::default();
        assert!(all.accepts("anything/at/all"));
        assert_eq!(all.outbound_topic("x"), None);
        assert_eq!(all.qos(2), 2);
    }

    #[test]
    fn inbound_rules() {
        let r = RouteRule {
            topic_prefix: Some("site1/".into()),
            bidirectional: true,
            subscription_topics: vec!["cmd/#".into()],
            ..Default::default()
        };
        assert_eq!(r.inbound_topic("site1/cmd/x"), Some("cmd/x"));
        assert_eq!(r.inbound_topic("other/cmd/x"), None);
        assert_eq!(r.upstream_filters("cmd/x"), vec!["site1/cmd/x"]);
        assert_eq!(r.upstream_filters("#"), vec!["site1/cmd/#"]);
        assert!(r.upstream_filters("telemetry/#").is_empty());
        assert!(r.delivers("cmd/x"));
        assert!(!r.delivers("telemetry/x"));
        assert_eq!(
            r.upstream_filters("$share/g/cmd/#"),
            vec!["$share/g/site1/cmd/#"],
            "prefix applied to the filter part, not in front of $share"
        );
        assert_eq!(split_shared("$share/g/cmd/#"), Some(("g", "cmd/#")));
        assert_eq!(match_part("$share/g/cmd/#"), "cmd/#");
        assert_eq!(match_part("cmd/#"), "cmd/#");
        let one_way = RouteRule::default();
        assert!(one_way.upstream_filters("#").is_empty());
    }
}
