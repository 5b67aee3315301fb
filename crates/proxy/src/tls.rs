//! TLS termination with rustls (ring provider): certificate chains and keys from PEM files,
//! the certificate chosen by SNI among several (the first is the default), ALPN `h2` and
//! `http/1.1`, TLS 1.3 and 1.2 with rustls's modern suites only (AEAD, forward secrecy; the
//! server's order, AES-128-GCM first, unless the client puts ChaCha20 first),
//! session resumption by ID and by ticket. A reload builds a new config from the files, so new
//! certificates apply to new connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Sessions remembered for resumption by ID.
const SESSION_CACHE: usize = 20_000;

/// One certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What went wrong with a certificate, and in which of its two files.
#[derive(Debug)]
pub struct CertError {
    pub in_key_file: bool,
    pub message: String,
}

/// Reads a chain and its key; the error names the file at fault.
pub fn load(files: &CertFiles) -> Result<CertifiedKey, CertError> {
    let cert_err = |message: String| CertError { in_key_file: false, message };
    let key_err = |message: String| CertError { in_key_file: true, message };
    let chain_pem = read(&files.cert).map_err(cert_err)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("{}: not a PEM certificate chain: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return Err(cert_err(format!("{}: no certificate in the file", files.cert.display())));
    }
    webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| cert_err(format!("{}: the first certificate cannot be parsed: {e}", files.cert.display())))?;
    let key_pem = read(&files.key).map_err(key_err)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_err(format!("{}: not a PEM private key: {e}", files.key.display())))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_err(format!("{}: unsupported key: {e}", files.key.display())))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| key_err(format!("{} does not belong to {}: {e}", files.key.display(), files.cert.display())))?;
    Ok(certified)
}

/// CA certificates (PEM) to verify peers against; the error names the file.
pub fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, String> {
    roots_from_pem(&read(ca)?, ca)
}

fn roots_from_pem(pem: &[u8], ca: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("{}: a certificate cannot be used as a CA: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in the file", ca.display()));
    }
    Ok(roots)
}

/// Clients a listener asks for a certificate (nginx's `ssl_verify_client`, HAProxy's
/// `verify`): verified against these CAs; without one, a client is refused at the handshake
/// unless the certificate is optional.
#[derive(Debug, Clone)]
pub struct ClientVerification {
    pub roots: rustls::RootCertStore,
    pub required: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Chooses the certificate whose names cover the client's SNI; the first one otherwise.
#[derive(Debug)]
struct SniResolver {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wanted = hello.server_name().and_then(|n| ServerName::try_from(n).ok());
        if let Some(name) = wanted {
            for certified in &self.certificates {
                let covers = certified
                    .cert
                    .first()
                    .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
                    .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok());
                if covers {
                    return Some(certified.clone());
                }
            }
        }
        self.certificates.first().cloned()
    }
}

/// How a TLS listener answers a ClientHello: its rustls configs, which differ only in whose
/// order of cipher suites wins.
#[derive(Debug, Clone)]
pub struct Acceptor {
    /// The server's order: AES-128-GCM first.
    server_order: Arc<ServerConfig>,
    /// The client's order, for clients that put ChaCha20 first.
    client_order: Arc<ServerConfig>,
    verifies_clients: bool,
}

impl Acceptor {
    /// The configs for a listener with these certificates (at least one), asking clients
    /// for theirs when `clients` says so.
    pub fn new(certificates: Vec<CertifiedKey>, clients: Option<ClientVerification>) -> Result<Acceptor, String> {
        let verifies_clients = clients.is_some();
        let server_order = server_config(certificates, clients)?;
        let mut client_order = (*server_order).clone();
        client_order.ignore_client_order = false;
        Ok(Acceptor { server_order, client_order: Arc::new(client_order), verifies_clients })
    }

