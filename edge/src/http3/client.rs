//! A small HTTP/3 client over quinn and the `h3` crate: what the tests fetch with and what
//! `cdn bench h3` generates load with. Not on the serving path. One [`Client`] is one QUIC
//! connection; requests on it run concurrently (each on its own stream, up to the server's
//! stream credit).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::CertificateDer;

use super::{ALPN, Http3Error};

pub use quinn::ClientConfig;

/// A client configuration (ring, TLS 1.3, ALPN `h3`) trusting only `roots`.
pub fn config_trusting(
    roots: &[CertificateDer<'static>],
) -> Result<quinn::ClientConfig, Http3Error> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(store)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Http3Error::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// [`config_trusting`] the certificates of a PEM file (a CA, or a self-signed leaf's CA).
pub fn config_trusting_pem(path: &std::path::Path) -> Result<quinn::ClientConfig, Http3Error> {
    use rustls::pki_types::pem::PemObject;
    let file = path.display().to_string();
    let roots = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|source| Http3Error::Pem { file, source })?;
    config_trusting(&roots)
}

/// A response read whole: the head, the body, and how many DATA reads it took.
#[derive(Debug)]
pub struct Fetched {
    pub head: http::Response<()>,
    pub body: Bytes,
    pub reads: usize,
}

impl Fetched {
    pub fn status(&self) -> http::StatusCode {
        self.head.status()
    }

    /// The field's value as text ("" when absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.head
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One HTTP/3 connection.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: ::h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
    authority: String,
}

impl Client {
    /// Connects to `addr`, checking the certificate against `server_name`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> Result<Client, Http3Error> {
        let local: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (std::net::Ipv4Addr::LOCALHOST, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(local).map_err(|source| Http3Error::Bind {
            addr: local,
            source,
        })?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| Http3Error::Connect(e.to_string()))?
            .await
            .map_err(|e| Http3Error::Connect(e.to_string()))?;
        let (mut driver, send) = ::h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| Http3Error::H3(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Client {
            endpoint,
            conn,
            send,
            driver,
            authority: format!("{server_name}:{}", addr.port()),
        })
    }

    /// This client's UDP address (what the server sees as the peer).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// The QUIC connection (its stats, its streams).
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// `NAME:PORT`: the `:authority` of this client's requests.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `https://NAME:PORT` + `path`: the URI of a request to this server.
    pub fn uri(&self, path: &str) -> String {
        format!("https://{}{path}", self.authority)
    }

    /// GET `path` with `headers`, read whole.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Fetched, Http3Error> {
        let mut req = http::Request::get(self.uri(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).map_err(|e| Http3Error::H3(e.to_string()))?;
        self.send(req, None).await
    }

    /// Sends `req` (with `body`, if any) and reads the response whole.
    pub async fn send(
        &self,
        req: http::Request<()>,
        body: Option<Bytes>,
    ) -> Result<Fetched, Http3Error> {
        let err = |e: ::h3::error::StreamError| Http3Error::H3(e.to_string());
        let mut send = self.send.clone();
        let mut stream = send.send_request(req).await.map_err(err)?;
        if let Some(b) = body {
            stream.send_data(b).await.map_err(err)?;
        }
        // A server that needs no more of the request may stop it (STOP_SENDING) before the
        // end is sent; its response still counts (RFC 9114 §4.1).
        let _ = stream.finish().await;
        let head = stream.recv_response().await.map_err(err)?;
        let mut body = BytesMut::new();
        let mut reads = 0;
        while let Some(mut chunk) = stream.recv_data().await.map_err(err)? {
            reads += 1;
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        Ok(Fetched {
            head,
            body: body.freeze(),
            reads,
        })
    }

    /// Closes the connection (H3_NO_ERROR) and waits for the close to go out.
    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0x100), b"");
        self.driver.abort();
        self.endpoint.wait_idle().await;
    }
}
