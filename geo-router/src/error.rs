//! The library's error type. Every error that comes from a file names the file; config errors
//! also name the line and the field.

use std::path::PathBuf;

/// Errors of the geo-router library.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The router configuration file is not valid TOML, has unknown fields, or fails
    /// validation: the error names the file, the line and the field.
    #[error("invalid router config {0}")]
    ConfigFile(#[from] cdn_http::config::ConfigError),
    /// A router configuration given in memory fails validation.
    #[error("invalid router config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The geo database cannot be used.
    #[error("invalid geo database {}: {message}", path.display())]
    GeoDb { path: PathBuf, message: String },
    /// The human-readable geo source (see `cdn geo build`) is not valid.
    #[error("invalid geo source {}: {message}", path.display())]
    GeoSource { path: PathBuf, message: String },
    /// Writing an .mmdb failed.
    #[error("cannot build the geo database: {0}")]
    MmdbWrite(#[from] mmdb_writer::Error),
    /// The HTTPS certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] cdn_http::tls::TlsError),
    /// Binding or serving failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