    /// Whether clients are asked for a certificate (its description then goes with each
    /// request, for the `$ssl_client_*` variables).
    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }

    /// The config for this ClientHello. AES-GCM with a 128-bit key and SHA-256 costs both sides
    /// least where the CPU has AES instructions (SHA-256 has its own instructions too; the
    /// SHA-384 of AES-256-GCM's suite runs in software), and it is what Go and BoringSSL pick,
    /// where OpenSSL clients ask for AES-256 first. A client that puts ChaCha20 before every
    /// AES suite says it has no AES instructions: its order wins, as in BoringSSL's "equal
    /// preference" of the two.
    pub fn config_for(&self, hello: &ClientHello<'_>) -> &Arc<ServerConfig> {
        if prefers_chacha20(hello.cipher_suites()) {
            &self.client_order
        } else {
            &self.server_order
        }
    }

    /// The TLS handshake on a new connection; the stream then holds the session tickets back
    /// for the first answer (see [`Coalescing`]).
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<Coalescing>> {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Coalescing::new(stream)).await?;
        let config = self.config_for(&start.client_hello()).clone();
        let mut stream = start.into_stream(config).await?;
        let tls13 = stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        stream.get_mut().0.handshake_done(tls13);
        Ok(stream)
    }
}

/// True when the client lists a ChaCha20 suite before every AES-GCM one.
fn prefers_chacha20(offered: &[rustls::CipherSuite]) -> bool {
    offered.iter().find_map(|s| suite_family(*s)) == Some(SuiteFamily::Chacha20)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SuiteFamily {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20,
}

fn suite_family(suite: rustls::CipherSuite) -> Option<SuiteFamily> {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(SuiteFamily::Aes128Gcm),
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(SuiteFamily::Aes256Gcm),
        S::TLS13_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(SuiteFamily::Chacha20),
        _ => None,
    }
}

/// The server-order config: ring's suites (all AEAD with forward secrecy) ordered AES-128-GCM,
/// AES-256-GCM, ChaCha20, as Mozilla's intermediate profile lists them.
fn server_config(
    certificates: Vec<CertifiedKey>,
    clients: Option<ClientVerification>,
) -> Result<Arc<ServerConfig>, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| suite_family(s.suite()));
    let provider = Arc::new(provider);
    let versions = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let authenticated = match clients {
        None => versions.with_no_client_auth(),
        Some(clients) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(clients.roots), provider);
            let verifier = if clients.required { verifier } else { verifier.allow_unauthenticated() };
            versions.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = authenticated
        .with_cert_resolver(Arc::new(SniResolver { certificates: certificates.into_iter().map(Arc::new).collect() }));
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    // One ticket per connection, as OpenSSL (HAProxy, nginx) sends after a resumption: every
    // connection, resumed or not, leaves the client a fresh ticket for its next one (parallel
    // first connections each get their own), and the client does not process a second ticket
    // it rarely uses (the handshake benchmark is bound by the client: 0.94-0.96x HAProxy before,
    // 0.96-1.01x after).
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

use tokio::io::AsyncWrite as _;

/// The TCP side of a client's TLS connection, holding back what TLS writes between the end of
/// the handshake and the first answer: the session tickets, sent on their own by rustls, then
/// leave in the same segment as the answer, and the client is woken once instead of twice per
/// new connection. Safe by construction: whatever is held goes out before a read would wait
/// (so the peer is never left waiting on us), with the first write after the handshake, at
/// shutdown, and on drop (a last alert).
pub struct Coalescing {
    stream: tokio::net::TcpStream,
    held: Vec<u8>,
    state: Hold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The handshake: flushes wait for the next read that would block.
    Handshake,
    /// Handshake done: hold until the first application write.
    UntilAnswer,
    /// Writes go out as they come.
    Passthrough,
}

impl Coalescing {
    pub fn new(stream: tokio::net::TcpStream) -> Coalescing {
        Coalescing { stream, held: Vec::new(), state: Hold::Handshake }
    }

