//! Topic ACLs: a tenant's ordered allow/deny rules compiled for one client (its username,
//! groups and client id substituted for `%u` and `%c`), and the three questions the broker
//! asks of them:
//!
//! - may this client publish to a topic (with this QoS and retain flag)?
//! - may it subscribe to a filter? Only if **every** topic the filter can match is allowed,
//!   so a device allowed `devices/%c/#` that subscribes to `#` is refused;
//! - may a message be delivered to it (retained, queued, or live after a rule change)?
//!
//! The first rule that matches decides; none matching means deny. A rule whose `%c`/`%u`
//! value contains `+`, `#` or `/` could widen its filter, so an allow rule with such a value
//! matches nothing and a deny rule matches everything it governs (fail closed).

use messs_codec::QoS;
use messs_storage::registry::{AclAction, AclRule, AclSubject};

/// One level of a compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Lit(Box<str>),
    Plus,
    Hash,
}

/// A compiled filter: its levels, or every topic (a deny rule whose substitution was
/// unsafe).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Levels(Vec<Level>),
    Everything,
}

fn parse_levels(filter: &str) -> Vec<Level> {
    filter
        .split('/')
        .map(|l| match l {
            "+" => Level::Plus,
            "#" => Level::Hash,
            lit => Level::Lit(lit.into()),
        })
        .collect()
}

fn starts_with_dollar(levels: &[Level]) -> bool {
    matches!(levels.first(), Some(Level::Lit(l)) if l.starts_with('$'))
}

fn first_is_wildcard(levels: &[Level]) -> bool {
    matches!(levels.first(), Some(Level::Plus | Level::Hash))
}

/// Does `pattern` match the topic (given as levels)? `$` topics are not matched by a
/// leading wildcard [MQTT-4.7.2-1].
fn matches(pattern: &[Level], topic: &str) -> bool {
    if topic.starts_with('$') && first_is_wildcard(pattern) {
        return false;
    }
    let mut levels = topic.split('/');
    for p in pattern {
        match p {
            Level::Hash => return true,
            Level::Plus => {
                if levels.next().is_none() {
                    return false;
                }
            }
            Level::Lit(l) => match levels.next() {
                Some(t) if t == &**l => {}
                _ => return false,
            },
        }
    }
    levels.next().is_none()
}

/// Does rule filter `r` match every topic filter `f` can match?
fn covers(r: &[Level], f: &[Level]) -> bool {
    if starts_with_dollar(f) && first_is_wildcard(r) {
        return false;
    }
    let mut i = 0;
    loop {
        match (r.get(i), f.get(i)) {
            (Some(Level::Hash), _) => return true,
            (None, None) => return true,
            (Some(Level::Plus), Some(Level::Lit(_) | Level::Plus)) => {}
            (Some(Level::Lit(a)), Some(Level::Lit(b))) if a == b => {}
            _ => return false,
        }
        i += 1;
    }
}

/// Is there a topic both `r` and `f` match?
fn intersects(r: &[Level], f: &[Level]) -> bool {
    if (starts_with_dollar(f) && first_is_wildcard(r))
        || (starts_with_dollar(r) && first_is_wildcard(f))
    {
        return false;
    }
    let mut i = 0;
    loop {
        match (r.get(i), f.get(i)) {
            (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Level::Plus), _) | (_, Some(Level::Plus)) => {}
            (Some(Level::Lit(a)), Some(Level::Lit(b))) => {
                if a != b {
                    return false;
                }
            }
        }
        i += 1;
    }
}

/// One rule, compiled for one client.
#[derive(Debug, Clone)]
struct Compiled {
    allow: bool,
    publish: bool,
    subscribe: bool,
    pattern: Pattern,
    qos_mask: u8,
    retain: Option<bool>,
}

impl Compiled {
    fn applies(&self, qos: QoS, retain: bool) -> bool {
        self.qos_mask & (1 << qos as u8) != 0 && self.retain.is_none_or(|r| r == retain)
    }

    fn matches_topic(&self, topic: &str) -> bool {
        match &self.pattern {
            Pattern::Everything => true,
            Pattern::Levels(l) => matches(l, topic),
        }
    }
}

/// Who a client is, as far as ACL rules care.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subject<'a> {
    /// `None` for an anonymous client.
    pub username: Option<&'a str>,
    pub client_id: &'a str,
    pub groups: &'a [String],
}

/// The topics a device token allows (its `acl` claim): it can only narrow what the
/// tenant's rules allow, never widen it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct TokenScope {
    /// Filters the client may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Filters the client may subscribe to (and receive from).
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// A token scope, compiled.
#[derive(Debug, Clone)]
struct Scope {
    publish: Vec<Vec<Level>>,
    subscribe: Vec<Vec<Level>>,
}

