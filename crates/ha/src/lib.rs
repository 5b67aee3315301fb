//! Load-balancer redundancy for the seed's "no single point of failure" fix: two (or more)
//! edge proxies share a floating VIP; the one in the MASTER state holds it, the others stand
//! by as BACKUP and take over when the master's adverts stop.
//!
//! This module is the pure state machine ([`Node`]), driven by events and returning actions,
//! so every transition is tested without a network or root. It follows VRRP (RFC 9568):
//! priorities, an advert interval, the master-down interval with its priority skew,
//! preemption with an optional delay, and priority 0 as "I am leaving". Unlike keepalived it
//! needs a quorum: a node becomes (or stays) MASTER only while it sees a majority of witnesses,
//! so two nodes that lose sight of each other never both hold the VIP.
//! [`interface`] moves the VIP on hosts with their own network stack (netlink and gratuitous
//! ARP); the rest of the I/O (adverts over UDP, binding the VIP's listeners) comes with the edge
//! proxy that embeds it.

pub mod advert;
pub mod interface;
pub mod vrrp;

pub use vrrp::{Action, Config, Event, Node, State};