    /// The handshake is over. After TLS 1.3 what it left behind is only the session tickets,
    /// which no client waits for: they go out with the next write. After TLS 1.2 it is the
    /// server's Finished, which the client does wait for: it goes out before the next read waits.
    pub fn handshake_done(&mut self, tls13: bool) {
        if self.state == Hold::Handshake {
            self.state = if tls13 { Hold::UntilAnswer } else { Hold::Passthrough };
        }
    }

    fn write_held(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n = std::task::ready!(std::pin::Pin::new(&mut self.stream).poll_write(cx, &self.held))?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for Coalescing {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let _ = self.stream.try_write(&self.held);
        }
    }
}

impl tokio::io::AsyncRead for Coalescing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.stream).poll_read(cx, buf) {
            std::task::Poll::Pending if !this.held.is_empty() && this.state != Hold::UntilAnswer => {
                // About to wait for the peer: it must have everything we wrote first. (Not
                // the tickets held after the handshake: no client waits for those.)
                std::task::ready!(this.write_held(cx))?;
                std::task::Poll::Pending
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for Coalescing {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match this.state {
            Hold::Handshake => {
                this.held.extend_from_slice(buf);
                std::task::Poll::Ready(Ok(buf.len()))
            }
            Hold::UntilAnswer => {
                // The answer joins what the handshake left; the next flush sends both.
                this.held.extend_from_slice(buf);
                this.state = Hold::Passthrough;
                std::task::Poll::Ready(Ok(buf.len()))
            }
            Hold::Passthrough => {
                std::task::ready!(this.write_held(cx))?;
                std::pin::Pin::new(&mut this.stream).poll_write(cx, buf)
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.state != Hold::Passthrough {
            return std::task::Poll::Ready(Ok(()));
        }
        std::task::ready!(this.write_held(cx))?;
        std::pin::Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.write_held(cx))?;
        std::pin::Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// TLS to a pool's servers (HAProxy's `server … ssl verify required ca-file … sni …`): every
/// server's certificate is verified against the pool's CA, for `server_name` when the config
/// gives one, else for the host name of the server's address, else for its IP address. ALPN offers HTTP/1.1 only, the one protocol
/// the proxy speaks upstream; sessions resume, so a pool's new connections skip the full
/// handshake.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    /// The same, offering HTTP/2 (ALPN h2) instead of HTTP/1.1: for pools with protocol h2.
    h2_connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// Where the CA came from, for the config's Debug.
    pub ca: PathBuf,
    /// What the CA file (and the client certificate) held: a reload that rotates either in
    /// place is a change.
    ca_digest: u64,
}

/// Equal when they verify the same way: same CA certificates, same name.
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_digest == other.ca_digest && self.server_name == other.server_name
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("ca", &self.ca).field("server_name", &self.server_name).finish()
    }
}

/// What is wrong with a pool's `tls` table, and in which of its fields.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamTlsError {
    Ca(String),
    ServerName(String),
    /// The client certificate: in its key file, or in its chain.
    ClientCertificate {
        in_key_file: bool,
        message: String,
    },
}

