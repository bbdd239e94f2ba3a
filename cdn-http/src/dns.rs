//! Membership from DNS, shared by the edge (its same-region peers) and the router (the edges
//! of each region): what a name's records say ([`Resolver`]: SRV records naming each member,
//! or the A/AAAA records of a name with each address named by its PTR record), how absence is
//! judged ([`Tracker`]: a member is dropped only after it has been missing from successful
//! answers for a grace period; a failed query changes nothing, so a resolver outage never
//! empties a list), and the loop that re-resolves at the records' TTL within bounds
//! ([`follow`]). A Kubernetes headless Service is the intended source: its SRV records
//! `_peer._udp.<svc>.<ns>.svc.cluster.local` name each pod's stable DNS name
//! (`<pod>.<svc>.<ns>.svc.cluster.local`), which is the member's identity (peer certificates
//! name it, rendezvous hashing uses it); an address changes with each restart, a name does not.
//!
//! The resolver is hickory's: the system's `/etc/resolv.conf` by default, or one configured
//! nameserver (`[dns] nameserver = "IP:PORT"`, over UDP and TCP), which is how tests point it
//! at a DNS server on 127.0.0.1.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver as Hickory, TokioResolver};
use serde::{Deserialize, Serialize};

/// `[dns]`: how names are resolved and followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// `IP:PORT` of the one nameserver asked (UDP, then TCP); unset: the system's
    /// (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<SocketAddr>,
    /// Names are re-resolved when their records' TTL runs out, but never sooner than this
    /// (nor, after a failed query, later than this)...
    pub refresh_min_ms: u64,
    /// ...and never later than this.
    pub refresh_max_ms: u64,
    /// A member left out of every successful answer for this long (counted from the first
    /// that left it out) is dropped. Failed queries (timeouts, SERVFAIL, no nameserver) do
    /// not count as leaving it out.
    pub grace_ms: u64,
    /// Time allowed for one query.
    pub timeout_ms: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameserver: None,
            refresh_min_ms: 1_000,
            refresh_max_ms: 30_000,
            grace_ms: 30_000,
            timeout_ms: 2_000,
        }
    }
}

impl DnsSettings {
    pub fn is_default(&self) -> bool {
        *self == DnsSettings::default()
    }

    /// What serde cannot check: `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.refresh_min_ms == 0 {
            return Err(("dns.refresh_min_ms", "must be at least 1"));
        }
        if self.refresh_max_ms < self.refresh_min_ms {
            return Err(("dns.refresh_max_ms", "must be at least refresh_min_ms"));
        }
        if self.timeout_ms == 0 {
            return Err(("dns.timeout_ms", "must be at least 1"));
        }
        Ok(())
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// When to look again after an answer valid for `ttl` (`None`: the query failed).
    pub fn next_refresh(&self, ttl: Option<Duration>) -> Duration {
        let min = Duration::from_millis(self.refresh_min_ms);
        let max = Duration::from_millis(self.refresh_max_ms.max(self.refresh_min_ms));
        ttl.unwrap_or(min).clamp(min, max)
    }
}

/// What one membership entry asks DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Query {
    /// SRV records: each target is a member named by the target's DNS name, at the record's
    /// port (or `port` when set), its address from the target's A/AAAA records.
    Srv { name: String, port: Option<u16> },
    /// A/AAAA records of `name`: each address is a member at `port`, named by its PTR record
    /// (the address itself when there is none).
    Host { name: String, port: u16 },
}

