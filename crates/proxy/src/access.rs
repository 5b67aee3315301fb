//! Who may use a route, by the client's address (nginx's `allow` / `deny`, HAProxy's
//! `http-request deny if { src … }`): `deny` lists are checked first, then, when an `allow`
//! list is given, only the addresses in it get through. Refused clients get a 403.

use std::net::IpAddr;

/// The client's address as itself: an IPv4 client on a dual-stack socket arrives as
/// ::ffff:a.b.c.d, and is the same client as over IPv4.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("`{text}` is not an address or a block like 10.0.0.0/8 or 2001:db8::/32");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| bad())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(bad)?,
        };
        if mask(network, prefix) != network {
            return Err(format!("`{text}` has host bits set; the block is {}/{prefix}", mask(network, prefix)));
        }
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.prefix) == self.network
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

/// A route's access rules.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl Access {
    pub fn permits(&self, client: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(client))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(client)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.200.3.4")) && !ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4 seen through a dual-stack socket");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")) && !v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
    }

    #[test]
    fn bad_blocks_say_what_is_wrong() {
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("the block is 10.0.0.0/8"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
        assert!(Cidr::parse("").is_err());
    }

    #[test]
    fn deny_comes_first_then_allow_limits() {
        let access =
            Access { allow: vec![Cidr::parse("10.0.0.0/8").unwrap()], deny: vec![Cidr::parse("10.6.6.0/24").unwrap()] };
        assert!(access.permits(ip("10.1.1.1")));
        assert!(!access.permits(ip("10.6.6.6")), "denied inside an allowed block");
        assert!(!access.permits(ip("192.0.2.1")), "outside every allowed block");
        assert!(Access::default().permits(ip("192.0.2.1")), "no rules: everyone");
    }
}