impl Scope {
    fn new(t: &TokenScope) -> Self {
        let compile = |v: &[String]| v.iter().map(|f| parse_levels(f)).collect();
        Scope {
            publish: compile(&t.publish),
            subscribe: compile(&t.subscribe),
        }
    }
}

/// A tenant's rules compiled for one client.
#[derive(Debug, Clone)]
pub(crate) struct ClientAcl {
    rules: Vec<Compiled>,
    /// Everything is allowed by the rules (a tenant without rules under
    /// `acl.tenant_without_rules = "allow"`: the try-out default).
    allow_all: bool,
    /// A token's narrowing, if it had one.
    scope: Option<Box<Scope>>,
}

/// Longest `%c`/`%u` value substituted into a rule. A CONNECT may carry a 64 KiB client id,
/// and every rule that names `%c` would hold a copy of it per connection; a longer value is
/// treated like an unsafe one (allow rules skip it, deny rules deny everything).
const MAX_SUBSTITUTION: usize = 256;

/// A value safe to put into a filter level.
fn safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_SUBSTITUTION && !v.contains(['+', '#', '/'])
}

impl ClientAcl {
    /// Allows everything the token scope (if any) allows.
    pub fn allow_all(scope: Option<&TokenScope>) -> Self {
        ClientAcl {
            rules: Vec::new(),
            allow_all: true,
            scope: scope.map(|s| Box::new(Scope::new(s))),
        }
    }

    /// Compiles the rules that apply to `who`, narrowed by a token's scope.
    pub fn compile(rules: &[AclRule], who: &Subject<'_>, scope: Option<&TokenScope>) -> Self {
        let mut out = Vec::new();
        for r in rules {
            let applies = match &r.subject {
                AclSubject::All => true,
                AclSubject::Anonymous => who.username.is_none(),
                AclSubject::User(u) => who.username == Some(u.as_str()),
                AclSubject::Group(g) => who.groups.iter().any(|x| x == g),
            };
            if !applies {
                continue;
            }
            let mut unsafe_value = false;
            let mut filter = r.filter.clone();
            if filter.contains("%c") {
                unsafe_value |= !safe(who.client_id);
                filter = filter.replace("%c", who.client_id);
            }
            if filter.contains("%u") {
                let u = who.username.unwrap_or("");
                unsafe_value |= !safe(u);
                filter = filter.replace("%u", u);
            }
            let pattern = match (unsafe_value, r.allow) {
                (true, true) => continue,
                (true, false) => Pattern::Everything,
                (false, _) => Pattern::Levels(parse_levels(&filter)),
            };
            out.push(Compiled {
                allow: r.allow,
                publish: matches!(r.action, AclAction::Publish | AclAction::Both),
                subscribe: matches!(r.action, AclAction::Subscribe | AclAction::Both),
                pattern,
                qos_mask: r.qos_mask,
                retain: r.retain,
            });
        }
        ClientAcl {
            rules: out,
            allow_all: false,
            scope: scope.map(|s| Box::new(Scope::new(s))),
        }
    }

    /// Whether every check passes without looking at rules.
    pub fn is_allow_all(&self) -> bool {
        self.allow_all && self.scope.is_none()
    }

    /// May the client publish to `topic`?
    pub fn may_publish(&self, topic: &str, qos: QoS, retain: bool) -> bool {
        let scoped = self
            .scope
            .as_ref()
            .is_none_or(|s| s.publish.iter().any(|f| matches(f, topic)));
        scoped && (self.allow_all || self.decide(topic, qos, retain, |r| r.publish))
    }

    /// May a message on `topic` be delivered to the client?
    pub fn may_receive(&self, topic: &str, qos: QoS, retain: bool) -> bool {
        let scoped = self
            .scope
            .as_ref()
            .is_none_or(|s| s.subscribe.iter().any(|f| matches(f, topic)));
        scoped && (self.allow_all || self.decide(topic, qos, retain, |r| r.subscribe))
    }

    fn decide(&self, topic: &str, qos: QoS, retain: bool, kind: fn(&Compiled) -> bool) -> bool {
        self.rules
            .iter()
            .find(|r| kind(r) && r.applies(qos, retain) && r.matches_topic(topic))
            .is_some_and(|r| r.allow)
    }

