//! Peer TLS: the cluster CA and node certificates (generated with rcgen for the lab and
//! tests), and the rustls/quinn configurations for mutual TLS. Every peer must present a
//! certificate the cluster CA signed, with its node name as a DNS name; nothing else gets in.

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

/// Writes a new cluster CA (`ca.pem`, `ca.key`) and, for each node, `<name>.pem` and
/// `<name>.key` signed by it, into `dir`.
pub fn write_lab_pki(dir: &Path, node_names: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cdn cluster CA");
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
    for name in node_names {
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        write(dir, &format!("{name}.pem"), &cert.pem())?;
        write(dir, &format!("{name}.key"), &key.serialize_pem())?;
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

/// The client side: trusts only the cluster CA and presents this node's certificate.
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
