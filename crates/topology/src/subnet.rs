//! IPv4 ranges, for placing hosts and moving a whole stack to another range.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network such as `127.0.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: u32,
    prefix: u8,
}

impl Subnet {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == self.network
    }

    /// The address with the same host part in `other`: how `--subnet` renumbers a stack.
    pub fn rebase(&self, addr: Ipv4Addr, other: &Subnet) -> Ipv4Addr {
        Ipv4Addr::from(other.network | (u32::from(addr) & !other.mask()))
    }

    pub fn is_loopback(&self) -> bool {
        self.prefix >= 8 && Ipv4Addr::from(self.network).octets()[0] == 127
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("`{s}` is not a network like 127.0.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`/{prefix}` is not a prefix length from 0 to 32"))?;
        let subnet = Subnet { network: u32::from(addr), prefix };
        if subnet.network & !subnet.mask() != 0 {
            return Err(format!(
                "`{s}` has host bits set; the network is {}",
                Subnet { network: subnet.network & subnet.mask(), prefix }
            ));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_keeps_the_host_part() {
        let a: Subnet = "127.0.0.0/16".parse().unwrap();
        let b: Subnet = "127.42.0.0/16".parse().unwrap();
        assert_eq!(a.rebase("127.0.2.3".parse().unwrap(), &b), "127.42.2.3".parse::<Ipv4Addr>().unwrap());
        assert!(b.contains("127.42.9.9".parse().unwrap()));
        assert!(!b.contains("127.43.0.1".parse().unwrap()));
    }

    #[test]
    fn rejects_host_bits_and_bad_prefixes() {
        assert!("127.0.0.1/16".parse::<Subnet>().unwrap_err().contains("127.0.0.0/16"));
        assert!("127.0.0.0/33".parse::<Subnet>().is_err());
        assert!("127.0.0.0".parse::<Subnet>().is_err());
    }
}
