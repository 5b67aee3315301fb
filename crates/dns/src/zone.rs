//! The zone and how it answers one query. Pure: health comes in as a function.

use std::net::Ipv4Addr;
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::DnsConfig;

pub struct Zone {
    origin: Name,
    ttl: u32,
    soa: Record,
    ns: Record,
    /// Fully qualified, lowercased names and their addresses.
    records: Vec<(Name, Vec<Ipv4Addr>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("bad name in the zone: {0}")]
pub struct ZoneError(String);

fn fqdn(name: &str, origin: &Name) -> Result<Name, ZoneError> {
    match name {
        "@" => Ok(origin.clone()),
        n => Name::from_str(n).and_then(|n| n.append_domain(origin)).map_err(|e| ZoneError(format!("{name}: {e}"))),
    }
}

impl Zone {
    pub fn new(config: &DnsConfig) -> Result<Zone, ZoneError> {
        let origin = Name::from_str(&format!("{}.", config.zone)).map_err(|e| ZoneError(e.to_string()))?.to_lowercase();
        let ns_name = fqdn(&config.nameserver, &origin)?.to_lowercase();
        let hostmaster = fqdn("hostmaster", &origin)?;
        let soa = Record::from_rdata(
            origin.clone(),
            config.ttl,
            RData::SOA(SOA::new(ns_name.clone(), hostmaster, 1, 3600, 600, 86_400, config.ttl)),
        );
        let ns = Record::from_rdata(origin.clone(), config.ttl, RData::NS(NS(ns_name)));
        let records = config
            .records
            .iter()
            .map(|r| Ok((fqdn(&r.name, &origin)?.to_lowercase(), r.addresses.clone())))
            .collect::<Result<_, ZoneError>>()?;
        Ok(Zone { origin, ttl: config.ttl, soa, ns, records })
    }

    /// The answer to a request's bytes, or `None` when they are not a DNS query worth
    /// answering (a response, garbage).
    pub fn answer_bytes(&self, request: &[u8], up: impl Fn(Ipv4Addr) -> bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(request).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        self.answer(&request, up).to_vec().ok()
    }

    pub fn answer(&self, request: &Message, up: impl Fn(Ipv4Addr) -> bool) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        response.add_query(query.clone());
        let name = query.name().to_lowercase();
        if !self.origin.zone_of(&name) {
            // Not our zone, and we are no resolver.
            response.metadata.response_code = ResponseCode::Refused;
            return response;
        }
        response.metadata.authoritative = true;
        let addresses = self.records.iter().find(|(n, _)| *n == name).map(|(_, a)| a);
        let at_apex = name == self.origin;
        let qtype = query.query_type();
        let mut answers = Vec::new();
        if matches!(qtype, RecordType::A | RecordType::ANY) {
            if let Some(addresses) = addresses {
                answers.extend(
                    healthy(addresses, &up)
                        .into_iter()
                        .map(|ip| Record::from_rdata(query.name().clone(), self.ttl, RData::A(A(ip)))),
                );
            }
        }
        if at_apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            answers.push(self.soa.clone());
        }
        if at_apex && matches!(qtype, RecordType::NS | RecordType::ANY) {
            answers.push(self.ns.clone());
        }
        if !answers.is_empty() {
            response.add_answers(answers);
            return response;
        }
        // No answer: NODATA when the name exists (NOERROR), else NXDOMAIN; the SOA tells
        // resolvers how long to remember that (RFC 2308).
        let exists = at_apex || addresses.is_some() || self.records.iter().any(|(n, _)| name.zone_of(n) && *n != name);
        if !exists {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        response.authorities.push(self.soa.clone());
        response
    }

    pub fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        if let Ok(n) = Name::from_str(name) {
            m.add_query(Query::query(n, qtype));
        }
        m
    }
}

/// The addresses that pass their checks; all of them when none does.
fn healthy(addresses: &[Ipv4Addr], up: &impl Fn(Ipv4Addr) -> bool) -> Vec<Ipv4Addr> {
    let passing: Vec<Ipv4Addr> = addresses.iter().copied().filter(|a| up(*a)).collect();
    if passing.is_empty() {
        addresses.to_vec()
    } else {
        passing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RecordConfig;

    fn zone() -> Zone {
        let config = DnsConfig {
            name: "ns-01".into(),
            listen: "127.0.0.1:5353".parse().unwrap(),
            zone: "foobar.com".into(),
            ttl: 30,
            nameserver: "ns-01".into(),
            records: vec![
                RecordConfig { name: "@".into(), addresses: vec![Ipv4Addr::new(127, 0, 1, 10)], check_port: None },
                RecordConfig {
                    name: "www".into(),
                    addresses: vec![Ipv4Addr::new(127, 0, 1, 10), Ipv4Addr::new(127, 0, 1, 11)],
                    check_port: Some(8443),
                },
                RecordConfig { name: "ns-01".into(), addresses: vec![Ipv4Addr::new(127, 0, 4, 1)], check_port: None },
                RecordConfig { name: "a.deep".into(), addresses: vec![Ipv4Addr::new(127, 0, 9, 9)], check_port: None },
            ],
        };
        Zone::new(&config).unwrap()
    }

    fn ips(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn answers_a_records_with_the_authoritative_flag() {
        let z = zone();
        let m = z.answer(&Zone::query("WWW.foobar.com.", RecordType::A), |_| true);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(ips(&m), vec![Ipv4Addr::new(127, 0, 1, 10), Ipv4Addr::new(127, 0, 1, 11)]);
        let apex = z.answer(&Zone::query("foobar.com.", RecordType::A), |_| true);
        assert_eq!(ips(&apex), vec![Ipv4Addr::new(127, 0, 1, 10)]);
    }

    #[test]
    fn answers_follow_health_but_never_empty() {
        let z = zone();
        let m = z.answer(&Zone::query("www.foobar.com.", RecordType::A), |ip| ip != Ipv4Addr::new(127, 0, 1, 10));
        assert_eq!(ips(&m), vec![Ipv4Addr::new(127, 0, 1, 11)]);
        let all_down = z.answer(&Zone::query("www.foobar.com.", RecordType::A), |_| false);
        assert_eq!(ips(&all_down).len(), 2);
    }

    #[test]
    fn nxdomain_and_nodata_carry_the_soa() {
        let z = zone();
        let nx = z.answer(&Zone::query("nope.foobar.com.", RecordType::A), |_| true);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty());
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let nodata = z.answer(&Zone::query("www.foobar.com.", RecordType::AAAA), |_| true);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
        // An empty non-terminal (deep.foobar.com has a name below it) exists: NODATA.
        let ent = z.answer(&Zone::query("deep.foobar.com.", RecordType::A), |_| true);
        assert_eq!(ent.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn soa_and_ns_at_the_apex_and_refusal_elsewhere() {
        let z = zone();
        let soa = z.answer(&Zone::query("foobar.com.", RecordType::SOA), |_| true);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        let ns = z.answer(&Zone::query("foobar.com.", RecordType::NS), |_| true);
        assert_eq!(ns.answers[0].record_type(), RecordType::NS);
        let other = z.answer(&Zone::query("example.org.", RecordType::A), |_| true);
        assert_eq!(other.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn garbage_gets_no_answer_and_no_panic() {
        let z = zone();
        for bytes in [&b""[..], b"\x00", &[0xff; 12], &[0u8; 512]] {
            let _ = z.answer_bytes(bytes, |_| true);
        }
    }
}
