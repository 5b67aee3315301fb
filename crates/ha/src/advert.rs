//! The advert a MASTER sends every interval, on the wire. 40 bytes, big-endian:
//!
//! ```text
//! 0..4   magic "WSHA"        4      version (1)        5   priority (0 = leaving)
//! 6..8   advert interval ms  8..12  sender id          12..16  the VIP (IPv4)
//! 16..24 sequence number (grows per sender, so a replayed advert is refused)
//! 24..40 HMAC-SHA256 of bytes 0..24 under the pair's shared key, truncated to 16 bytes
//! ```
//!
//! keepalived's VRRP carries no authentication (RFC 3768's was dropped): any host on the link
//! can claim the VIP. Here an advert without the key is refused.

use std::net::Ipv4Addr;

use ring::hmac;

pub const LEN: usize = 40;
const MAGIC: &[u8; 4] = b"WSHA";
const VERSION: u8 = 1;
const TAG: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    pub priority: u8,
    pub interval_ms: u16,
    pub sender: u32,
    pub vip: Ipv4Addr,
    pub sequence: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvertError {
    Length(usize),
    Magic,
    Version(u8),
    /// Wrong key, or altered on the way.
    Authentication,
}

impl std::fmt::Display for AdvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdvertError::Length(n) => write!(f, "advert of {n} bytes; expected {LEN}"),
            AdvertError::Magic => f.write_str("not a webstack advert"),
            AdvertError::Version(v) => write!(f, "advert version {v}; this node speaks {VERSION}"),
            AdvertError::Authentication => f.write_str("advert failed authentication (wrong key?)"),
        }
    }
}

impl std::error::Error for AdvertError {}

/// The pair's shared key.
pub struct Key(hmac::Key);

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

pub fn encode(advert: &Advert, key: &Key) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[0..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5] = advert.priority;
    out[6..8].copy_from_slice(&advert.interval_ms.to_be_bytes());
    out[8..12].copy_from_slice(&advert.sender.to_be_bytes());
    out[12..16].copy_from_slice(&advert.vip.octets());
    out[16..24].copy_from_slice(&advert.sequence.to_be_bytes());
    let tag = hmac::sign(&key.0, &out[..24]);
    out[24..].copy_from_slice(&tag.as_ref()[..TAG]);
    out
}

/// Reads an advert; anything malformed or unauthenticated is an error, never a panic.
pub fn decode(bytes: &[u8], key: &Key) -> Result<Advert, AdvertError> {
    if bytes.len() != LEN {
        return Err(AdvertError::Length(bytes.len()));
    }
    if &bytes[0..4] != MAGIC {
        return Err(AdvertError::Magic);
    }
    if bytes[4] != VERSION {
        return Err(AdvertError::Version(bytes[4]));
    }
    let expected = hmac::sign(&key.0, &bytes[..24]);
    // ring's verify compares in constant time, but wants the full tag; compare the truncated
    // one in constant time by hand.
    let differs = expected.as_ref()[..TAG].iter().zip(&bytes[24..]).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differs != 0 {
        return Err(AdvertError::Authentication);
    }
    let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut sequence = [0u8; 8];
    sequence.copy_from_slice(&bytes[16..24]);
    Ok(Advert {
        priority: bytes[5],
        interval_ms: u16_at(6),
        sender: u32_at(8),
        vip: Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]),
        sequence: u64::from_be_bytes(sequence),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Advert {
        Advert { priority: 200, interval_ms: 50, sender: 7, vip: Ipv4Addr::new(127, 0, 1, 10), sequence: 42 }
    }

    #[test]
    fn round_trips() {
        let key = Key::new(b"pair secret");
        assert_eq!(decode(&encode(&sample(), &key), &key), Ok(sample()));
    }

    #[test]
    fn refuses_a_wrong_key_a_changed_byte_and_garbage() {
        let key = Key::new(b"pair secret");
        let bytes = encode(&sample(), &key);
        assert_eq!(decode(&bytes, &Key::new(b"other")), Err(AdvertError::Authentication));
        let mut changed = bytes;
        changed[5] = 255; // a node raising its own priority in flight
        assert_eq!(decode(&changed, &key), Err(AdvertError::Authentication));
        assert_eq!(decode(&bytes[..39], &key), Err(AdvertError::Length(39)));
        assert_eq!(decode(&[0u8; LEN], &key), Err(AdvertError::Magic));
        let mut version = bytes;
        version[4] = 9;
        assert_eq!(decode(&version, &key), Err(AdvertError::Version(9)));
    }
}
