//! One device's subscriptions, as a broker keeps them: at most one per filter string
//! (a new SUBSCRIBE to the same filter replaces it), shared subscriptions
//! (`$share/{group}/{filter}`) matched on their filter part, and the lookup a delivery needs
//! (granted QoS, Retain As Published, subscription identifiers).
//!
//! Filters without wildcards sit in a hash map keyed by the topic they match, so a device
//! with thousands of exact subscriptions costs one lookup per message; only wildcard
//! filters are scanned.

use std::collections::HashMap;

use crate::codec::SubFilter;
use crate::router;

#[derive(Debug, Default, Clone)]
pub struct SubTable {
    /// Exact filters by the topic they match (a plain filter and shared ones may coincide).
    exact: HashMap<String, Vec<SubFilter>>,
    wild: Vec<SubFilter>,
    len: usize,
}

/// What a device gets a message on a topic with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The highest QoS among the matching subscriptions (MQTT §3.3.5).
    pub qos: u8,
    pub retain_as_published: bool,
    /// Subscription identifiers of the matching subscriptions (MQTT 5 §3.3.2.3.8).
    pub ids: Vec<usize>,
}

fn is_wild(filter: &str) -> bool {
    router::match_part(filter).contains(['+', '#'])
}

impl SubTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, filter: &str) -> Option<&SubFilter> {
        if is_wild(filter) {
            self.wild.iter().find(|s| s.filter == filter)
        } else {
            self.exact
                .get(router::match_part(filter))?
                .iter()
                .find(|s| s.filter == filter)
        }
    }

    fn get_mut(&mut self, filter: &str) -> Option<&mut SubFilter> {
        if is_wild(filter) {
            self.wild.iter_mut().find(|s| s.filter == filter)
        } else {
            self.exact
                .get_mut(router::match_part(filter))?
                .iter_mut()
                .find(|s| s.filter == filter)
        }
    }

    /// Adds or replaces the subscription to `f.filter`; `true` when it replaced one.
    pub fn insert(&mut self, f: SubFilter) -> bool {
        if let Some(s) = self.get_mut(&f.filter) {
            *s = f;
            return true;
        }
        self.len += 1;
        if is_wild(&f.filter) {
            self.wild.push(f);
        } else {
            self.exact
                .entry(router::match_part(&f.filter).to_owned())
                .or_default()
                .push(f);
        }
        false
    }

    /// Removes the subscription to exactly `filter`; `false` when there was none.
    pub fn remove(&mut self, filter: &str) -> bool {
        let removed = if is_wild(filter) {
            let before = self.wild.len();
            self.wild.retain(|s| s.filter != filter);
            before != self.wild.len()
        } else {
            let key = router::match_part(filter);
            match self.exact.get_mut(key) {
                Some(v) => {
                    let before = v.len();
                    v.retain(|s| s.filter != filter);
                    let removed = before != v.len();
                    if v.is_empty() {
                        self.exact.remove(key);
                    }
                    removed
                }
                None => false,
            }
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Sets the granted QoS of an existing subscription.
    pub fn set_qos(&mut self, filter: &str, qos: u8) {
        if let Some(s) = self.get_mut(filter) {
            s.qos = qos;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &SubFilter> {
        self.exact.values().flatten().chain(self.wild.iter())
    }

    fn matching<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a SubFilter> + 'a {
        let exact = self.exact.get(topic).into_iter().flatten();
        let wild = self
            .wild
            .iter()
            .filter(move |s| router::matches(router::match_part(&s.filter), topic));
        exact.chain(wild)
    }

    /// Does an ordinary (not shared) subscription match `topic`? A broker hands a client's
    /// own publish back on those (without No Local).
    pub fn matches_unshared(&self, topic: &str) -> bool {
        self.matching(topic)
            .any(|s| router::split_shared(&s.filter).is_none())
    }

    /// How a message on `topic` is delivered, or `None` when no subscription matches.
    /// `own` marks the device's own publish, delivered locally: No Local subscriptions skip
    /// it, and so do shared ones (the broker picks the one member of the group that gets
    /// it, which may be this device's upstream).
    pub fn grant(&self, topic: &str, own: bool) -> Option<Grant> {
        let mut grant: Option<Grant> = None;
        let skip = |s: &SubFilter| own && (s.no_local || router::split_shared(&s.filter).is_some());
        for s in self.matching(topic).filter(|s| !skip(s)) {
            let g = grant.get_or_insert(Grant {
                qos: 0,
                retain_as_published: false,
                ids: Vec::new(),
            });
            g.qos = g.qos.max(s.qos);
            g.retain_as_published |= s.retain_as_published;
            if let Some(id) = s.id {
                if !g.ids.contains(&id) {
                    g.ids.push(id);
                }
            }
        }
        grant
    }
}

impl FromIterator<SubFilter> for SubTable {
    fn from_iter<I: IntoIterator<Item = SubFilter>>(iter: I) -> Self {
        let mut t = SubTable::default();
        for f in iter {
            t.insert(f);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(f: &str, qos: u8) -> SubFilter {
        SubFilter::new(f, qos)
    }

    #[test]
    fn grant_is_the_highest_match_with_ids() {
        let mut t = SubTable::default();
        t.insert(sub("a/#", 0));
        t.insert(SubFilter {
            id: Some(7),
            ..sub("a/b", 2)
        });
        t.insert(sub("c", 1));
        t.insert(sub("$share/g/x/+", 1));
        assert_eq!(t.len(), 4);
        let g = t.grant("a/b", false).expect("match");
        assert_eq!((g.qos, g.ids), (2, vec![7]));
        assert_eq!(t.grant("a/x", false).map(|g| g.qos), Some(0));
        assert_eq!(t.grant("z", false), None);
        assert_eq!(
            t.grant("x/1", false).map(|g| g.qos),
            Some(1),
            "shared subscriptions match on their filter part"
        );
        let mut nl = sub("n", 1);
        nl.no_local = true;
        t.insert(nl);
        assert_eq!(t.grant("n", true), None, "No Local hides the device's own");
        assert!(t.grant("n", false).is_some());
        assert_eq!(
            t.grant("x/1", true),
            None,
            "the device's own publish is not looped back to a shared subscription"
        );
        assert!(!t.matches_unshared("x/1"));
        assert!(t.matches_unshared("a/b"));
    }

    #[test]
    fn insert_replaces_and_remove_counts() {
        let mut t = SubTable::default();
        assert!(!t.insert(sub("a", 0)));
        assert!(t.insert(sub("a", 2)), "same filter: replaced");
        assert!(
            !t.insert(sub("$share/g/a", 1)),
            "a shared one is another subscription"
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("a").map(|s| s.qos), Some(2));
        assert!(t.remove("a"));
        assert!(!t.remove("a"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.grant("a", false).map(|g| g.qos), Some(1));
        t.set_qos("$share/g/a", 0);
        assert_eq!(t.iter().map(|s| s.qos).collect::<Vec<_>>(), vec![0]);
    }
}
