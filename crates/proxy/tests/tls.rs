//! HTTPS on a listener: real certificates made by a test CA, a real rustls client. SNI picks
//! the certificate, ALPN picks h2, HTTP redirects to HTTPS, HSTS is sent, sessions resume
//! (TLS 1.3 tickets, TLS 1.2), the server's order of cipher suites wins unless the client
//! puts ChaCha20 first, a reload swaps the certificate for new connections, and a bad
//! certificate file is a config error naming it. Upstream, a pool with `tls` speaks HTTPS to
//! its servers (a real rustls server here), verifies their certificates, keeps the
//! connections alive and checks health over TLS.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod support;

use proxy::ProxyConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webstack_config::Source;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// Writes a chain and key for `names` as `dir/stem.pem` and `dir/stem-key.pem`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        self.client_for(alpn, rustls::DEFAULT_VERSIONS)
    }

    /// A client (with its own session cache, kept across its connections) for `versions`.
    fn client_for(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        self.client_offering(alpn, versions, rustls::crypto::ring::default_provider())
    }

    /// A client offering `provider`'s cipher suites, in its order.
    fn client_offering(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
        provider: rustls::crypto::CryptoProvider,
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(provider);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A proxy serving `dir/www/index.html` over HTTPS on .1:8443 (certificates `a` then `b`),
/// and plain HTTP on .1:8080 that redirects to it.
fn write_config(dir: &Path, net: u8, certs: &[&str]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/index.html"), "hello over tls").unwrap();
    let mut c = format!(
        "name = \"tls\"\n[admin]\nbind = \"127.211.{net}.1:8404\"\n\
         [[listeners]]\nname = \"plain\"\nbind = \"127.211.{net}.1:8080\"\nredirect_https_port = 8443\n\
         [[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{www}\"\n\
         [[listeners]]\nname = \"tls\"\nbind = \"127.211.{net}.1:8443\"\n[listeners.tls]\nhsts_max_age = 600\n",
        www = dir.join("www").display()
    );
    for stem in certs {
        c.push_str(&format!(
            "[[listeners.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join(format!("{stem}.pem")).display(),
            dir.join(format!("{stem}-key.pem")).display()
        ));
    }
    c.push_str(&format!("[[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{}\"\n", dir.join("www").display()));
    let path = dir.join("proxy.toml");
    std::fs::write(&path, c).unwrap();
    path
}

/// Connects with SNI `name`, verifying the server's certificate for it; returns the ALPN
/// protocol and, over HTTP/1.1, the raw answer to `GET /index.html`.
async fn fetch(ca: &Ca, address: SocketAddr, name: &str, alpn: &[&[u8]]) -> Result<(Vec<u8>, String), String> {
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = ca.client(alpn).connect(server_name, tcp).await.map_err(|e| e.to_string())?;
    let protocol = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec).unwrap_or_default();
    if protocol == b"h2" {
        return Ok((protocol, String::new()));
    }
    tls.write_all(format!("GET /index.html HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok((protocol, String::from_utf8_lossy(&out).into_owned()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn sni_alpn_hsts_and_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "a", &["www.foobar.com", "foobar.com"]);
    ca.issue(dir.path(), "b", &["shop.example.org"]);
    let path = write_config(dir.path(), 1, &["a", "b"]);
    let _proxy = Proxy::start_file(&path);
    let tls: SocketAddr = "127.211.1.1:8443".parse().unwrap();
    let rt = runtime();

    // Each name gets the certificate that covers it (the client verifies the name).
    let (alpn, answer) = rt.block_on(fetch(&ca, tls, "www.foobar.com", &[b"http/1.1"])).unwrap();
    assert_eq!(alpn, b"http/1.1");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello over tls"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("strict-transport-security: max-age=600"), "{answer}");
    let (_, answer) = rt.block_on(fetch(&ca, tls, "shop.example.org", &[b"http/1.1"])).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A name no certificate covers gets the default one, which the client rejects.
    let unknown = rt.block_on(fetch(&ca, tls, "other.test", &[b"http/1.1"]));
    assert!(unknown.is_err(), "{unknown:?}");
    // ALPN offers h2 first.
    let (alpn, _) = rt.block_on(fetch(&ca, tls, "www.foobar.com", &[b"h2", b"http/1.1"])).unwrap();
    assert_eq!(alpn, b"h2");

    // Plain HTTP: 301 for GET, 308 for POST, to the same host and path on 8443.
    let redirect = |request: &str| {
        let mut s = std::net::TcpStream::connect("127.211.1.1:8080").unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let get = redirect("GET /a/b?c=1 HTTP/1.1\r\nHost: www.foobar.com:8080\r\nConnection: close\r\n\r\n");
    assert!(get.starts_with("HTTP/1.1 301"), "{get}");
    assert!(get.contains("location: https://www.foobar.com:8443/a/b?c=1"), "{get}");
    let post =
        redirect("POST /order HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 308"), "{post}");

    // Plain HTTP to the TLS port is a failed handshake, as the client that refused the
    // certificate above was: the listener counts both; the plain listener counts its redirects.
    let mut wrong = std::net::TcpStream::connect(tls).unwrap();
    wrong.write_all(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = wrong.read_to_end(&mut out);
    let metrics = || {
        let mut s = std::net::TcpStream::connect("127.211.1.1:8404").unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let wanted = [
        "webstack_proxy_listener_tls_handshake_failures_total{listener=\"tls\"} 2\n",
        "webstack_proxy_listener_responses_total{listener=\"plain\",class=\"3xx\"} 2\n",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = metrics();
        if wanted.iter().all(|w| now.contains(w)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sessions_resume_with_tls13_tickets_and_over_tls12() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "a", &["www.foobar.com"]);
    let _proxy = Proxy::start_file(&write_config(dir.path(), 5, &["a"]));
    let tls: SocketAddr = "127.211.5.1:8443".parse().unwrap();
    let rt = runtime();
    for (label, versions) in [("TLS 1.3", &[&rustls::version::TLS13][..]), ("TLS 1.2", &[&rustls::version::TLS12][..])]
    {
        let client = ca.client_for(&[b"http/1.1"], versions);
        let kinds: Vec<_> = (0..3)
            .map(|_| {
                rt.block_on(async {
                    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
                    let name = ServerName::try_from("www.foobar.com").unwrap();
                    let mut stream = client.connect(name, tcp).await.unwrap();
                    stream
                        .write_all(b"GET /index.html HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n")
                        .await
                        .unwrap();
                    let mut out = Vec::new();
                    let _ = stream.read_to_end(&mut out).await;
                    assert!(out.ends_with(b"hello over tls"), "{label}: {}", String::from_utf8_lossy(&out));
                    stream.get_ref().1.handshake_kind()
                })
            })
            .collect();
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)], "{label}");
    }
}

#[test]
fn the_server_picks_aes_128_gcm_unless_the_client_puts_chacha20_first() {
    use rustls::CipherSuite as S;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "a", &["www.foobar.com"]);
    let _proxy = Proxy::start_file(&write_config(dir.path(), 6, &["a"]));
    let tls: SocketAddr = "127.211.6.1:8443".parse().unwrap();
    let rt = runtime();
    let negotiated = |versions: &[&'static rustls::SupportedProtocolVersion], offered: &[S]| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites =
            offered.iter().map(|want| *provider.cipher_suites.iter().find(|s| s.suite() == *want).unwrap()).collect();
        let client = ca.client_offering(&[b"http/1.1"], versions, provider);
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
            let stream = client.connect(ServerName::try_from("www.foobar.com").unwrap(), tcp).await.unwrap();
            stream.get_ref().1.negotiated_cipher_suite().unwrap().suite()
        })
    };
    let tls13 = &[&rustls::version::TLS13][..];
    let tls12 = &[&rustls::version::TLS12][..];
    // OpenSSL's order (AES-256 first): the server's order wins.
    let openssl13 = [S::TLS13_AES_256_GCM_SHA384, S::TLS13_CHACHA20_POLY1305_SHA256, S::TLS13_AES_128_GCM_SHA256];
    assert_eq!(negotiated(tls13, &openssl13), S::TLS13_AES_128_GCM_SHA256);
    let openssl12 = [
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    assert_eq!(negotiated(tls12, &openssl12), S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    // A client without AES instructions lists ChaCha20 first: it gets it.
    let no_aes13 = [S::TLS13_CHACHA20_POLY1305_SHA256, S::TLS13_AES_128_GCM_SHA256];
    assert_eq!(negotiated(tls13, &no_aes13), S::TLS13_CHACHA20_POLY1305_SHA256);
    let no_aes12 = [S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256];
    assert_eq!(negotiated(tls12, &no_aes12), S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256);
    // Only AES-256 offered: it is what the client gets.
    assert_eq!(negotiated(tls13, &[S::TLS13_AES_256_GCM_SHA384]), S::TLS13_AES_256_GCM_SHA384);
}

#[test]
fn a_reload_swaps_the_certificate_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new();
    old_ca.issue(dir.path(), "a", &["www.foobar.com"]);
    let path = write_config(dir.path(), 2, &["a"]);
    let _proxy = Proxy::start_file(&path);
    let tls: SocketAddr = "127.211.2.1:8443".parse().unwrap();
    let rt = runtime();
    assert!(rt.block_on(fetch(&old_ca, tls, "www.foobar.com", &[b"http/1.1"])).is_ok());

    // New files from another CA, then a reload through the admin API.
    let new_ca = Ca::new();
    new_ca.issue(dir.path(), "a", &["www.foobar.com"]);
    let mut s = std::net::TcpStream::connect("127.211.2.1:8404").unwrap();
    s.write_all(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        rt.block_on(fetch(&new_ca, tls, "www.foobar.com", &[b"http/1.1"])).is_ok(),
        "the new certificate is served"
    );
    assert!(rt.block_on(fetch(&old_ca, tls, "www.foobar.com", &[b"http/1.1"])).is_err(), "the old one is gone");
}

