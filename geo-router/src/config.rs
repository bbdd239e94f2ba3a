//! The router's configuration (TOML): the edges, trusted proxies (each with the one forwarding
//! header it sets), the geo-miss location,
//! health-check settings, the origin fallback and the lab switch. Owns loading with errors that
//! name the file, the line and the field, and the checks a config must pass before it is used.
//!
//! `testdata/geo/router.example.toml` documents every field.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub(crate) use cdn_http::config::line_of_field;
use cdn_http::config::{ConfigError, parse_toml};

use crate::error::RouterError;

/// The whole router configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Where viewers are sent when every edge is down (`http://host:port`, optional path prefix).
    pub origin_url: String,
    /// Where viewers that came over HTTPS are sent when every edge is down; `origin_url`
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_https_url: Option<String>,
    /// The proxies whose forwarding header is believed, each with the one header it sets
    /// (`{ net = "10.0.0.0/8", header = "x-forwarded-for" }`). Empty (the default): the socket
    /// peer address is the client.
    #[serde(default, deserialize_with = "trusted_proxies")]
    pub trusted_proxies: Vec<TrustedProxy>,
    /// The location used for clients whose address has no geo record.
    pub geo_miss: GeoMissConfig,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Switches for the local lab only.
    #[serde(default)]
    pub lab: LabConfig,
    /// Most geo lookups kept in the lookup cache (per loaded database).
    #[serde(default = "default_lookup_cache_entries")]
    pub lookup_cache_entries: u64,
    /// How often the config and geo database files are checked for changes, milliseconds;
    /// 0 turns the polling off (SIGHUP still reloads).
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// The edges, as `[[edge]]` tables.
    #[serde(default, rename = "edge")]
    pub edges: Vec<EdgeConfig>,
    /// Edges found in DNS, as `[[edges_dns]]` tables next to the static `[[edge]]` ones
    /// (which keep working and win on a shared name): one entry per region, each member an
    /// edge named by its DNS name ([`crate::dns`]). Followed while the router runs; a reload
    /// applies a changed list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges_dns: Vec<EdgesDns>,
    /// How `edges_dns` is resolved (`[dns]`: nameserver, refresh bounds, grace).
    #[serde(
        default,
        skip_serializing_if = "cdn_http::dns::DnsSettings::is_default"
    )]
    pub dns: cdn_http::dns::DnsSettings,
    /// Connection and request limits of the router's listener (`[limits]`, see
    /// `cdn_http::limits`); read at start, not on reload.
    #[serde(default)]
    pub limits: cdn_http::limits::Limits,
    /// HTTPS for viewers (`[tls]`: listener, certificates by SNI, reload, redirect); read at
    /// start (the certificate files are followed), not on reload.
    #[serde(
        default,
        skip_serializing_if = "cdn_http::tls::TlsSettings::is_default"
    )]
    pub tls: cdn_http::tls::TlsSettings,
}

/// One trusted proxy network and the forwarding header its proxies append the client to.
///
/// Only that header is read from a hop in this network: the other one is the viewer's to
/// write (a proxy passes headers it does not set through), so it is never a fallback. The
/// old plain form (`trusted_proxies = ["10.0.0.0/8"]`) is refused with an error saying how
/// to name the header, because either default would let viewers behind some proxies choose
/// their address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxy {
    /// The proxies' network (CIDR).
    pub net: IpNet,
    /// The header these proxies set: `x-forwarded-for` or `forwarded` (RFC 7239).
    pub header: ForwardingHeader,
}

impl TrustedProxy {
    pub fn new(net: IpNet, header: ForwardingHeader) -> Self {
        TrustedProxy { net, header }
    }
}

