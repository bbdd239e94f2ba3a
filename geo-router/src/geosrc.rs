//! The human-readable geo source (`testdata/geo/lab-geo.toml`) and `cdn geo build`: networks
//! mapped to cities with coordinates, written as an .mmdb in the GeoIP2-City layout
//! (`city.names.en`, `country.iso_code`, `continent.code`, `location.latitude/longitude`) with
//! the mmdb-writer crate, so one lookup path reads both it and MaxMind's databases.
//!
//! The output is reproducible: the build time comes from the source's `build_epoch`, so the same
//! source always gives the same bytes and a test can check the committed .mmdb against it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::line_of_field;
use crate::error::RouterError;

/// A geo source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSource {
    /// The .mmdb `database_type`; must contain `City`.
    #[serde(default = "default_database_type")]
    pub database_type: String,
    /// The .mmdb English description.
    #[serde(default)]
    pub description: String,
    /// Build time written to the metadata, seconds since the Unix epoch (fixed for
    /// reproducible output).
    #[serde(default)]
    pub build_epoch: u64,
    /// The networks, as `[[network]]` tables. Later entries win where networks overlap.
    #[serde(default, rename = "network")]
    pub networks: Vec<GeoSourceNetwork>,
}

/// One network and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSourceNetwork {
    /// CIDR, IPv4 or IPv6, e.g. `127.1.0.0/16`.
    pub network: IpNet,
    pub city: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// English country name (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_name: Option<String>,
    /// Continent code: AF, AN, AS, EU, NA, OC or SA.
    pub continent: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Radius in km around the point where the address likely is (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_radius: Option<u16>,
}

fn default_database_type() -> String {
    "CDN-Lab-City".to_owned()
}

const CONTINENTS: &[(&str, &str)] = &[
    ("AF", "Africa"),
    ("AN", "Antarctica"),
    ("AS", "Asia"),
    ("EU", "Europe"),
    ("NA", "North America"),
    ("OC", "Oceania"),
    ("SA", "South America"),
];

// The GeoIP2-City record layout (the subset the router reads, plus names).
#[derive(Serialize)]
struct CityRecord<'a> {
    city: Named<'a>,
    continent: Continent<'a>,
    country: Country<'a>,
    location: Location,
}

#[derive(Serialize)]
struct Named<'a> {
    names: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Continent<'a> {
    code: &'a str,
    names: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Country<'a> {
    iso_code: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    names: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy_radius: Option<u16>,
}