#[test]
fn a_missing_or_bad_certificate_is_a_config_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "a", &["www.foobar.com"]);
    ca.issue(dir.path(), "b", &["other.test"]);
    let path = write_config(dir.path(), 3, &["a", "missing"]);
    let text = std::fs::read_to_string(&path).unwrap();
    let e = ProxyConfig::from_source(&Source::from_text(&path, text)).unwrap_err().to_string();
    assert!(e.contains("listeners[1].tls.certificates[1].cert") && e.contains("missing.pem: No such file"), "{e}");

    // A key that belongs to another certificate.
    std::fs::copy(dir.path().join("b-key.pem"), dir.path().join("a-key.pem")).unwrap();
    let path = write_config(dir.path(), 3, &["a"]);
    let text = std::fs::read_to_string(&path).unwrap();
    let e = ProxyConfig::from_source(&Source::from_text(&path, text)).unwrap_err().to_string();
    assert!(e.contains("listeners[1].tls.certificates[0].key") && e.contains("does not belong to"), "{e}");

    // Not PEM at all.
    std::fs::write(dir.path().join("a.pem"), "hello").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let e = ProxyConfig::from_source(&Source::from_text(&path, text)).unwrap_err().to_string();
    assert!(e.contains("listeners[1].tls.certificates[0].cert") && e.contains("a.pem"), "{e}");
}

