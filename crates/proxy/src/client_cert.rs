//! What a client's certificate says, for the `$ssl_client_*` variables of a listener that
//! verifies clients (nginx's `ssl_verify_client`, HAProxy's `verify required`): subject and
//! issuer as RFC 2253 strings (`CN=alice,O=Acme`, as nginx's `$ssl_client_s_dn`), the serial
//! and the SHA-1 fingerprint. rustls has verified the certificate before it gets here; this
//! small DER reader still trusts no length and gives up on anything it does not expect.

/// A verified client certificate, described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    /// RFC 2253: the last RDN first, `,` between RDNs, special characters and every byte
    /// outside printable ASCII escaped (so it always fits in a header).
    pub subject: String,
    pub issuer: String,
    /// Upper-case hex, as OpenSSL prints it.
    pub serial: String,
    /// Lower-case hex SHA-1 of the DER, as nginx's `$ssl_client_fingerprint`.
    pub fingerprint: String,
}

/// What the client of a connection on a verifying listener showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// No certificate (the listener's verification is optional).
    None,
    Verified(ClientCertificate),
}

impl ClientIdentity {
    /// nginx's `$ssl_client_verify`.
    pub fn verify(&self) -> &'static str {
        match self {
            ClientIdentity::None => "NONE",
            ClientIdentity::Verified(_) => "SUCCESS",
        }
    }

    pub fn certificate(&self) -> Option<&ClientCertificate> {
        match self {
            ClientIdentity::None => None,
            ClientIdentity::Verified(c) => Some(c),
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;

/// Describes a DER certificate; `None` when it is not the shape an X.509 certificate has.
pub fn describe(der: &[u8]) -> Option<ClientCertificate> {
    let (tag, certificate, _) = read_tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = read_tlv(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (mut tag, mut field, mut rest) = read_tlv(tbs)?;
    if tag == VERSION {
        (tag, field, rest) = read_tlv(rest)?;
    }
    if tag != INTEGER {
        return None;
    }
    let serial = serial_hex(field);
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (issuer, rest) = expect(rest, SEQUENCE)?;
    let (_validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, _) = expect(rest, SEQUENCE)?;
    Some(ClientCertificate { subject: rfc2253(subject)?, issuer: rfc2253(issuer)?, serial, fingerprint: sha1_hex(der) })
}

/// One tag-length-value: its tag, contents and what follows. Definite lengths up to 4 bytes.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let (length, after) = rest.split_at(bytes);
        rest = after;
        length.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    if rest.len() < length {
        return None;
    }
    let (contents, after) = rest.split_at(length);
    Some((tag, contents, after))
}

fn expect(input: &[u8], wanted: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = read_tlv(input)?;
    (tag == wanted).then_some((contents, rest))
}

/// A Name (SEQUENCE OF RDN, each a SET OF type-and-value) as RFC 2253 writes it.
fn rfc2253(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (set, after) = expect(rest, SET)?;
        rest = after;
        let mut attributes = Vec::new();
        let mut inner = set;
        while !inner.is_empty() {
            let (pair, after) = expect(inner, SEQUENCE)?;
            inner = after;
            let (oid, value_tlv) = expect(pair, OID)?;
            let (tag, value, _) = read_tlv(value_tlv)?;
            attributes.push(format!("{}={}", attribute_name(oid), attribute_value(tag, value, value_tlv)));
        }
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// The short name OpenSSL uses for an attribute type, else its dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "street".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        _ => dotted(oid),
    }
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut arc: u64 = 0;
    for &b in oid {
        arc = arc.saturating_mul(128).saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (arc / 40).min(2);
                arcs.push(first);
                arcs.push(arc - first * 40);
            } else {
                arcs.push(arc);
            }
            arc = 0;
        }
    }
    arcs.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// A string value, decoded and escaped; anything else as `#` and the hex of its DER.
fn attribute_value(tag: u8, value: &[u8], whole: &[u8]) -> String {
    let text: Option<String> = match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => Some(String::from_utf8_lossy(value).into_owned()),
        // TeletexString: Latin-1 in practice
        0x14 => Some(value.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UTF-16BE
        0x1e if value.len().is_multiple_of(2) => {
            let units = value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            Some(char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect())
        }
        // UniversalString: UTF-32BE
        0x1c if value.len().is_multiple_of(4) => Some(
            value
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}'))
                .collect(),
        ),
        _ => None,
    };
    match text {
        Some(text) => escape(&text),
        None => {
            let length = whole.len() - read_tlv(whole).map_or(0, |(_, _, rest)| rest.len());
            format!("#{}", hex_upper(&whole[..length]))
        }
    }
}

/// RFC 2253 escaping, with every byte outside printable ASCII as `\XX` (OpenSSL's
/// ESC_MSB), so the string is ASCII and fits a header.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.len().saturating_sub(1);
    for (i, c) in text.char_indices() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        }
    }
    out
}

/// The serial's bytes without DER's sign padding, upper-case hex.
fn serial_hex(integer: &[u8]) -> String {
    let start = integer.iter().position(|b| *b != 0).unwrap_or(integer.len().saturating_sub(1));
    hex_upper(&integer[start.min(integer.len())..])
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn sha1_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_for(subject: &[(rcgen::DnType, &str)], serial: u64) -> (Vec<u8>, String) {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            dn.push(kind.clone(), *value);
        }
        params.distinguished_name = dn;
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.der().to_vec(), cert.pem())
    }

    #[test]
    fn subject_issuer_serial_and_fingerprint_read_as_nginx_prints_them() {
        use rcgen::DnType;
        let subject =
            [(DnType::CountryName, "US"), (DnType::OrganizationName, "Acme, Inc."), (DnType::CommonName, "alice")];
        let (der, _) = certificate_for(&subject, 0x0abc_def1);
        let described = describe(&der).unwrap();
        assert_eq!(described.subject, "CN=alice,O=Acme\\, Inc.,C=US");
        assert_eq!(described.issuer, described.subject, "self-signed");
        assert_eq!(described.serial, "0ABCDEF1");
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        assert_eq!(described.fingerprint.len(), 40);
        assert_eq!(described.fingerprint, sha1.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>());
    }

    #[test]
    fn bytes_outside_printable_ascii_are_escaped_so_the_name_fits_a_header() {
        let (der, _) = certificate_for(&[(rcgen::DnType::CommonName, "Zoë #1 ")], 1);
        let subject = describe(&der).unwrap().subject;
        assert_eq!(subject, "CN=Zo\\C3\\AB #1\\ ");
        assert!(http::HeaderValue::from_str(&subject).is_ok());
    }

    #[test]
    fn truncated_or_foreign_input_is_refused_not_a_panic() {
        let (der, _) = certificate_for(&[(rcgen::DnType::CommonName, "bob")], 7);
        for cut in 0..der.len() {
            let _ = describe(&der[..cut]);
        }
        assert!(describe(&der[..der.len() / 2]).is_none());
        assert!(describe(b"\x30\x84\xff\xff\xff\xff").is_none(), "a length past the input");
        assert!(describe(b"\x30\x00").is_none());
        assert_eq!(dotted(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37]), "1.3.6.1.4.1.311");
    }
}
