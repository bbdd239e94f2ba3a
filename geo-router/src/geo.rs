//! The geo database: opening and checking an .mmdb (GeoIP2/GeoLite2 City layout, IPv4 and
//! IPv6), looking addresses up, and the bounded lookup cache that lives and dies with one loaded
//! database (a reload brings a fresh cache).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maxminddb::{Reader, geoip2};
use serde::Serialize;

use crate::error::RouterError;

/// What the database says about one address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeoRecord {
    /// The database network that holds the address.
    pub network: String,
    pub city: Option<String>,
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<String>,
    /// Two-letter continent code (EU, NA, AS, ...).
    pub continent: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

impl GeoRecord {
    /// The coordinates, when the record has both.
    pub fn coordinates(&self) -> Option<(f64, f64)> {
        match (self.latitude, self.longitude) {
            (Some(lat), Some(lon)) if lat.is_finite() && lon.is_finite() => Some((lat, lon)),
            _ => None,
        }
    }
}

/// One loaded database and its lookup cache.
pub struct GeoDb {
    path: PathBuf,
    reader: Reader<Vec<u8>>,
    cache: moka::sync::Cache<IpAddr, Option<Arc<GeoRecord>>>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("database_type", &self.database_type())
            .finish()
    }
}

impl GeoDb {
    /// Reads, parses and fully verifies a database file. Blocking: large databases take a
    /// moment to verify, so async callers use `spawn_blocking`.
    pub fn open(path: &Path, cache_entries: u64) -> Result<Self, RouterError> {
        let bytes = std::fs::read(path).map_err(|source| RouterError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, bytes, cache_entries)
    }

    /// Like [`GeoDb::open`] with the bytes already read; `path` names them in errors.
    pub fn from_bytes(
        path: &Path,
        bytes: Vec<u8>,
        cache_entries: u64,
    ) -> Result<Self, RouterError> {
        let err = |message: String| RouterError::GeoDb {
            path: path.to_owned(),
            message,
        };
        if bytes.is_empty() {
            return Err(err("the file is empty".to_owned()));
        }
        let reader = Reader::from_source(bytes)
            .map_err(|e| err(format!("not a MaxMind DB (.mmdb) file: {e}")))?;
        reader
            .verify()
            .map_err(|e| err(format!("the database is corrupt: {e}")))?;
        let db_type = reader.metadata().database_type.clone();
        if !db_type.contains("City") {
            return Err(err(format!(
                "database type `{db_type}` has no city locations; a GeoIP2/GeoLite2 City layout \
                 database is needed"
            )));
        }
        Ok(GeoDb {
            path: path.to_owned(),
            reader,
            cache: moka::sync::Cache::new(cache_entries.max(1)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's `database_type` metadata, e.g. `GeoIP2-City`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built, seconds since the Unix epoch.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Looks an address up, through the cache. `None`: no record (or an unreadable one, which is
    /// logged).
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<GeoRecord>> {
        let ip = ip.to_canonical();
        self.cache
            .get_with(ip, || self.lookup_uncached(ip).map(Arc::new))
    }

    /// Looks an address up without the cache.
    pub fn lookup_uncached(&self, ip: IpAddr) -> Option<GeoRecord> {
        let ip = ip.to_canonical();
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return None;
        }
        let result = match self.reader.lookup(ip) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%ip, db = %self.path.display(), error = %e, "geo lookup failed");
                return None;
            }
        };
        let network = result.network().map(|n| n.to_string()).unwrap_or_default();
        match result.decode::<geoip2::City>() {
            Ok(Some(city)) => Some(GeoRecord {
                network,
                city: city.city.names.english.map(str::to_owned),
                country: city.country.iso_code.map(str::to_owned),
                continent: city.continent.code.map(str::to_owned),
                latitude: city.location.latitude,
                longitude: city.location.longitude,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%ip, db = %self.path.display(), error = %e, "geo record unreadable");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/geo")
            .join(name)
    }

    #[test]
    fn maxmind_test_database_decodes_real_records() {
        let db = GeoDb::open(&testdata("GeoIP2-City-Test.mmdb"), 100).expect("opens");
        assert_eq!(db.database_type(), "GeoIP2-City");
        let london = db
            .lookup("81.2.69.142".parse().expect("ip"))
            .expect("record");
        assert_eq!(london.city.as_deref(), Some("London"));
        assert_eq!(london.country.as_deref(), Some("GB"));
        assert_eq!(london.continent.as_deref(), Some("EU"));
        assert_eq!(london.coordinates(), Some((51.5142, -0.0931)));
        let changchun = db
            .lookup("175.16.199.1".parse().expect("ip"))
            .expect("record");
        assert_eq!(changchun.city.as_deref(), Some("Changchun"));
        assert_eq!(changchun.continent.as_deref(), Some("AS"));
        let milton = db
            .lookup("216.160.83.56".parse().expect("ip"))
            .expect("record");
        assert_eq!(milton.city.as_deref(), Some("Milton"));
        assert_eq!(milton.country.as_deref(), Some("US"));
        let japan = db
            .lookup("2001:218::1".parse().expect("ip"))
            .expect("v6 record");
        assert_eq!(japan.country.as_deref(), Some("JP"));
        assert_eq!(japan.continent.as_deref(), Some("AS"));
        // IPv4-mapped IPv6 is the same address.
        let mapped = db
            .lookup("::ffff:81.2.69.142".parse().expect("ip"))
            .expect("record");
        assert_eq!(mapped.city.as_deref(), Some("London"));
        assert!(db.lookup("10.1.2.3".parse().expect("ip")).is_none());
        assert!(db.lookup("::1".parse().expect("ip")).is_none());
    }

    #[test]
    fn garbage_and_empty_files_are_rejected_with_the_path() {
        let p = Path::new("/nowhere/x.mmdb");
        let e = GeoDb::from_bytes(p, b"not a database at all".to_vec(), 10).expect_err("garbage");
        let msg = e.to_string();
        assert!(
            msg.contains("/nowhere/x.mmdb") && msg.contains("MaxMind DB"),
            "{msg}"
        );
        let e = GeoDb::from_bytes(p, Vec::new(), 10).expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
        let e = GeoDb::open(Path::new("/nowhere/missing.mmdb"), 10).expect_err("missing");
        assert!(e.to_string().contains("/nowhere/missing.mmdb"), "{e}");
    }

    #[test]
    fn truncated_database_is_rejected() {
        let bytes = std::fs::read(testdata("GeoIP2-City-Test.mmdb")).expect("read");
        let cut = bytes[..bytes.len() / 2].to_vec();
        assert!(GeoDb::from_bytes(Path::new("cut.mmdb"), cut, 10).is_err());
        // Flip bytes in the middle of the search tree / data section.
        let mut bad = bytes.clone();
        for b in bad.iter_mut().skip(2000).take(4000) {
            *b ^= 0x5a;
        }
        assert!(GeoDb::from_bytes(Path::new("bad.mmdb"), bad, 10).is_err());
    }
}