#[test]
fn certificates_reload_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "a", &["www.foobar.com"]);
    let first = std::fs::read(dir.path().join("a.pem")).unwrap();
    let path = write_config(dir.path(), 4, &["a"]);
    let _proxy = Proxy::start_file(&path);
    let tls: SocketAddr = "127.211.4.1:8443".parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ca = Arc::new(ca);

    let (ok, failed, kept_alive_after) = rt.block_on(async {
        // A keep-alive connection made before the reload, used again after it.
        let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
        let mut kept =
            ca.client(&[b"http/1.1"]).connect(ServerName::try_from("www.foobar.com").unwrap(), tcp).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (ca, stop) = (ca.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match fetch(&ca, tls, "www.foobar.com", &[b"http/1.1"]).await {
                        Ok((_, answer)) if answer.starts_with("HTTP/1.1 200") => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        ca.issue(dir.path(), "a", &["www.foobar.com"]);
        let reload = tokio::task::spawn_blocking(|| {
            let mut s = std::net::TcpStream::connect("127.211.4.1:8404").unwrap();
            s.write_all(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(reload.starts_with("HTTP/1.1 200"), "{reload}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut ok, mut failed) = (0, 0);
        for c in clients {
            let (o, f) = c.await.unwrap();
            ok += o;
            failed += f;
        }
        kept.write_all(b"GET /index.html HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = kept.read_to_end(&mut answer).await;
        (ok, failed, String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"))
    });
    assert!(ok > 20, "only {ok} requests");
    assert_eq!(failed, 0, "{failed} of {} TLS requests failed across the reload", ok + failed);
    assert!(kept_alive_after, "the connection opened before the reload was dropped");

    // New connections now get the new certificate.
    let served = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
        let stream =
            ca.client(&[b"http/1.1"]).connect(ServerName::try_from("www.foobar.com").unwrap(), tcp).await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    });
    let new = std::fs::read(dir.path().join("a.pem")).unwrap();
    let der = |pem: &[u8]| CertificateDer::from_pem_slice(pem).unwrap().to_vec();
    assert_eq!(served, der(&new));
    assert_ne!(served, der(&first));
}

/// An HTTPS server (rustls, TLS 1.3 tickets sent after each handshake as by default) that
/// answers every request on a connection with `connection N` (N counts its connections from
/// 1) and records the request lines it was sent; stopped when dropped.
struct TlsOrigin {
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An origin's TLS: the chain and key `dir/stem.pem`, `dir/stem-key.pem`; with
/// `clients_from`, a CA (PEM) every client must show a certificate of (mutual TLS).
fn origin_tls_config(dir: &Path, stem: &str, clients_from: Option<&str>) -> rustls::ServerConfig {
    let chain = CertificateDer::pem_file_iter(dir.join(format!("{stem}.pem"))).unwrap().map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(format!("{stem}-key.pem"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match clients_from {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, key).unwrap()
}

impl TlsOrigin {
    /// `clients_from`: a CA (PEM) every client must show a certificate of (mutual TLS).
    fn start(address: SocketAddr, dir: &Path, stem: &str, clients_from: Option<&str>) -> TlsOrigin {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(origin_tls_config(dir, stem, clients_from)));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let listener = std::net::TcpListener::bind(address).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    for n in 1.. {
                        let Ok((tcp, _)) = listener.accept().await else { continue };
                        let (acceptor, seen) = (acceptor.clone(), seen.clone());
                        tokio::spawn(async move {
                            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                            let mut buf = Vec::new();
                            let mut chunk = [0u8; 4096];
                            loop {
                                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                                    match tls.read(&mut chunk).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                                    }
                                    continue;
                                };
                                let head: Vec<u8> = buf.drain(..end + 4).collect();
                                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
                                seen.lock().unwrap().push(line);
                                let body = format!("connection {n}");
                                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                                if tls.write_all(answer.as_bytes()).await.is_err() || tls.flush().await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            })
        });
        TlsOrigin { requests, stop: Some(stop), thread: Some(thread) }
    }

    /// The request lines received, health checks left out.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().filter(|l| !l.contains("/healthz")).cloned().collect()
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One GET over a new connection; the whole answer.
fn get(address: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn a_pool_with_tls_speaks_https_to_its_servers_checks_them_over_it_and_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "origin", &["origin.internal"]);
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let _origin = TlsOrigin::start("127.211.7.2:8443".parse().unwrap(), dir.path(), "origin", None);
    // The CA is named relative to the config file; checks every 50 ms take the server out
    // at the first failure, so a check that could not speak TLS would turn requests to 503.
    let config = "name = \"edge\"\n[[listeners]]\nname = \"www\"\nbind = \"127.211.7.1:8080\"\n\
        [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\
        [pools.web]\n[pools.web.tls]\nca = \"ca.pem\"\nserver_name = \"origin.internal\"\n\
        [pools.web.health]\npath = \"/healthz\"\ninterval_ms = 50\nfall = 1\nrise = 1\n\
        [[pools.web.servers]]\nname = \"o1\"\naddress = \"127.211.7.2:8443\"\n";
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let _proxy = Proxy::start_file(&path);
    std::thread::sleep(Duration::from_millis(400));

    let answers: Vec<String> = (0..5).map(|i| get("127.211.7.1:8080", &format!("/page/{i}"))).collect();
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // One TLS connection served them all: kept alive in the pool, not dropped for the
    // session tickets that arrived on it after the handshake.
    let first = answers[0].rsplit("\r\n\r\n").next().unwrap().to_string();
    assert!(first.starts_with("connection "), "{first}");
    for answer in &answers {
        assert!(answer.ends_with(&first), "a new connection for a request: {answer}");
    }
    assert_eq!(_origin.requests(), (0..5).map(|i| format!("GET /page/{i} HTTP/1.1")).collect::<Vec<_>>());
}

#[test]
fn a_server_whose_certificate_does_not_verify_is_never_sent_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "origin", &["origin.internal"]);
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), Ca::new().pem).unwrap();
    let origin = TlsOrigin::start("127.211.8.2:8443".parse().unwrap(), dir.path(), "origin", None);
    let pool = |name: &str, ca: &str, server_name: &str| {
        format!(
            "[pools.{name}]\n[pools.{name}.tls]\nca = \"{ca}\"\nserver_name = \"{server_name}\"\n\
             [[pools.{name}.servers]]\nname = \"o1\"\naddress = \"127.211.8.2:8443\"\n"
        )
    };
    let config = format!(
        "name = \"edge\"\n[[listeners]]\nname = \"www\"\nbind = \"127.211.8.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/name\"\npool = \"wrong_name\"\n\
         [[listeners.routes]]\nprefix = \"/ca\"\npool = \"other_ca\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"right\"\n{}{}{}",
        pool("wrong_name", "ca.pem", "elsewhere.internal"),
        pool("other_ca", "other-ca.pem", "origin.internal"),
        pool("right", "ca.pem", "origin.internal"),
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let _proxy = Proxy::start_file(&path);

    for path in ["/name", "/ca"] {
        let answer = get("127.211.8.1:8080", path);
        assert!(answer.starts_with("HTTP/1.1 502"), "{path}: {answer}");
    }
    assert!(origin.requests().is_empty(), "sent over TLS that did not verify: {:?}", origin.requests());
    // The same server, verified as it should be, is reachable.
    assert!(get("127.211.8.1:8080", "/").starts_with("HTTP/1.1 200"));
    assert_eq!(origin.requests(), ["GET / HTTP/1.1"]);
}

#[test]
fn a_server_named_by_host_name_is_verified_for_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "origin", &["origin.internal"]);
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let origin = TlsOrigin::start("127.211.9.2:8443".parse().unwrap(), dir.path(), "origin", None);
    // No server_name: the certificate is verified for the host name the address was given as.
    let config = "name = \"edge\"\n[[listeners]]\nname = \"www\"\nbind = \"127.211.9.1:8080\"\n\
        [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\
        [pools.web]\n[pools.web.tls]\nca = \"ca.pem\"\n\
        [[pools.web.servers]]\nname = \"o1\"\naddress = \"origin.internal:8443\"\n";
    let path = dir.path().join("proxy.toml");
    let resolve = |host: &str, port: u16| match host {
        "origin.internal" => Ok(vec![SocketAddr::from(([127, 211, 9, 2], port))]),
        _ => Err(std::io::Error::other("unknown host")),
    };
    let config = ProxyConfig::from_source_resolving(&Source::from_text(&path, config), &resolve).unwrap();
    let _proxy = Proxy::start_with(config);
    let answer = get("127.211.9.1:8080", "/by-name");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(origin.requests(), ["GET /by-name HTTP/1.1"]);
}