impl GeoSource {
    /// Reads and checks a source file; errors name the file, line and field.
    pub fn load(path: &Path) -> Result<Self, RouterError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouterError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| RouterError::GeoSource {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let src: GeoSource = toml::from_str(text).map_err(|e| e.to_string())?;
        src.validate()
            .map_err(|(field, message)| match line_of_field(text, &field) {
                Some(line) => format!("line {line}, field `{field}`: {message}"),
                None => format!("field `{field}`: {message}"),
            })?;
        Ok(src)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if !self.database_type.contains("City") {
            return Err((
                "database_type".into(),
                "must contain `City` (the router reads the City layout)".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            let field = |f: &str| format!("network[{i}].{f}");
            if n.network.trunc() != n.network {
                return Err((
                    field("network"),
                    format!(
                        "{} has host bits set; write {}",
                        n.network,
                        n.network.trunc()
                    ),
                ));
            }
            if !seen.insert(n.network) {
                return Err((field("network"), format!("{} is listed twice", n.network)));
            }
            if n.city.trim().is_empty() {
                return Err((field("city"), "must not be empty".into()));
            }
            if n.country.len() != 2 || !n.country.chars().all(|c| c.is_ascii_uppercase()) {
                return Err((
                    field("country"),
                    format!("`{}` is not a two-letter ISO code like `DE`", n.country),
                ));
            }
            if !CONTINENTS.iter().any(|(c, _)| *c == n.continent) {
                return Err((
                    field("continent"),
                    format!("`{}` is not one of AF, AN, AS, EU, NA, OC, SA", n.continent),
                ));
            }
            if !(n.latitude.is_finite() && (-90.0..=90.0).contains(&n.latitude)) {
                return Err((field("latitude"), "must be between -90 and 90".into()));
            }
            if !(n.longitude.is_finite() && (-180.0..=180.0).contains(&n.longitude)) {
                return Err((field("longitude"), "must be between -180 and 180".into()));
            }
        }
        Ok(())
    }

    /// The .mmdb bytes for this source (IPv6 tree; IPv4 networks live in `::/96` and are also
    /// reachable through the IPv4-mapped prefix).
    pub fn build(&self) -> Result<Vec<u8>, RouterError> {
        let en = [("en", self.description.as_str())];
        let description: &[(&str, &str)] = if self.description.is_empty() {
            &[]
        } else {
            &en
        };
        let mut writer = mmdb_writer::Writer::builder(self.database_type.clone())
            .ip_version(mmdb_writer::IpVersion::V6)
            .description(description)
            .build_epoch(UNIX_EPOCH + Duration::from_secs(self.build_epoch))
            .build();
        for n in &self.networks {
            let continent_name = CONTINENTS
                .iter()
                .find(|(c, _)| *c == n.continent)
                .map_or("", |(_, name)| *name);
            let record = CityRecord {
                city: Named {
                    names: [("en", n.city.as_str())].into(),
                },
                continent: Continent {
                    code: &n.continent,
                    names: [("en", continent_name)].into(),
                },
                country: Country {
                    iso_code: &n.country,
                    names: n
                        .country_name
                        .as_deref()
                        .map(|name| [("en", name)].into())
                        .unwrap_or_default(),
                },
                location: Location {
                    latitude: n.latitude,
                    longitude: n.longitude,
                    accuracy_radius: n.accuracy_radius,
                },
            };
            writer.insert(n.network, &record)?;
        }
        Ok(writer.to_bytes()?)
    }
}

/// `cdn geo build SRC OUT`: reads the source and writes the .mmdb (atomically, via a temporary
/// file and a rename, so a watching router never reads half a file).
pub fn build_file(src: &Path, out: &Path) -> Result<usize, RouterError> {
    let bytes = GeoSource::load(src)?.build()?;
    let tmp = out.with_extension("mmdb.tmp");
    std::fs::write(&tmp, &bytes).map_err(|source| RouterError::Write {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, out).map_err(|source| RouterError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(bytes.len())
}

/// `cdn geo check SRC MMDB`: true when MMDB is exactly what SRC builds to.
pub fn check_file(src: &Path, mmdb: &Path) -> Result<bool, RouterError> {
    let built = GeoSource::load(src)?.build()?;
    let on_disk = std::fs::read(mmdb).map_err(|source| RouterError::Read {
        path: mmdb.to_owned(),
        source,
    })?;
    Ok(built == on_disk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::GeoDb;

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/geo")
            .join(name)
    }

    #[test]
    fn committed_lab_database_matches_its_source() {
        assert!(
            check_file(&testdata("lab-geo.toml"), &testdata("lab-geo.mmdb")).expect("check"),
            "testdata/geo/lab-geo.mmdb is stale: run `cdn geo build testdata/geo/lab-geo.toml \
             testdata/geo/lab-geo.mmdb`"
        );
    }

    #[test]
    fn build_is_reproducible_and_readable_as_city_layout() {
        let src = GeoSource::load(&testdata("lab-geo.toml")).expect("source");
        let a = src.build().expect("build");
        assert_eq!(a, src.build().expect("build again"));
        let db = GeoDb::from_bytes(Path::new("lab-geo.mmdb"), a, 100).expect("reads");
        for n in &src.networks {
            let ip = n.network.network();
            let r = db.lookup(ip).unwrap_or_else(|| panic!("{ip} has a record"));
            assert_eq!(r.city.as_deref(), Some(n.city.as_str()), "{ip}");
            assert_eq!(r.country.as_deref(), Some(n.country.as_str()), "{ip}");
            assert_eq!(r.continent.as_deref(), Some(n.continent.as_str()), "{ip}");
            assert_eq!(r.coordinates(), Some((n.latitude, n.longitude)), "{ip}");
        }
        let fra = db
            .lookup("127.1.200.7".parse().expect("ip"))
            .expect("loopback v4");
        assert_eq!(fra.continent.as_deref(), Some("EU"));
        assert_eq!(fra.network, "127.1.0.0/16");
        let mapped = db
            .lookup("::ffff:127.3.0.9".parse().expect("ip"))
            .expect("mapped");
        assert_eq!(mapped.country.as_deref(), Some("SG"));
        assert!(db.lookup("127.0.0.1".parse().expect("ip")).is_none());
        assert!(db.lookup("127.99.0.1".parse().expect("ip")).is_none());
    }

    #[test]
    fn bad_sources_name_the_field() {
        let err = GeoSource::parse(
            "[[network]]\nnetwork = \"127.1.0.1/16\"\ncity = \"x\"\ncountry = \"DE\"\n\
             continent = \"EU\"\nlatitude = 1.0\nlongitude = 2.0\n",
        )
        .expect_err("host bits");
        assert!(
            err.contains("network[0].network") && err.contains("line 2"),
            "{err}"
        );
        let err = GeoSource::parse(
            "[[network]]\nnetwork = \"127.1.0.0/16\"\ncity = \"x\"\ncountry = \"DE\"\n\
             continent = \"XX\"\nlatitude = 1.0\nlongitude = 2.0\n",
        )
        .expect_err("continent");
        assert!(
            err.contains("network[0].continent") && err.contains("line 5"),
            "{err}"
        );
        let err = GeoSource::parse("[[network]]\nnetwerk = 1\n").expect_err("unknown field");
        assert!(err.contains("netwerk"), "{err}");
    }
}
