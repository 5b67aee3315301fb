//! What comes back to the proxy's resolver from the network (a nameserver's reply, a late
//! one, a forgery, garbage), as bytes: never a panic, and addresses only for the question asked.
#![no_main]

use hickory_proto::rr::RecordType;
use libfuzzer_sys::fuzz_target;
use proxy::resolvers::{fqdn, read_answer, Answer, Reply};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = fqdn("web-01.internal") else { return };
    for qtype in [RecordType::A, RecordType::AAAA] {
        if let Ok(Reply::Answer(Answer::Addresses(ips))) = read_answer(data, 0x1234, &name, qtype) {
            assert!(!ips.is_empty());
            assert!(ips.iter().all(|ip| ip.is_ipv4() == (qtype == RecordType::A)));
        }
    }
});