#[test]
fn a_server_that_asks_for_a_client_certificate_gets_the_pools() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "origin", &["origin.internal"]);
    ca.issue(dir.path(), "lb", &["lb.internal"]);
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let origin = TlsOrigin::start("127.211.10.2:8443".parse().unwrap(), dir.path(), "origin", Some(&ca.pem));
    let pool = |name: &str, client: &str| {
        format!(
            "[pools.{name}]\n[pools.{name}.tls]\nca = \"ca.pem\"\nserver_name = \"origin.internal\"\n{client}\n\
             [[pools.{name}.servers]]\nname = \"o1\"\naddress = \"127.211.10.2:8443\"\n"
        )
    };
    let config = format!(
        "name = \"edge\"\n[[listeners]]\nname = \"www\"\nbind = \"127.211.10.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/anonymous\"\npool = \"anonymous\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"mutual\"\n{}{}",
        pool("mutual", "cert = \"lb.pem\"\nkey = \"lb-key.pem\""),
        pool("anonymous", ""),
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &config).unwrap();
    let _proxy = Proxy::start_file(&path);

    let answer = get("127.211.10.1:8080", "/with-certificate");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = get("127.211.10.1:8080", "/anonymous");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(origin.requests(), ["GET /with-certificate HTTP/1.1"]);

    // Half a pair is a config error on the pool's tls table.
    let half = config.replace("key = \"lb-key.pem\"", "");
    std::fs::write(&path, half).unwrap();
    let e = ProxyConfig::load(&path).unwrap_err();
    assert_eq!(e.0[0].field, "pools.mutual.tls", "{e}");
}