/// The certificate the proxy shows servers that ask for one (HAProxy's `crt` on a server).
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl UpstreamTls {
    /// Reads the CA certificates (PEM) servers are verified against, and the certificate to
    /// show servers that ask the proxy for one (mutual TLS).
    pub fn load(
        ca: &Path,
        server_name: Option<&str>,
        client_files: Option<&CertFiles>,
    ) -> Result<UpstreamTls, UpstreamTlsError> {
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_string())
                    .map_err(|_| UpstreamTlsError::ServerName(format!("`{name}` is not a DNS name or an IP address")))
            })
            .transpose()?;
        let pem = read(ca).map_err(UpstreamTlsError::Ca)?;
        let roots = roots_from_pem(&pem, ca).map_err(UpstreamTlsError::Ca)?;
        let client = client_files
            .map(|files| {
                load(files)
                    .map_err(|e| UpstreamTlsError::ClientCertificate { in_key_file: e.in_key_file, message: e.message })
            })
            .transpose()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| UpstreamTlsError::Ca(e.to_string()))?
            .with_root_certificates(roots);
        // What the config verifies with and shows: a reload that changes any of it is a change.
        let ca_digest = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            pem.hash(&mut hasher);
            client.as_ref().map(|c| c.cert.iter().map(|d| d.to_vec()).collect::<Vec<_>>()).hash(&mut hasher);
            hasher.finish()
        };
        let mut config = match client {
            Some(certified) => builder.with_client_cert_resolver(Arc::new(ClientCertificate(Arc::new(certified)))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h2_config = config.clone();
        h2_config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            h2_connector: tokio_rustls::TlsConnector::from(Arc::new(h2_config)),
            server_name,
            ca: ca.to_path_buf(),
            ca_digest,
        })
    }

    /// The same verification, offering HTTP/2 in ALPN instead of HTTP/1.1.
    pub fn http2(&self) -> UpstreamTls {
        UpstreamTls { connector: self.h2_connector.clone(), ..self.clone() }
    }

    /// The handshake on a connected socket to `address`, written in the config as `host` if named.
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
        address: std::net::SocketAddr,
        host: Option<&str>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = match (&self.server_name, host) {
            (Some(name), _) => name.clone(),
            (None, Some(host)) => {
                ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::IpAddress(address.ip().into()))
            }
            (None, None) => ServerName::IpAddress(address.ip().into()),
        };
        self.connector.connect(name, tcp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite as S;

    #[test]
    fn a_client_prefers_chacha20_when_it_lists_it_before_every_aes_suite() {
        assert!(prefers_chacha20(&[S::TLS13_CHACHA20_POLY1305_SHA256, S::TLS13_AES_128_GCM_SHA256]));
        assert!(prefers_chacha20(&[
            S::TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ]));
        assert!(!prefers_chacha20(&[S::TLS13_AES_256_GCM_SHA384, S::TLS13_CHACHA20_POLY1305_SHA256]));
        assert!(!prefers_chacha20(&[S::TLS13_AES_128_GCM_SHA256]));
        assert!(!prefers_chacha20(&[]));
    }
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair on loopback: our side wrapped, and the peer.
    async fn pair() -> (Coalescing, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        (Coalescing::new(ours), peer)
    }

    /// What the peer has received within 100 ms.
    async fn received(peer: &mut tokio::net::TcpStream) -> String {
        let mut buf = vec![0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), peer.read(&mut buf)).await {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => String::new(),
        }
    }

    /// Our side reads until it would wait (nothing comes): that is when held data must leave.
    async fn read_would_wait(ours: &mut Coalescing) {
        let mut buf = [0u8; 16];
        assert!(tokio::time::timeout(Duration::from_millis(50), ours.read(&mut buf)).await.is_err());
    }

    #[tokio::test]
    async fn the_handshake_leaves_before_a_read_waits_and_tickets_leave_with_the_answer() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"flight").await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(received(&mut peer).await, "", "held while the handshake goes on");
        read_would_wait(&mut ours).await;
        assert_eq!(received(&mut peer).await, "flight", "sent before waiting for the peer");

        ours.write_all(b"tickets;").await.unwrap();
        ours.handshake_done(true);
        read_would_wait(&mut ours).await;
        assert_eq!(received(&mut peer).await, "", "TLS 1.3 tickets wait for the answer");
        ours.write_all(b"answer").await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(received(&mut peer).await, "tickets;answer", "in one write");
        ours.write_all(b"more").await.unwrap();
        assert_eq!(received(&mut peer).await, "more", "then writes go out as they come");
    }

    #[tokio::test]
    async fn after_tls12_what_is_held_leaves_before_a_read_waits_and_on_drop() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"finished").await.unwrap();
        ours.handshake_done(false);
        read_would_wait(&mut ours).await;
        assert_eq!(received(&mut peer).await, "finished", "the client waits for the server's Finished");

        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"alert").await.unwrap();
        drop(ours);
        assert_eq!(received(&mut peer).await, "alert", "a last alert is not lost");
    }
}
