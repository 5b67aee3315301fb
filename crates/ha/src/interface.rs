//! VIP ownership on hosts with their own network stack (a network namespace, a machine): the
//! VIP is an address on an interface, added and removed with rtnetlink, and announced with
//! gratuitous ARP so that clients and switches on the segment send its traffic to the new
//! MASTER at once instead of when their ARP entry expires. (On loopback hosts, which share one
//! stack, the VIP moves by binding instead and none of this is used.)
//!
//! Two netlink messages and one ARP frame: built here by hand (and unit-tested byte for byte)
//! rather than through the rtnetlink crate's async stack. Needs CAP_NET_ADMIN and CAP_NET_RAW.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const ETH_P_ARP: u16 = 0x0806;

/// The VIP as a host address: a /32, as keepalived adds a VIP given without a mask.
const VIP_PREFIX: u8 = 32;

/// A network interface that can carry the VIP.
#[derive(Debug, Clone)]
pub struct Interface {
    name: String,
    index: u32,
}

impl Interface {
    /// The interface called `name` in this process's network namespace.
    pub fn named(name: &str) -> io::Result<Interface> {
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "an interface name has no NUL byte"))?;
        // SAFETY: a valid NUL-terminated string; the call only reads it.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        match index {
            0 => Err(io::Error::new(io::ErrorKind::NotFound, format!("no network interface `{name}` here"))),
            index => Ok(Interface { name: name.to_string(), index }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `vip`/32; already there is fine.
    pub fn add_vip(&self, vip: Ipv4Addr) -> io::Result<()> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        match netlink_request(&address_message(RTM_NEWADDR, flags, self.index, vip, 1)) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(|e| self.error("add", vip, e)),
        }
    }

    /// Removes `vip`/32; already gone is fine.
    pub fn remove_vip(&self, vip: Ipv4Addr) -> io::Result<()> {
        match netlink_request(&address_message(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, self.index, vip, 2)) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map_err(|e| self.error("remove", vip, e)),
        }
    }

    /// Broadcasts a gratuitous ARP for `vip` from this interface's hardware address.
    pub fn announce(&self, vip: Ipv4Addr) -> io::Result<()> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, ETH_P_ARP.to_be() as i32) };
        if fd < 0 {
            return Err(self.error("announce", vip, io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut link: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        link.sll_family = libc::AF_PACKET as u16;
        link.sll_protocol = ETH_P_ARP.to_be();
        link.sll_ifindex = self.index as i32;
        let size = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `link` is a valid sockaddr_ll of `size` bytes.
        let bound = unsafe { libc::bind(socket.as_raw_fd(), &link as *const _ as *const libc::sockaddr, size) };
        if bound < 0 {
            return Err(self.error("announce", vip, io::Error::last_os_error()));
        }
        // A packet socket bound to a device names the device's hardware address.
        let mut named = size;
        // SAFETY: `link` has room for `named` bytes.
        let got =
            unsafe { libc::getsockname(socket.as_raw_fd(), &mut link as *mut _ as *mut libc::sockaddr, &mut named) };
        if got < 0 || link.sll_halen != 6 {
            return Err(self.error("announce", vip, io::Error::other("the interface has no Ethernet address")));
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&link.sll_addr[..6]);
        let frame = gratuitous_arp(mac, vip);
        // SAFETY: `frame` is valid for its length; the socket is bound to the interface.
        let sent = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(self.error("announce", vip, io::Error::last_os_error()));
        }
        Ok(())
    }

    fn error(&self, what: &str, vip: Ipv4Addr, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("cannot {what} the VIP {vip} on {}: {e}", self.name))
    }
}

/// An RTM_NEWADDR or RTM_DELADDR request for `vip`/32 on interface `index`.
fn address_message(kind: u16, flags: u16, index: u32, vip: Ipv4Addr, sequence: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    // nlmsghdr: length, type, flags, sequence, port (0: the kernel)
    m.extend_from_slice(&40u32.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&sequence.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope (universe), interface index
    m.extend_from_slice(&[libc::AF_INET as u8, VIP_PREFIX, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    // rtattrs: the local address and the (same, point-to-point-free) interface address
    for attribute in [IFA_LOCAL, IFA_ADDRESS] {
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&attribute.to_ne_bytes());
        m.extend_from_slice(&vip.octets());
    }
    m
}

/// The kernel's answer to a request with NLM_F_ACK: `Ok` for an ack, the errno otherwise.
fn acknowledgement(answer: &[u8]) -> io::Result<()> {
    let field = |at: usize| answer.get(at..at + 4).and_then(|b| b.try_into().ok());
    let kind = answer.get(4..6).and_then(|b| b.try_into().ok()).map(u16::from_ne_bytes);
    match (kind, field(16).map(i32::from_ne_bytes)) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(errno)) => Err(io::Error::from_raw_os_error(errno.saturating_neg())),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink answer")),
    }
}

/// Sends one request to the kernel's routing netlink and waits (at most a second) for its ack.
fn netlink_request(message: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
    // SAFETY: `timeout` is a valid timeval for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: sockaddr_nl is plain data; all-zero addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `message` is valid for its length and `kernel` is a valid sockaddr_nl.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            &kernel as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 512];
    // SAFETY: `answer` has room for its length.
    let received = unsafe { libc::recv(socket.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    acknowledgement(&answer[..received as usize])
}

/// A gratuitous ARP (RFC 5227's announcement: a broadcast request whose sender and target
/// address are both the VIP), padded to Ethernet's 60-byte minimum.
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request
    f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&vip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_announces_the_vip_from_our_address() {
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        let f = gratuitous_arp(mac, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(&f[..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &[198, 18, 0, 10], "sender address: the VIP");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[198, 18, 0, 10], "target address: the VIP too");
        assert!(f[42..].iter().all(|b| *b == 0), "padding");
    }

    #[test]
    fn an_address_request_carries_the_vip_as_a_host_address() {
        let m = address_message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK, 7, Ipv4Addr::new(198, 18, 0, 10), 1);
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40, "length");
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 32, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7, "interface index");
        assert_eq!(&m[28..32], &[198, 18, 0, 10]);
        assert_eq!(&m[36..40], &[198, 18, 0, 10]);
    }

    #[test]
    fn acknowledgements_and_errors_are_told_apart() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(acknowledgement(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(acknowledgement(&ack).unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert!(acknowledgement(&ack[..10]).is_err(), "short answers are refused, not read past");
        assert!(acknowledgement(&[]).is_err());
        ack[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert!(acknowledgement(&ack).is_err());
    }
}