/// An HTTP/2-only HTTPS server (ALPN h2 and nothing else), as a gRPC server behind TLS is:
/// answers with its protocol, the scheme and path it was asked for, and a trailer.
fn h2_tls_origin(address: SocketAddr, dir: &Path, stem: &str) -> std::thread::JoinHandle<()> {
    let mut config = origin_tls_config(dir, stem, None);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind(address).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!(
                            "{:?} {} {}",
                            req.version(),
                            req.uri().scheme_str().unwrap_or("-"),
                            req.uri().path()
                        );
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                        let body = http_body_util::BodyExt::with_trailers(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                            std::future::ready(Some(Ok::<_, std::convert::Infallible>(trailers))),
                        );
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        })
    })
}

#[test]
fn a_pool_with_protocol_h2_and_tls_speaks_http2_over_https_to_its_servers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "grpc", &["grpc.internal"]);
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let _origin = h2_tls_origin("127.211.11.2:8443".parse().unwrap(), dir.path(), "grpc");
    // Checked over HTTP/2 and TLS every 50 ms, out at the first failure: a check that could
    // not speak either would turn every request to 503.
    let config = "name = \"edge\"\n[[listeners]]\nname = \"www\"\nbind = \"127.211.11.1:8080\"\n\
        [[listeners.routes]]\nprefix = \"/\"\npool = \"grpc\"\n\
        [pools.grpc]\nprotocol = \"h2\"\n[pools.grpc.tls]\nca = \"ca.pem\"\nserver_name = \"grpc.internal\"\n\
        [pools.grpc.health]\npath = \"/healthz\"\ninterval_ms = 50\nfall = 1\nrise = 1\n\
        [[pools.grpc.servers]]\nname = \"g1\"\naddress = \"127.211.11.2:8443\"\n";
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let _proxy = Proxy::start_file(&path);
    std::thread::sleep(Duration::from_millis(300));
    let answer = get("127.211.11.1:8080", "/pkg.Service/Call");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/2.0 https /pkg.Service/Call"), "over HTTP/2 and TLS: {answer}");
}

