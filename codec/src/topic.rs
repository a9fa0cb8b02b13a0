//! Validated topic names and topic filters (spec §4.7). Once a packet holds one of these
//! newtypes, the rest of the broker never re-checks the rules.

use std::sync::Arc;

use crate::error::DecodeError;

/// The longest topic, as a UTF-8 string field can hold.
const MAX_TOPIC_LEN: usize = 65_535;

/// A topic name a PUBLISH is sent to: no wildcards [MQTT-3.3.2-2], no U+0000, at most 65,535
/// bytes. Cheap to clone (shared), because fan-out hands it to every subscriber.
///
/// It may be empty only inside a v5 PUBLISH that carries a Topic Alias (the receiver
/// resolves the alias); [`TopicName::new`] never produces an empty name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates a topic name.
    pub fn new(name: &str) -> Result<Self, DecodeError> {
        if name.is_empty() {
            return Err(DecodeError::TopicNameInvalid("empty"));
        }
        Self::check(name)?;
        Ok(TopicName(Arc::from(name)))
    }

    /// The empty name of a v5 PUBLISH that relies on a Topic Alias the receiver already
    /// knows (§3.3.2.3.4). Only for that use.
    pub fn empty() -> Self {
        TopicName(Arc::from(""))
    }

    fn check(name: &str) -> Result<(), DecodeError> {
        if name.len() > MAX_TOPIC_LEN {
            return Err(DecodeError::TopicNameInvalid("longer than 65535 bytes"));
        }
        if name.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(DecodeError::TopicNameInvalid("contains a wildcard"));
        }
        if name.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True only for the placeholder of an aliased PUBLISH.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Topics starting with `$` are for the server; leading wildcards never match them
    /// [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic filter a client subscribes with, valid per §4.7.1: `#` alone in the last level,
/// `+` alone in its level, not empty, no U+0000. A shared subscription
/// `$share/{group}/{filter}` [MQTT-4.8.2-1] is recognised and its parts kept apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    full: Arc<str>,
    /// Byte offset where the filter proper starts (0 unless shared).
    filter_start: usize,
    /// The share name, for `$share/...` filters.
    share_group: Option<Arc<str>>,
}

impl TopicFilter {
    /// Validates a topic filter.
    pub fn new(filter: &str) -> Result<Self, DecodeError> {
        if filter.is_empty() {
            return Err(DecodeError::TopicFilterInvalid("empty"));
        }
        if filter.len() > MAX_TOPIC_LEN {
            return Err(DecodeError::TopicFilterInvalid("longer than 65535 bytes"));
        }
        if filter.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        let (share_group, filter_start) = match filter.strip_prefix("$share/") {
            Some(rest) => {
                let Some((group, inner)) = rest.split_once('/') else {
                    return Err(DecodeError::TopicFilterInvalid(
                        "shared filter without a filter",
                    ));
                };
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(DecodeError::TopicFilterInvalid("invalid share name"));
                }
                if inner.is_empty() {
                    return Err(DecodeError::TopicFilterInvalid("shared filter is empty"));
                }
                (Some(Arc::from(group)), filter.len() - inner.len())
            }
            None => (None, 0),
        };
        Self::check_wildcards(&filter[filter_start..])?;
        Ok(TopicFilter {
            full: Arc::from(filter),
            filter_start,
            share_group,
        })
    }

    fn check_wildcards(filter: &str) -> Result<(), DecodeError> {
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(DecodeError::TopicFilterInvalid(
                    "'#' must be the whole last level",
                ));
            }
            if level.contains('+') && level != "+" {
                return Err(DecodeError::TopicFilterInvalid("'+' must be a whole level"));
            }
        }
        Ok(())
    }

    /// The filter as the client sent it (with any `$share/group/` prefix).
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The filter that is matched against topics (without a `$share/group/` prefix).
    pub fn filter(&self) -> &str {
        &self.full[self.filter_start..]
    }

    /// The share name of a shared subscription.
    pub fn share_group(&self) -> Option<&str> {
        self.share_group.as_deref()
    }

    /// True if the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

/// Whether `topic` matches `filter` (both already validated), per §4.7: `+` matches one
/// level, `#` the parent level and everything below it, and a leading wildcard never matches
/// a `$` topic [MQTT-4.7.2-1].
pub fn topic_matches(filter: &str, topic: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules() {
        assert!(TopicName::new("a/b").is_ok());
        assert!(TopicName::new("/").is_ok());
        assert_eq!(
            TopicName::new(""),
            Err(DecodeError::TopicNameInvalid("empty"))
        );
        assert!(TopicName::new("a/+").is_err());
        assert!(TopicName::new("a/#").is_err());
        assert_eq!(TopicName::new("a\0"), Err(DecodeError::NullCharacter));
    }

    #[test]
    fn topic_filter_rules() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a/+/c",
            "$share/g/a/#",
            "$SYS/#",
            "a//b",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b#",
            "a+",
            "+a/b",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
        let s = TopicFilter::new("$share/grp/a/+").unwrap();
        assert_eq!(s.share_group(), Some("grp"));
        assert_eq!(s.filter(), "a/+");
    }

    /// The matching table of spec §4.7 (non-normative examples) plus the `$` rule.
    #[test]
    fn matching_table() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/x", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }
}