    /// May the client subscribe to `filter` (without any `$share/group/` prefix) at up to
    /// `qos`? Only if every message it could receive through it is allowed: the first
    /// subscribe rule that covers the filter for every QoS up to `qos` and either retain
    /// flag allows, and no earlier rule that could match one of its topics denies.
    pub fn may_subscribe(&self, filter: &str, qos: QoS) -> bool {
        let f = parse_levels(filter);
        if let Some(s) = &self.scope {
            if !s.subscribe.iter().any(|r| covers(r, &f)) {
                return false;
            }
        }
        if self.allow_all {
            return true;
        }
        let needed: u8 = (1u8 << (qos as u8 + 1)) - 1;
        for r in self.rules.iter().filter(|r| r.subscribe) {
            let (covered, touched) = match &r.pattern {
                Pattern::Everything => (true, true),
                Pattern::Levels(l) => (covers(l, &f), intersects(l, &f)),
            };
            if !touched || r.qos_mask & needed == 0 {
                continue;
            }
            if !r.allow {
                return false;
            }
            if covered && r.qos_mask & needed == needed && r.retain.is_none() {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: u32, allow: bool, action: AclAction, filter: &str) -> AclRule {
        AclRule {
            id,
            allow,
            action,
            filter: filter.into(),
            subject: AclSubject::All,
            qos_mask: 7,
            retain: None,
        }
    }

    fn who<'a>(client_id: &'a str, username: Option<&'a str>) -> Subject<'a> {
        Subject {
            username,
            client_id,
            groups: &[],
        }
    }

    #[test]
    fn device_scoped_rules_refuse_wider_subscriptions() {
        let rules = [rule(1, true, AclAction::Both, "devices/%c/#")];
        let acl = ClientAcl::compile(&rules, &who("d1", Some("u")), None);
        assert!(acl.may_subscribe("devices/d1/#", QoS::ExactlyOnce));
        assert!(acl.may_subscribe("devices/d1/+/temp", QoS::AtMostOnce));
        assert!(acl.may_subscribe("devices/d1", QoS::AtMostOnce));
        assert!(!acl.may_subscribe("#", QoS::AtMostOnce));
        assert!(!acl.may_subscribe("devices/+/#", QoS::AtMostOnce));
        assert!(!acl.may_subscribe("devices/d2/#", QoS::AtMostOnce));
        assert!(acl.may_publish("devices/d1/temp", QoS::AtLeastOnce, false));
        assert!(!acl.may_publish("devices/d2/temp", QoS::AtLeastOnce, false));
        assert!(!acl.may_publish("other", QoS::AtMostOnce, false));
    }

    #[test]
    fn first_match_wins_and_an_earlier_deny_inside_a_filter_refuses_it() {
        let rules = [
            rule(1, false, AclAction::Both, "a/secret/#"),
            rule(2, true, AclAction::Both, "a/#"),
        ];
        let acl = ClientAcl::compile(&rules, &who("c", None), None);
        assert!(!acl.may_publish("a/secret/x", QoS::AtMostOnce, false));
        assert!(acl.may_publish("a/open", QoS::AtMostOnce, false));
        assert!(!acl.may_subscribe("a/#", QoS::AtMostOnce));
        assert!(!acl.may_subscribe("a/+/x", QoS::AtMostOnce));
        assert!(acl.may_subscribe("a/open/#", QoS::AtMostOnce));
        assert!(acl.may_receive("a/open", QoS::AtMostOnce, true));
        assert!(!acl.may_receive("a/secret/1", QoS::AtMostOnce, true));
    }

    #[test]
    fn no_rule_means_deny_and_dollar_topics_need_a_literal_rule() {
        let acl = ClientAcl::compile(&[], &who("c", None), None);
        assert!(!acl.may_publish("x", QoS::AtMostOnce, false));
        assert!(!acl.may_subscribe("x", QoS::AtMostOnce));
        let acl = ClientAcl::compile(
            &[rule(1, true, AclAction::Both, "#")],
            &who("c", None),
            None,
        );
        assert!(acl.may_subscribe("#", QoS::AtMostOnce));
        assert!(!acl.may_subscribe("$SYS/#", QoS::AtMostOnce));
        assert!(!acl.may_receive("$SYS/x", QoS::AtMostOnce, false));
    }

    #[test]
    fn unsafe_substitutions_never_widen_an_allow_and_always_trigger_a_deny() {
        let rules = [
            rule(1, false, AclAction::Publish, "locked/%c"),
            rule(2, true, AclAction::Both, "devices/%c/#"),
            rule(3, true, AclAction::Both, "public/#"),
        ];
        for id in ["#", "+", "a/b"] {
            let acl = ClientAcl::compile(&rules, &who(id, None), None);
            assert!(!acl.may_subscribe("devices/#", QoS::AtMostOnce), "{id}");
            assert!(!acl.may_subscribe("devices/x/#", QoS::AtMostOnce), "{id}");
            // The deny rule with the unsafe value denies every publish.
            assert!(!acl.may_publish("public/x", QoS::AtMostOnce, false), "{id}");
            assert!(acl.may_subscribe("public/#", QoS::AtMostOnce), "{id}");
        }
        // A client id longer than MAX_SUBSTITUTION is not copied into any rule.
        let long = "c".repeat(MAX_SUBSTITUTION + 1);
        let acl = ClientAcl::compile(&rules, &who(&long, None), None);
        assert_eq!(acl.rules.len(), 2, "the unsafe deny and the plain allow");
        assert!(!acl.may_subscribe(&format!("devices/{long}/#"), QoS::AtMostOnce));
        assert!(!acl.may_publish("public/x", QoS::AtMostOnce, false));
        // %u of an anonymous client is unsafe (empty).
        let acl = ClientAcl::compile(
            &[rule(1, true, AclAction::Both, "users/%u/#")],
            &who("c", None),
            None,
        );
        assert!(!acl.may_publish("users//x", QoS::AtMostOnce, false));
    }

    #[test]
    fn qos_retain_and_subject_conditions() {
        let mut qos0_only = rule(1, true, AclAction::Both, "t/#");
        qos0_only.qos_mask = 1;
        let mut no_retain = rule(2, false, AclAction::Publish, "r/#");
        no_retain.retain = Some(true);
        let mut group = rule(3, true, AclAction::Both, "r/#");
        group.subject = AclSubject::Group("admins".into());
        let mut anon = rule(4, true, AclAction::Subscribe, "pub/#");
        anon.subject = AclSubject::Anonymous;
        let rules = [qos0_only, no_retain, group, anon];
        let groups = ["admins".to_owned()];
        let admin = Subject {
            username: Some("boss"),
            client_id: "c",
            groups: &groups,
        };
        let acl = ClientAcl::compile(&rules, &admin, None);
        assert!(acl.may_publish("t/x", QoS::AtMostOnce, false));
        assert!(!acl.may_publish("t/x", QoS::AtLeastOnce, false));
        assert!(acl.may_subscribe("t/#", QoS::AtMostOnce));
        assert!(!acl.may_subscribe("t/#", QoS::AtLeastOnce));
        assert!(acl.may_publish("r/x", QoS::AtMostOnce, false));
        assert!(!acl.may_publish("r/x", QoS::AtMostOnce, true));
        assert!(!acl.may_subscribe("pub/#", QoS::AtMostOnce));
        let acl = ClientAcl::compile(&rules, &who("c", None), None);
        assert!(!acl.may_publish("r/x", QoS::AtMostOnce, false));
        assert!(acl.may_subscribe("pub/#", QoS::AtMostOnce));
    }

    #[test]
    fn a_token_scope_only_narrows() {
        let scope = TokenScope {
            publish: vec!["devices/d1/up".into()],
            subscribe: vec!["devices/d1/down/#".into()],
        };
        let rules = [rule(1, true, AclAction::Both, "devices/%c/#")];
        let acl = ClientAcl::compile(&rules, &who("d1", Some("u")), Some(&scope));
        assert!(acl.may_publish("devices/d1/up", QoS::AtMostOnce, false));
        assert!(!acl.may_publish("devices/d1/other", QoS::AtMostOnce, false));
        assert!(acl.may_subscribe("devices/d1/down/#", QoS::AtMostOnce));
        assert!(!acl.may_subscribe("devices/d1/#", QoS::AtMostOnce));
        assert!(acl.may_receive("devices/d1/down/x", QoS::AtMostOnce, false));
        assert!(!acl.may_receive("devices/d1/up", QoS::AtMostOnce, false));
        // A scope wider than the rules gains nothing.
        let wide = TokenScope {
            publish: vec!["#".into()],
            subscribe: vec!["#".into()],
        };
        let acl = ClientAcl::compile(&rules, &who("d1", Some("u")), Some(&wide));
        assert!(!acl.may_publish("devices/d2/x", QoS::AtMostOnce, false));
        assert!(!acl.may_subscribe("#", QoS::AtMostOnce));
        let open = ClientAcl::allow_all(Some(&scope));
        assert!(!open.is_allow_all());
        assert!(!open.may_publish("x", QoS::AtMostOnce, false));
    }

    #[test]
    fn coverage_and_intersection_tables() {
        let l = parse_levels;
        for (r, f, cov, int) in [
            ("#", "a/b", true, true),
            ("a/#", "a", true, true),
            ("a/+", "a/b", true, true),
            ("a/+", "a/#", false, true),
            ("a/b", "a/+", false, true),
            ("a/b", "a/c", false, false),
            ("a/+/c", "a/b/+", false, true),
            ("a", "a/b", false, false),
            ("a/b", "a", false, false),
            ("+", "$SYS", false, false),
            ("$SYS/#", "#", false, false),
        ] {
            assert_eq!(covers(&l(r), &l(f)), cov, "covers({r}, {f})");
            assert_eq!(intersects(&l(r), &l(f)), int, "intersects({r}, {f})");
        }
    }
}