impl Query {
    /// The query of an entry written as `srv = "..."` or `name = "..."` with `port`; errors
    /// are `(field, message)`.
    pub fn from_fields(
        name: Option<&str>,
        srv: Option<&str>,
        port: Option<u16>,
    ) -> Result<Query, (&'static str, String)> {
        let valid = |field: &'static str, n: &str| match Name::from_ascii(n) {
            Ok(_) if !n.trim().is_empty() => Ok(n.trim().to_owned()),
            _ => Err((field, format!("`{n}` is not a DNS name"))),
        };
        if port == Some(0) {
            return Err(("port", "must be 1 to 65535".into()));
        }
        match (name, srv, port) {
            (Some(_), Some(_), _) => Err(("srv", "give `name` (A/AAAA) or `srv`, not both".into())),
            (None, None, _) => Err(("name", "give `name` (A/AAAA, with `port`) or `srv`".into())),
            (Some(_), None, None) => Err((
                "port",
                "a `name` (A/AAAA records) needs the members' `port`".into(),
            )),
            (Some(n), None, Some(port)) => Ok(Query::Host {
                name: valid("name", n)?,
                port,
            }),
            (None, Some(s), port) => Ok(Query::Srv {
                name: valid("srv", s)?,
                port,
            }),
        }
    }

    /// The name asked, for logs and metric labels.
    pub fn name(&self) -> &str {
        match self {
            Query::Srv { name, .. } | Query::Host { name, .. } => name,
        }
    }
}

/// One member as DNS names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its DNS name (lower case, no trailing dot): the SRV target, the PTR name, or the
    /// address when no name was found.
    pub host: String,
    pub addr: SocketAddr,
}

impl Member {
    /// The first label of [`Member::host`] (a StatefulSet pod's name).
    pub fn label(&self) -> &str {
        self.host.split('.').next().unwrap_or(&self.host)
    }
}

/// The answer to one [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A successful answer (NXDOMAIN and "no records" are successful answers with no
    /// members). `kept`: members the SRV records still name but whose address lookup failed
    /// (present, address unknown: they keep the one they had).
    Found {
        members: Vec<Member>,
        kept: Vec<String>,
        ttl: Duration,
    },
    /// No answer (timeout, SERVFAIL, refused, no nameserver): says nothing about members.
    Failed(String),
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: {0}")]
pub struct DnsError(String);

/// The resolver of one node.
pub struct Resolver(TokioResolver);

fn host_of(name: &Name) -> String {
    name.to_utf8().trim_end_matches('.').to_ascii_lowercase()
}