/// A request header a proxy appends the client's address to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, ...`.
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1, ...` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardingHeader::XForwardedFor => "x-forwarded-for",
            ForwardingHeader::Forwarded => "forwarded",
        }
    }
}

/// Reads `trusted_proxies`, naming the fix when an entry is the old plain CIDR string.
fn trusted_proxies<'de, D>(d: D) -> Result<Vec<TrustedProxy>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Vec::<toml::Value>::deserialize(d)?
        .into_iter()
        .map(|e| match e {
            toml::Value::String(net) => Err(serde::de::Error::custom(format!(
                "trusted_proxies entries name the header each proxy sets: write \
                 {{ net = \"{net}\", header = \"x-forwarded-for\" }} (or header = \"forwarded\"), \
                 not \"{net}\"; only that header is read from those proxies"
            ))),
            v => TrustedProxy::deserialize(v)
                .map_err(|e| serde::de::Error::custom(format!("trusted_proxies: {}", e.message()))),
        })
        .collect()
}

/// One edge cache node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Unique name, e.g. `eu-1`; sent to clients in the `X-CDN-Edge` header.
    pub name: String,
    /// Region name, e.g. `europe`; edges of one region share the load by consistent hashing.
    pub region: String,
    /// Where the edge is, degrees.
    pub latitude: f64,
    pub longitude: f64,
    /// The edge's public base URL that viewers are redirected to.
    pub url: String,
    /// The edge's HTTPS base URL (`https://host:port`), where viewers that reached the router
    /// over HTTPS are redirected; without it they get `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
    /// Relative share of its region's paths (rendezvous-hashing weight), > 0.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Where the router checks health; default `{url}/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
}

impl EdgeConfig {
    /// The URL the router probes.
    pub fn health_url(&self) -> String {
        match &self.health_url {
            Some(u) => u.clone(),
            None => format!("{}/healthz", self.url.trim_end_matches('/')),
        }
    }
}

/// The edges of one region, found in DNS: `srv = "_http._tcp.edges.eu.svc.cluster.local"`
/// (each SRV target an edge at the record's port) or `name` with `port` (each A/AAAA address
/// an edge, named by its PTR record). URLs are templates over each member: `{host}` (its DNS
/// name), `{label}` (the first label: a pod's name), `{ip}`, `{port}`, `{addr}` (`ip:port`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgesDns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The edges' HTTP port (required with `name`; overrides the SRV records' port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The region of every edge this entry finds, and where it is (degrees).
    pub region: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Where viewers are redirected; default `http://{addr}`.
    #[serde(default = "default_dns_url")]
    pub url: String,
    /// Where viewers that came over HTTPS are redirected (template); default `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
    /// Where the router checks health (template); default `{url}/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: f64,
}

impl EdgesDns {
    pub fn query(&self) -> Result<cdn_http::dns::Query, (&'static str, String)> {
        cdn_http::dns::Query::from_fields(self.name.as_deref(), self.srv.as_deref(), self.port)
    }

    /// The edge `member` is.
    pub fn edge(&self, member: &cdn_http::dns::Member) -> EdgeConfig {
        use cdn_http::dns::expand;
        EdgeConfig {
            name: member.host.clone(),
            region: self.region.clone(),
            latitude: self.latitude,
            longitude: self.longitude,
            url: expand(&self.url, member),
            https_url: self.https_url.as_deref().map(|t| expand(t, member)),
            weight: self.weight,
            health_url: self.health_url.as_deref().map(|t| expand(t, member)),
        }
    }
}

fn default_dns_url() -> String {
    "http://{addr}".to_owned()
}

/// The location assumed for an address with no geo record. Pick a point that does not favour
/// one crowded region (not a country centroid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoMissConfig {
    pub latitude: f64,
    pub longitude: f64,
    /// A name for logs and `/_route` answers.
    #[serde(default = "default_geo_miss_label")]
    pub label: String,
}

/// Active health-check settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two checks of one edge, milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time allowed for one check, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures that take an up edge down.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Consecutive successes that bring a down edge up.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// An edge whose `/healthz` reports `load` at or above this is overloaded: skipped while any
    /// other edge can take the request.
    #[serde(default = "default_overload_threshold")]
    pub overload_threshold: f64,
}

