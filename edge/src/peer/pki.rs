//! Peer TLS: the cluster CA and node certificates (generated with rcgen for the lab and
//! tests), and the rustls/quinn configurations for mutual TLS. Every peer must present a
//! certificate the cluster CA signed, with its node name as a DNS name; nothing else gets in.
//!
//! Both directions check the name, not only the CA: the dialling side asks for the peer's
//! configured name (rustls checks the server certificate's DNS SANs against it), and the
//! answering side reads the client certificate's names with [`peer_names`] so that
//! [`super::Peers::identify`] can match them against the current peer set on every request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::PeerTls;

/// ALPN protocol id of the peer protocol.
pub const ALPN: &[u8] = b"cdn-peer/1";

/// The node names a certificate (DER) is issued to (`cdn_http::tls::cert_names`: its DNS
/// subject alternative names, or, only when it has none, its common names; taken literally,
/// so a wildcard names no node).
pub use cdn_http::tls::cert_names;

/// The names of the certificate the other end of `conn` presented (its end-entity
/// certificate, which the handshake checked against the cluster CA). Empty when it presented
/// none.
pub fn peer_names(conn: &quinn::Connection) -> Vec<String> {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|c| cert_names(c)))
        .unwrap_or_default()
}

/// Writes a new cluster CA (`ca.pem`, `ca.key`) and, for each node, `<name>.pem` and
/// `<name>.key` signed by it, into `dir`.
pub fn write_lab_pki(dir: &Path, node_names: &[String]) -> anyhow::Result<()> {
    let certs: Vec<(String, Vec<String>)> = node_names
        .iter()
        .map(|n| (n.clone(), vec![n.clone()]))
        .collect();
    write_ca_and_certs(dir, "cdn cluster CA", &certs)
}

/// Writes a new CA named `ca_name` (`ca.pem`, `ca.key`) and, for each `(stem, names)`,
/// `<stem>.pem` and `<stem>.key` signed by it for those names (server and client use; a name
/// that parses as an IP address becomes an IP address SAN, any other a DNS name; the first
/// is also the common name), into `dir`. The lab's viewer certificate (`localhost`,
/// `127.0.0.1`, `::1`) comes from here too, under a CA of its own.
pub fn write_ca_and_certs(
    dir: &Path,
    ca_name: &str,
    certs: &[(String, Vec<String>)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(dir, "ca.pem", &ca.pem())?;
    write(dir, "ca.key", &ca_key_pem)?;
    for (stem, names) in certs {
        let mut params = CertificateParams::new(names.clone())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        write(dir, &format!("{stem}.pem"), &cert.pem())?;
        write(dir, &format!("{stem}.key"), &key.serialize_pem())?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load(tls: &PeerTls) -> anyhow::Result<Material> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca)
        .with_context(|| format!("reading CA {}", tls.ca.display()))?
    {
        let cert = cert.with_context(|| format!("parsing CA {}", tls.ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("CA {}", tls.ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("reading {}", tls.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("reading key {}", tls.key.display()))?;
    Ok(Material {
        roots: Arc::new(roots),
        chain,
        key,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Bounds on what a peer can make this node hold: a few concurrent streams, none
/// unidirectional, windows sized to a chunk plus its header.
pub fn transport(chunk_size: u64) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(32u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    let stream_window = chunk_size + 128 * 1024;
    t.stream_receive_window(quinn::VarInt::from_u64(stream_window).unwrap_or(quinn::VarInt::MAX));
    t.receive_window(quinn::VarInt::from_u64(stream_window * 8).unwrap_or(quinn::VarInt::MAX));
    t.send_window(stream_window * 8);
    // A cut link is noticed within a few seconds, not after a long fill timeout.
    t.max_idle_timeout(Duration::from_secs(4).try_into().ok());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    Arc::new(t)
}

/// The server side: requires a client certificate signed by the cluster CA.
pub fn server_config(tls: &PeerTls, chunk_size: u64) -> anyhow::Result<quinn::ServerConfig> {
    let m = load(tls)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider())
        .build()
        .context("client verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain, m.key)
        .with_context(|| format!("certificate {}", tls.cert.display()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(chunk_size));
    Ok(server)
}

/// The client side: trusts only the cluster CA and presents this node's certificate. The
/// server certificate must also name the peer being dialled: [`super::client::PeerClient`]
/// connects with the peer's configured name as the TLS server name, which rustls's verifier
/// checks against the certificate's DNS SANs (a certificate of another node fails the
/// handshake).
pub fn client_config(tls: &PeerTls, chunk_size: u64) -> anyhow::Result<quinn::ClientConfig> {
    let m = load(tls)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(m.roots)
        .with_client_auth_cert(m.chain, m.key)
        .with_context(|| format!("certificate {}", tls.cert.display()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport(chunk_size));
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn a_certificate_names_its_dns_sans_else_its_common_name() {
        let dir = std::env::temp_dir().join(format!("cdn-pki-names-{}", std::process::id()));
        write_lab_pki(&dir, &["edge-a1".to_string()]).expect("pki");
        let lab = CertificateDer::from_pem_file(dir.join("edge-a1.pem")).expect("pem");
        assert_eq!(cert_names(&lab), ["edge-a1"]);
        let _ = std::fs::remove_dir_all(&dir);
        // SANs win over the common name.
        assert_eq!(cert_names(&cert(&["x", "y"], Some("z"))), ["x", "y"]);
        // No DNS SAN: the common name.
        assert_eq!(cert_names(&cert(&[], Some("old-style"))), ["old-style"]);
        assert_eq!(cert_names(&cert(&["10.0.0.1"], Some("cn"))), ["cn"]);
        assert!(cert_names(&cert(&[], None)).is_empty());
        assert!(cert_names(b"not a certificate").is_empty());
    }
}