fn no_records(e: &NetError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

impl Resolver {
    pub fn new(s: &DnsSettings) -> Result<Self, DnsError> {
        let mut builder = match s.nameserver {
            Some(at) => {
                let conn = |mut c: ConnectionConfig| {
                    c.port = at.port();
                    c
                };
                let ns = NameServerConfig::new(
                    at.ip(),
                    true,
                    vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                );
                Hickory::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| DnsError(e.to_string()))?,
        };
        let opts = builder.options_mut();
        opts.timeout = Duration::from_millis(s.timeout_ms.max(1));
        opts.attempts = 1;
        // Refreshes follow the TTL themselves; a cached answer would only hide a change.
        opts.cache_size = 0;
        // Membership is what DNS says: /etc/hosts (a pod's names its own address) would
        // rename members (PTR) or hide a record's change.
        opts.use_hosts_file = ResolveHosts::Never;
        builder
            .build()
            .map(Resolver)
            .map_err(|e| DnsError(e.to_string()))
    }

    /// Asks DNS once.
    pub async fn resolve(&self, q: &Query) -> Answer {
        match q {
            Query::Srv { name, port } => self.srv(name, *port).await,
            Query::Host { name, port } => self.host(name, *port).await,
        }
    }

    async fn srv(&self, name: &str, port: Option<u16>) -> Answer {
        let now = Instant::now();
        let lookup = match self.0.srv_lookup(name).await {
            Ok(l) => l,
            Err(e) if no_records(&e) => return empty(),
            Err(e) => return Answer::Failed(e.to_string()),
        };
        let mut ttl = lookup.valid_until().saturating_duration_since(now);
        let mut members = Vec::new();
        let mut kept = Vec::new();
        for rec in lookup.answers() {
            let RData::SRV(srv) = &rec.data else { continue };
            let host = host_of(&srv.target);
            // "." is "no such service here" (RFC 2782).
            if host.is_empty() || members.iter().any(|m: &Member| m.host == host) {
                continue;
            }
            let port = port.unwrap_or(srv.port);
            match self.0.lookup_ip(srv.target.clone()).await {
                Ok(ips) => {
                    ttl = ttl.min(ips.valid_until().saturating_duration_since(now));
                    if let Some(ip) = first_ip(ips.iter()) {
                        members.push(Member {
                            host,
                            addr: SocketAddr::new(ip, port),
                        });
                    }
                }
                // The target has no address (any more): not a member.
                Err(e) if no_records(&e) => {}
                Err(e) => {
                    tracing::debug!(target = %host, error = %e, "SRV target did not resolve: kept as it was");
                    kept.push(host);
                }
            }
        }
        Answer::Found { members, kept, ttl }
    }

    async fn host(&self, name: &str, port: u16) -> Answer {
        let now = Instant::now();
        let ips = match self.0.lookup_ip(name).await {
            Ok(l) => l,
            Err(e) if no_records(&e) => return empty(),
            Err(e) => return Answer::Failed(e.to_string()),
        };
        let ttl = ips.valid_until().saturating_duration_since(now);
        let mut addrs: Vec<IpAddr> = ips.iter().collect();
        addrs.sort();
        addrs.dedup();
        let mut members: Vec<Member> = Vec::new();
        for ip in addrs {
            let host = match self.0.reverse_lookup(ip).await {
                Ok(ptr) => ptr
                    .answers()
                    .iter()
                    .find_map(|r| match &r.data {
                        RData::PTR(p) => Some(host_of(&p.0)),
                        _ => None,
                    })
                    .unwrap_or_else(|| ip.to_string()),
                Err(_) => ip.to_string(),
            };
            if !members.iter().any(|m| m.host == host) {
                members.push(Member {
                    host,
                    addr: SocketAddr::new(ip, port),
                });
            }
        }
        Answer::Found {
            members,
            kept: Vec::new(),
            ttl,
        }
    }
}

fn empty() -> Answer {
    Answer::Found {
        members: Vec::new(),
        kept: Vec::new(),
        ttl: Duration::ZERO,
    }
}

/// One address per member, the same one on every refresh: the lowest.
fn first_ip(ips: impl Iterator<Item = IpAddr>) -> Option<IpAddr> {
    ips.min()
}

/// The members of one query as the answers so far say, with the grace rule.
#[derive(Debug)]
pub struct Tracker {
    grace: Duration,
    /// Host → address and, while successful answers leave it out, since when they have.
    seen: BTreeMap<String, (SocketAddr, Option<Instant>)>,
}

impl Tracker {
    pub fn new(grace: Duration) -> Self {
        Tracker {
            grace,
            seen: BTreeMap::new(),
        }
    }

    /// Takes in one answer; true when the members changed. A member appears at its first
    /// successful answer and leaves once successful answers have left it out for the grace,
    /// counted from the first one that did; a failed query changes nothing. So an outage,
    /// however long, followed by one partial answer (a nameserver restarting with half its
    /// data) drops nobody before the grace.
    pub fn observe(&mut self, answer: &Answer, now: Instant) -> bool {
        let Answer::Found { members, kept, .. } = answer else {
            return false;
        };
        let mut changed = false;
        for m in members {
            match self.seen.insert(m.host.clone(), (m.addr, None)) {
                Some((addr, _)) if addr == m.addr => {}
                _ => changed = true,
            }
        }
        for host in kept {
            if let Some((_, missing)) = self.seen.get_mut(host) {
                *missing = None;
            }
        }
        let grace = self.grace;
        self.seen.retain(|host, (_, missing)| {
            let named = members.iter().any(|m| m.host == *host) || kept.contains(host);
            if named {
                return true;
            }
            let since = *missing.get_or_insert(now);
            let keep = now.saturating_duration_since(since) < grace;
            changed |= !keep;
            keep
        });
        changed
    }

    /// The members, by host name.
    pub fn members(&self) -> Vec<Member> {
        self.seen
            .iter()
            .map(|(host, (addr, _))| Member {
                host: host.clone(),
                addr: *addr,
            })
            .collect()
    }
}

/// What [`follow`] serves: the queries to follow and what to do with their members.
pub trait Membership: Send + 'static {
    /// The queries to follow now (they may change between rounds); `None` stops following.
    fn queries(&mut self) -> Option<Vec<Query>>;
    /// Each answer, as it comes (metrics, logs).
    fn answered(&mut self, _query: &Query, _answer: &Answer) {}
    /// The members of every query, after the first round and whenever they change.
    fn apply(
        &mut self,
        members: Vec<(Query, Vec<Member>)>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// Resolves `m`'s queries in rounds until it returns `None`: after each round, applies the
/// members when they changed (and after the first round whatever it found), then waits until
/// the shortest TTL of the round ran out, within the settings' bounds.
pub async fn follow(resolver: Resolver, settings: DnsSettings, mut m: impl Membership) {
    let mut trackers: HashMap<Query, Tracker> = HashMap::new();
    let mut first = true;
    loop {
        let Some(queries) = m.queries() else { return };
        let before = trackers.len();
        trackers.retain(|q, _| queries.contains(q));
        // The first round applies what it found (nothing, when there is nothing to follow
        // yet: no need to apply); later ones what changed, a dropped query included.
        let mut changed = (first && !queries.is_empty()) || trackers.len() != before;
        let mut next: Option<Duration> = None;
        for q in &queries {
            let answer = resolver.resolve(q).await;
            m.answered(q, &answer);
            let wait = match &answer {
                Answer::Found { ttl, .. } => settings.next_refresh(Some(*ttl)),
                Answer::Failed(e) => {
                    tracing::warn!(name = %q.name(), error = %e, "DNS query failed: members kept");
                    settings.next_refresh(None)
                }
            };
            next = Some(next.map_or(wait, |n| n.min(wait)));
            changed |= trackers
                .entry(q.clone())
                .or_insert_with(|| Tracker::new(settings.grace()))
                .observe(&answer, Instant::now());
        }
        if changed {
            let members = queries
                .iter()
                .map(|q| {
                    let found = trackers.get(q).map(Tracker::members).unwrap_or_default();
                    (q.clone(), found)
                })
                .collect();
            m.apply(members).await;
        }
        first &= queries.is_empty();
        tokio::time::sleep(next.unwrap_or_else(|| settings.next_refresh(None))).await;
    }
}

/// Expands `{host}`, `{label}`, `{ip}`, `{port}` and `{addr}` (`ip:port`, IPv6 in brackets)
/// in `template` for `member`.
pub fn expand(template: &str, member: &Member) -> String {
    template
        .replace("{host}", &member.host)
        .replace("{label}", member.label())
        .replace("{ip}", &member.addr.ip().to_string())
        .replace("{port}", &member.addr.port().to_string())
        .replace("{addr}", &member.addr.to_string())
}

/// Whether `template` names only the placeholders [`expand`] knows.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("`{template}`: unclosed `{{`"));
        };
        let name = &after[..close];
        if !matches!(name, "host" | "label" | "ip" | "port" | "addr") {
            return Err(format!(
                "`{template}`: unknown placeholder `{{{name}}}` (use {{host}}, {{label}}, {{ip}}, {{port}} or {{addr}})"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: &str, port: u16) -> Member {
        Member {
            host: host.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn found(members: Vec<Member>) -> Answer {
        Answer::Found {
            members,
            kept: Vec::new(),
            ttl: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_member_leaves_only_after_the_grace_of_successful_answers() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Tracker::new(Duration::from_secs(10));
        assert!(t.observe(&found(vec![m("a", 1), m("b", 2)]), t0));
        assert!(!t.observe(&found(vec![m("a", 1), m("b", 2)]), t0 + s));
        // b is left out: kept through the grace, counted from this answer...
        assert!(!t.observe(&found(vec![m("a", 1)]), t0 + 5 * s));
        assert_eq!(t.members().len(), 2);
        // ...failed queries change nothing, however long they go on...
        assert!(!t.observe(&Answer::Failed("timeout".into()), t0 + 100 * s));
        assert_eq!(t.members(), [m("a", 1), m("b", 2)]);
        // ...and a successful answer past the grace drops it.
        assert!(t.observe(&found(vec![m("a", 1)]), t0 + 101 * s));
        assert_eq!(t.members(), [m("a", 1)]);
        // After an outage, one answer without a (a nameserver back with half its data) is
        // only the start of its grace; a stays until answers have left it out for 10 s.
        assert!(!t.observe(&Answer::Failed("timeout".into()), t0 + 200 * s));
        assert!(!t.observe(&found(vec![]), t0 + 300 * s));
        assert!(!t.observe(&found(vec![]), t0 + 309 * s));
        assert_eq!(t.members(), [m("a", 1)]);
        // Named again: the count starts over.
        assert!(!t.observe(&found(vec![m("a", 1)]), t0 + 309 * s));
        assert!(!t.observe(&found(vec![]), t0 + 315 * s));
        assert!(!t.observe(&found(vec![]), t0 + 324 * s));
        assert!(t.observe(&found(vec![]), t0 + 325 * s));
        assert!(t.members().is_empty());
    }

    #[test]
    fn a_new_address_is_a_change_and_a_kept_target_stays() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Tracker::new(Duration::from_secs(10));
        t.observe(&found(vec![m("a", 1)]), t0);
        assert!(t.observe(&found(vec![m("a", 2)]), t0));
        assert_eq!(t.members(), [m("a", 2)]);
        // Named by its SRV record, its address lookup failing: kept, with its address.
        let kept = Answer::Found {
            members: Vec::new(),
            kept: vec!["a".into()],
            ttl: Duration::ZERO,
        };
        assert!(!t.observe(&found(vec![]), t0 + 5 * s));
        assert!(!t.observe(&kept, t0 + 9 * s));
        assert!(!t.observe(&found(vec![]), t0 + 18 * s));
        assert_eq!(t.members(), [m("a", 2)]);
    }

    #[test]
    fn queries_and_templates() {
        assert_eq!(
            Query::from_fields(None, Some("_peer._udp.edges.eu.svc"), None),
            Ok(Query::Srv {
                name: "_peer._udp.edges.eu.svc".into(),
                port: None
            })
        );
        assert_eq!(
            Query::from_fields(Some("edges.eu.svc"), None, Some(7443)),
            Ok(Query::Host {
                name: "edges.eu.svc".into(),
                port: 7443
            })
        );
        assert_eq!(
            Query::from_fields(Some("e"), None, None).unwrap_err().0,
            "port"
        );
        assert_eq!(
            Query::from_fields(Some("e"), Some("s"), None)
                .unwrap_err()
                .0,
            "srv"
        );
        assert_eq!(Query::from_fields(None, None, None).unwrap_err().0, "name");
        assert_eq!(
            Query::from_fields(Some("a..b"), None, Some(1))
                .unwrap_err()
                .0,
            "name"
        );
        let member = Member {
            host: "edge-0.edges.eu.svc.cluster.local".into(),
            addr: "[::1]:8090".parse().unwrap(),
        };
        assert_eq!(
            expand(
                "https://{label}.eu.example:{port}/ {addr} {ip} {host}",
                &member
            ),
            "https://edge-0.eu.example:8090/ [::1]:8090 ::1 edge-0.edges.eu.svc.cluster.local"
        );
        assert!(check_template("http://{addr}").is_ok());
        assert!(check_template("http://{pod}").is_err());
        assert!(check_template("http://{addr").is_err());
        let s = DnsSettings::default();
        assert_eq!(s.next_refresh(Some(Duration::ZERO)), Duration::from_secs(1));
        assert_eq!(
            s.next_refresh(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            s.next_refresh(Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
    }
}