impl HealthConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            down_after: default_down_after(),
            up_after: default_up_after(),
            overload_threshold: default_overload_threshold(),
        }
    }
}

/// Lab-only switches. **Unsafe outside a lab**: they let any client choose where it is routed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// When true, `?client_ip=IP` or `?region=NAME` on a request overrides the client's address
    /// or region (the parameters are removed from the redirect). Off by default.
    #[serde(default)]
    pub allow_client_override: bool,
    /// The lab's web UI (player page and dashboard): `GET /` and everything under `/_lab/` are
    /// forwarded to this base URL instead of being redirected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui_url: Option<String>,
    /// The lab's simulated links, as `[[lab.link]]` tables: a client of one of `networks` (or
    /// placed in `region` by `?region=`) routed to `edge` is sent to `url` (the relay that
    /// simulates that client region's path to the edge) instead of the edge's own `url`.
    #[serde(default, rename = "link", skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LabLink>,
}

/// One simulated link from a client region to an edge (see [`LabConfig::links`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabLink {
    /// The edge's name.
    pub edge: String,
    /// The client region's name, matched against `?region=NAME`. A region without edges of
    /// its own is looked up at the first address of its first network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Client networks (CIDR) this link is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<IpNet>,
    /// Where those clients are redirected to reach the edge.
    pub url: String,
    /// The same link for viewers that came over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
}

fn default_lookup_cache_entries() -> u64 {
    100_000
}
fn default_watch_interval_ms() -> u64 {
    1000
}
fn default_weight() -> f64 {
    1.0
}
fn default_geo_miss_label() -> String {
    "geo-miss".to_owned()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_down_after() -> u32 {
    3
}
fn default_up_after() -> u32 {
    2
}
fn default_overload_threshold() -> f64 {
    0.9
}

/// A failed check: the field (`edge[1].weight`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct ConfigIssue {
    pub field: String,
    pub message: String,
}

