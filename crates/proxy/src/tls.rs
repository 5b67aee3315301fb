//! TLS termination with rustls (ring provider): certificate chains and keys from PEM files,
//! the certificate chosen by SNI among several (the first is the default), ALPN `h2` and
//! `http/1.1`, TLS 1.3 and 1.2 with rustls's modern suites only (AEAD, forward secrecy),
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

/// A rustls server config for a listener with these certificates (at least one).
pub fn server_config(certificates: Vec<CertifiedKey>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certificates: certificates.into_iter().map(Arc::new).collect() }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}