/// A plain HTTP server answering each request with its `x-client-*` header lines.
fn client_header_echo(address: SocketAddr) {
    let listener = std::net::TcpListener::bind(address).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    let lines: Vec<String> = String::from_utf8_lossy(&head)
                        .lines()
                        .filter(|l| l.to_ascii_lowercase().starts_with("x-client-"))
                        .map(|l| {
                            l.to_ascii_lowercase().split_once(':').map(|(n, _)| n.to_string()).unwrap_or_default()
                                + ":"
                                + l.split_once(':').map_or("", |(_, v)| v.trim())
                        })
                        .collect();
                    let body = lines.join("\n");
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A client certificate for `subject` (common name, organization), issued by `ca`.
fn client_certificate(
    ca: &Ca,
    cn: &str,
    org: &str,
) -> (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (vec![cert.der().clone()], key)
}

/// GET / over TLS (verifying the server for www.foobar.com), showing `identity` when given
/// and sending `headers`; the answer's body, or why there is none.
async fn fetch_as(
    server_ca: &Ca,
    address: SocketAddr,
    identity: Option<(Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
    headers: &str,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(server_ca.pem.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("www.foobar.com").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let request = format!("GET / HTTP/1.1\r\nHost: www.foobar.com\r\n{headers}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("no answer: {text:?}")),
    }
}

#[test]
fn listeners_verify_client_certificates_and_pass_what_they_say_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, clients_ca, stranger_ca) = (Ca::new(), Ca::new(), Ca::new());
    server_ca.issue(dir.path(), "site", &["www.foobar.com"]);
    std::fs::write(dir.path().join("clients-ca.pem"), &clients_ca.pem).unwrap();
    let origin = addr("127.211.12.11:9000");
    client_header_echo(origin);
    let listener = |name: &str, port: u16, verify: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"127.211.12.1:{port}\"\n[listeners.tls]\n\
             client_ca = \"clients-ca.pem\"\nverify_client = \"{verify}\"\n\
             [[listeners.tls.certificates]]\ncert = \"{d}/site.pem\"\nkey = \"{d}/site-key.pem\"\n\
             [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\
             request_headers = {{ set = {{ \"X-Client-Verify\" = \"$ssl_client_verify\", \
             \"X-Client-DN\" = \"$ssl_client_s_dn\", \"X-Client-Issuer\" = \"$ssl_client_i_dn\", \
             \"X-Client-SHA1\" = \"$ssl_client_fingerprint\" }} }}\n",
            d = dir.path().display()
        )
    };
    let log = dir.path().join("access.log");
    let config = format!(
        "name = \"mtls\"\n[access_log]\npath = \"{}\"\nformat = \"custom\"\n\
         line = '$listener $ssl_client_verify \"$ssl_client_s_dn\"'\n\
         {}{}[pools.web]\n[[pools.web.servers]]\nname = \"echo\"\naddress = \"{origin}\"\n",
        log.display(),
        listener("required", 8443, "required"),
        listener("optional", 8444, "optional")
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let proxy = Proxy::start_file(&path);
    let (required, optional) = (addr("127.211.12.1:8443"), addr("127.211.12.1:8444"));
    let alice = || Some(client_certificate(&clients_ca, "alice", "Acme, Inc."));
    runtime().block_on(async {
        // nginx's ssl_verify_client on: a client of the CA gets in, and the server is told who.
        let body = fetch_as(&server_ca, required, alice(), "X-Client-DN: CN=admin\r\n").await.unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert!(lines.contains(&"x-client-verify:SUCCESS"), "{body}");
        assert!(lines.contains(&"x-client-dn:CN=alice,O=Acme\\, Inc."), "the client's own header is replaced: {body}");
        assert!(lines.iter().any(|l| l.starts_with("x-client-issuer:CN=")), "{body}");
        assert!(lines.iter().any(|l| l.strip_prefix("x-client-sha1:").is_some_and(|h| h.len() == 40)), "{body}");
        // Without a certificate, or with one of another CA: no answer at all.
        let none = fetch_as(&server_ca, required, None, "").await;
        assert!(none.is_err(), "{none:?}");
        let stranger = fetch_as(&server_ca, required, Some(client_certificate(&stranger_ca, "mallory", "Evil")), "");
        assert!(stranger.await.is_err());
        // ssl_verify_client optional: no certificate is let in, and said so.
        let body = fetch_as(&server_ca, optional, None, "X-Client-DN: CN=admin\r\n").await.unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert!(lines.contains(&"x-client-verify:NONE") && lines.contains(&"x-client-dn:"), "{body}");
        let body = fetch_as(&server_ca, optional, alice(), "").await.unwrap();
        assert!(body.lines().any(|l| l == "x-client-verify:SUCCESS"), "{body}");
        let stranger = fetch_as(&server_ca, optional, Some(client_certificate(&stranger_ca, "mallory", "Evil")), "");
        assert!(stranger.await.is_err(), "optional, but a certificate shown must verify");
    });
    drop(proxy); // flushes the log
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(
        lines,
        [
            "required SUCCESS \"CN=alice,O=Acme\\\\, Inc.\"",
            "optional NONE \"-\"",
            "optional SUCCESS \"CN=alice,O=Acme\\\\, Inc.\""
        ],
        "nginx's log_format variables (the log escapes its backslashes, as it does quotes)"
    );
}

