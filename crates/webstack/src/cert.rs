//! `webstack cert`: a local certificate authority and the site's certificate, under the state
//! dir, so the stack serves HTTPS with no setup. The CA is made once and kept; the site's
//! certificate is made again when the names it must cover change. ECDSA P-256 keys.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use topology::SiteCertificate;

pub struct LocalCa {
    pub ca: PathBuf,
    pub site: SiteCertificate,
    /// False when an existing certificate already covered the names.
    pub made: bool,
}

/// Makes (or keeps) the local CA and a certificate for `names` in `dir`.
pub fn ensure(dir: &Path, names: &[String]) -> Result<LocalCa> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let site = SiteCertificate { cert: dir.join("site.pem"), key: dir.join("site-key.pem"), ca: Some(ca_cert.clone()) };
    let names_file = dir.join("site.names");
    let wanted = names.join("\n");
    let current = std::fs::read_to_string(&names_file).unwrap_or_default();
    if current == wanted && ca_cert.exists() && site.cert.exists() && site.key.exists() {
        return Ok(LocalCa { ca: ca_cert, site, made: false });
    }

    let ca_params = ca_params();
    let ca_key_pair = match std::fs::read_to_string(&ca_key) {
        Ok(pem) if ca_cert.exists() => {
            KeyPair::from_pem(&pem).with_context(|| format!("reading {}", ca_key.display()))?
        }
        _ => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let cert = ca_params.self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem())?;
            std::fs::write(&ca_cert, cert.pem()).with_context(|| format!("writing {}", ca_cert.display()))?;
            key
        }
    };
    let ca_pem = std::fs::read_to_string(&ca_cert).with_context(|| format!("reading {}", ca_cert.display()))?;
    let issuer = Issuer::new(ca_params, ca_key_pair);

    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer)?;
    // The chain a server sends: the leaf, then the CA.
    std::fs::write(&site.cert, format!("{}{ca_pem}", cert.pem()))
        .with_context(|| format!("writing {}", site.cert.display()))?;
    write_private(&site.key, &key.serialize_pem())?;
    std::fs::write(&names_file, wanted)?;
    Ok(LocalCa { ca: ca_cert, site, made: true })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "webstack");
    dn.push(DnType::CommonName, "webstack local CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// How to trust the CA, for people.
pub fn trust_instructions(ca: &Path, site_name: &str, https_port: u16, vip: &str) -> String {
    format!(
        "Trust the local CA {ca} to use https://{site_name}:{https_port}/ :\n\
         \x20 curl --cacert {ca} --resolve {site_name}:{https_port}:{vip} https://{site_name}:{https_port}/\n\
         \x20 Chromium: Settings > Privacy and security > Security > Manage certificates > Authorities > Import\n\
         \x20 Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import\n\
         \x20 Debian, system-wide: cp {ca} /usr/local/share/ca-certificates/webstack.crt && update-ca-certificates\n\
         \x20 (browsers also need {site_name} to resolve to {vip}: /etc/hosts, or the stack's DNS once it lands)",
        ca = ca.display()
    )
}