impl ConfigIssue {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl RouterConfig {
    /// Reads and checks a config file. Errors name the file, the line and the field, as every
    /// node's do (`cdn_http::config`).
    pub fn load(path: &Path) -> Result<Self, RouterError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouterError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&text, &path.display().to_string())?)
    }

    /// Parses and checks TOML `text`; errors name `file`, the line and the field.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let config: RouterConfig = parse_toml(text, file)?;
        config.validate().map_err(|issue| ConfigError::Invalid {
            file: file.to_owned(),
            line: line_of_field(text, &issue.field).unwrap_or(0),
            column: 1,
            field: issue.field,
            message: issue.message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, URLs, unique names, sane health settings.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        check_url("origin_url", &self.origin_url)?;
        if let Some(u) = &self.origin_https_url {
            check_url("origin_https_url", u)?;
        }
        self.tls.check().map_err(|e| ConfigIssue::new("tls", e))?;
        check_coordinates("geo_miss", self.geo_miss.latitude, self.geo_miss.longitude)?;
        let h = &self.health;
        if h.interval_ms == 0 {
            return Err(ConfigIssue::new("health.interval_ms", "must be at least 1"));
        }
        if h.timeout_ms == 0 {
            return Err(ConfigIssue::new("health.timeout_ms", "must be at least 1"));
        }
        if h.down_after == 0 {
            return Err(ConfigIssue::new("health.down_after", "must be at least 1"));
        }
        if h.up_after == 0 {
            return Err(ConfigIssue::new("health.up_after", "must be at least 1"));
        }
        if !(h.overload_threshold.is_finite() && h.overload_threshold > 0.0) {
            return Err(ConfigIssue::new(
                "health.overload_threshold",
                "must be a positive number",
            ));
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            if let Some(other) = self.trusted_proxies[..i]
                .iter()
                .find(|o| o.net.trunc() == p.net.trunc() && o.header != p.header)
            {
                return Err(ConfigIssue::new(
                    format!("trusted_proxies[{i}]"),
                    format!(
                        "{} is listed with header `{}` and `{}`: a proxy sets one header",
                        p.net.trunc(),
                        other.header.name(),
                        p.header.name()
                    ),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, e) in self.edges.iter().enumerate() {
            let field = |f: &str| format!("edge[{i}].{f}");
            if e.name.trim().is_empty() {
                return Err(ConfigIssue::new(field("name"), "must not be empty"));
            }
            if !e
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(ConfigIssue::new(
                    field("name"),
                    format!("`{}`: use letters, digits, `-`, `_` or `.`", e.name),
                ));
            }
            if !names.insert(e.name.as_str()) {
                return Err(ConfigIssue::new(
                    field("name"),
                    format!("edge name `{}` is used twice", e.name),
                ));
            }
            if e.region.trim().is_empty() {
                return Err(ConfigIssue::new(field("region"), "must not be empty"));
            }
            if !(e.latitude.is_finite() && (-90.0..=90.0).contains(&e.latitude)) {
                return Err(ConfigIssue::new(
                    field("latitude"),
                    "must be between -90 and 90",
                ));
            }
            if !(e.longitude.is_finite() && (-180.0..=180.0).contains(&e.longitude)) {
                return Err(ConfigIssue::new(
                    field("longitude"),
                    "must be between -180 and 180",
                ));
            }
            if !(e.weight.is_finite() && e.weight > 0.0) {
                return Err(ConfigIssue::new(
                    field("weight"),
                    "must be a positive number",
                ));
            }
            check_url(&field("url"), &e.url)?;
            if let Some(u) = &e.https_url {
                check_url(&field("https_url"), u)?;
            }
            if let Some(u) = &e.health_url {
                check_url(&field("health_url"), u)?;
            }
        }
        for (i, d) in self.edges_dns.iter().enumerate() {
            let field = |f: &str| format!("edges_dns[{i}].{f}");
            if let Err((f, message)) = d.query() {
                return Err(ConfigIssue::new(field(f), message));
            }
            if d.region.trim().is_empty() {
                return Err(ConfigIssue::new(field("region"), "must not be empty"));
            }
            if !(d.latitude.is_finite() && (-90.0..=90.0).contains(&d.latitude)) {
                return Err(ConfigIssue::new(
                    field("latitude"),
                    "must be between -90 and 90",
                ));
            }
            if !(d.longitude.is_finite() && (-180.0..=180.0).contains(&d.longitude)) {
                return Err(ConfigIssue::new(
                    field("longitude"),
                    "must be between -180 and 180",
                ));
            }
            if !(d.weight.is_finite() && d.weight > 0.0) {
                return Err(ConfigIssue::new(
                    field("weight"),
                    "must be a positive number",
                ));
            }
            // Each template, expanded for an example member, must be a URL.
            let example = cdn_http::dns::Member {
                host: "edge-0.edges.example".into(),
                addr: std::net::SocketAddr::from(([192, 0, 2, 1], 8090)),
            };
            let templates = [
                ("url", Some(&d.url)),
                ("https_url", d.https_url.as_ref()),
                ("health_url", d.health_url.as_ref()),
            ];
            for (f, t) in templates {
                if let Some(t) = t {
                    cdn_http::dns::check_template(t).map_err(|m| ConfigIssue::new(field(f), m))?;
                    check_url(&field(f), &cdn_http::dns::expand(t, &example))?;
                }
            }
        }
        if let Err((f, message)) = self.dns.check() {
            return Err(ConfigIssue::new(f, message));
        }
        if let Some(u) = &self.lab.ui_url {
            check_url("lab.ui_url", u)?;
        }
        for (i, l) in self.lab.links.iter().enumerate() {
            let field = |f: &str| format!("lab.link[{i}].{f}");
            if !names.contains(l.edge.as_str()) {
                return Err(ConfigIssue::new(
                    field("edge"),
                    format!("no edge is named `{}`", l.edge),
                ));
            }
            if l.region.is_none() && l.networks.is_empty() {
                return Err(ConfigIssue::new(
                    field("networks"),
                    "a link needs a region or networks",
                ));
            }
            check_url(&field("url"), &l.url)?;
            if let Some(u) = &l.https_url {
                check_url(&field("https_url"), u)?;
            }
        }
        Ok(())
    }

    /// The distinct region names, in config order.
    pub fn regions(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.edges
            .iter()
            .filter(|e| seen.insert(e.region.as_str()))
            .map(|e| e.region.clone())
            .collect()
    }
}

fn check_coordinates(field: &str, lat: f64, lon: f64) -> Result<(), ConfigIssue> {
    if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
        return Err(ConfigIssue::new(
            format!("{field}.latitude"),
            "must be between -90 and 90",
        ));
    }
    if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
        return Err(ConfigIssue::new(
            format!("{field}.longitude"),
            "must be between -180 and 180",
        ));
    }
    Ok(())
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigIssue> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigIssue::new(field, format!("`{url}` is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(ConfigIssue::new(
                field,
                format!("`{url}` must start with http:// or https://"),
            ));
        }
    }
    if uri.authority().is_none() {
        return Err(ConfigIssue::new(field, format!("`{url}` has no host")));
    }
    if uri.query().is_some() {
        return Err(ConfigIssue::new(
            field,
            format!("`{url}` must not have a query"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
origin_url = "http://127.0.0.1:8081"
trusted_proxies = [
    { net = "127.0.0.1/32", header = "x-forwarded-for" },
    { net = "::1/128", header = "forwarded" },
]

[geo_miss]
latitude = 30.0
longitude = -30.0

[[edge]]
name = "eu-1"
region = "europe"
latitude = 50.11
longitude = 8.68
url = "http://127.0.0.1:9101"

[[edge]]
name = "eu-2"
region = "europe"
latitude = 50.11
longitude = 8.68
url = "http://127.0.0.1:9102"
weight = 2.0
"#;

    #[test]
    fn parses_with_defaults() {
        let c = RouterConfig::parse(GOOD, "r.toml").expect("valid");
        assert_eq!(c.edges.len(), 2);
        assert_eq!(c.edges[0].weight, 1.0);
        assert_eq!(c.health, HealthConfig::default());
        assert_eq!(c.health.down_after, 3);
        assert_eq!(c.health.up_after, 2);
        assert_eq!(c.health.interval_ms, 1000);
        assert!(!c.lab.allow_client_override);
        assert_eq!(c.edges[0].health_url(), "http://127.0.0.1:9101/healthz");
        assert_eq!(c.regions(), vec!["europe".to_owned()]);
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = GOOD.replace("weight = 2.0", "wieght = 2.0");
        let err = RouterConfig::parse(&text, "r.toml")
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("wieght"), "{err}");
        assert!(err.starts_with("r.toml:25:"), "{err}");
    }

    #[test]
    fn bad_value_names_line_and_field() {
        let text = GOOD.replace("weight = 2.0", "weight = -2.0");
        let err = RouterConfig::parse(&text, "r.toml")
            .expect_err("negative weight")
            .to_string();
        assert!(
            err.starts_with("r.toml:25:1: field `edge[1].weight`: "),
            "{err}"
        );

        let text = GOOD.replace("name = \"eu-2\"", "name = \"eu-1\"");
        let err = RouterConfig::parse(&text, "r.toml")
            .expect_err("duplicate")
            .to_string();
        assert!(err.starts_with("r.toml:20:"), "{err}");
        assert!(err.contains("used twice"), "{err}");

        let text = GOOD.replace("latitude = 30.0", "latitude = 300.0");
        let err = RouterConfig::parse(&text, "r.toml")
            .expect_err("latitude")
            .to_string();
        assert!(err.starts_with("r.toml:9:"), "{err}");
        assert!(err.contains("geo_miss.latitude"), "{err}");

        let text = GOOD.replace("http://127.0.0.1:9102", "ftp://x");
        let err = RouterConfig::parse(&text, "r.toml")
            .expect_err("url")
            .to_string();
        assert!(err.contains("edge[1].url"), "{err}");
    }

    #[test]
    fn example_config_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/geo/router.example.toml");
        let c = RouterConfig::load(&path).expect("example config loads");
        assert!(!c.edges.is_empty());
        assert!(!c.lab.allow_client_override, "the example must be safe");
    }

    #[test]
    fn lab_links_are_checked() {
        let lab = r#"
[lab]
ui_url = "http://127.0.0.1:8082"

[[lab.link]]
edge = "eu-1"
region = "oceania"
networks = ["127.4.0.0/16"]
url = "http://127.0.0.1:8100"
"#;
        let text = format!("{GOOD}{lab}");
        let c = RouterConfig::parse(&text, "r.toml").expect("valid");
        assert_eq!(c.lab.links.len(), 1);
        assert_eq!(c.lab.ui_url.as_deref(), Some("http://127.0.0.1:8082"));
        let again = toml::to_string(&c).expect("serialises");
        assert_eq!(RouterConfig::parse(&again, "r.toml").expect("reparses"), c);

        let err = RouterConfig::parse(
            &text.replace("edge = \"eu-1\"", "edge = \"eu-9\""),
            "r.toml",
        )
        .expect_err("unknown edge")
        .to_string();
        assert!(err.contains("lab.link[0].edge"), "{err}");
        assert!(err.starts_with("r.toml:31:"), "{err}");
        let err = RouterConfig::parse(
            &text.replace("url = \"http://127.0.0.1:8100\"", "url = \"x\""),
            "r.toml",
        )
        .expect_err("bad url")
        .to_string();
        assert!(err.contains("lab.link[0].url"), "{err}");
    }

    #[test]
    fn trusted_proxies_name_their_header() {
        let c = RouterConfig::parse(GOOD, "r.toml").expect("valid");
        assert_eq!(
            c.trusted_proxies,
            vec![
                TrustedProxy::new(
                    "127.0.0.1/32".parse().expect("net"),
                    ForwardingHeader::XForwardedFor
                ),
                TrustedProxy::new("::1/128".parse().expect("net"), ForwardingHeader::Forwarded),
            ]
        );
        // The old plain list is refused with the fix in the message.
        let old = GOOD.replace(
            "{ net = \"127.0.0.1/32\", header = \"x-forwarded-for\" }",
            "\"127.0.0.1/32\"",
        );
        let err = RouterConfig::parse(&old, "r.toml")
            .expect_err("plain CIDR")
            .to_string();
        assert!(err.starts_with("r.toml:3:"), "{err}");
        assert!(
            err.contains("{ net = \"127.0.0.1/32\", header = \"x-forwarded-for\" }"),
            "{err}"
        );
        // A header is required, and must be one of the two.
        let err = RouterConfig::parse(&GOOD.replace(", header = \"forwarded\"", ""), "r.toml")
            .expect_err("no header")
            .to_string();
        assert!(err.contains("header"), "{err}");
        let err = RouterConfig::parse(&GOOD.replace("\"forwarded\"", "\"x-real-ip\""), "r.toml")
            .expect_err("unknown header")
            .to_string();
        assert!(err.contains("x-real-ip"), "{err}");
        // One network, two headers: refused.
        let twice = GOOD.replace(
            "\"::1/128\", header = \"forwarded\"",
            "\"127.0.0.1/32\", header = \"forwarded\"",
        );
        let err = RouterConfig::parse(&twice, "r.toml")
            .expect_err("two headers")
            .to_string();
        assert!(err.contains("trusted_proxies[1]"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = RouterConfig::parse(GOOD, "r.toml").expect("valid");
        let text = toml::to_string(&c).expect("serialises");
        assert_eq!(RouterConfig::parse(&text, "r.toml").expect("reparses"), c);
    }
}