#[test]
fn a_bad_client_ca_or_verify_mode_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "site", &["www.foobar.com"]);
    let with = |tls: &str| {
        format!(
            "name = \"x\"\n[[listeners]]\nname = \"www\"\nbind = \"127.211.12.1:9443\"\n[listeners.tls]\n{tls}\
             [[listeners.tls.certificates]]\ncert = \"{d}/site.pem\"\nkey = \"{d}/site-key.pem\"\n\
             [[listeners.routes]]\nprefix = \"/\"\nrespond = {{ body = \"ok\" }}\n",
            d = dir.path().display()
        )
    };
    let error = |tls: &str| {
        let path = dir.path().join("proxy.toml");
        ProxyConfig::from_source(&Source::from_text(&path, with(tls))).unwrap_err().to_string()
    };
    let e = error("client_ca = \"missing.pem\"\n");
    assert!(e.contains("listeners[0].tls.client_ca") && e.contains("missing.pem"), "{e}");
    let e = error("verify_client = \"optional\"\n");
    assert!(e.contains("listeners[0].tls.verify_client") && e.contains("needs `client_ca`"), "{e}");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let e = error("client_ca = \"ca.pem\"\nverify_client = \"on\"\n");
    assert!(e.contains("expected required or optional"), "{e}");
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
