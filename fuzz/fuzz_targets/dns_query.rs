//! Bytes from the network as a DNS query to the authoritative zone: an answer or silence,
//! never a panic; every answer parses back as a DNS message.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn zone() -> &'static dns::zone::Zone {
    static ZONE: OnceLock<dns::zone::Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let text = "name = \"ns-01\"\nlisten = \"127.0.0.1:5353\"\nzone = \"foobar.com\"\nnameserver = \"ns-01\"\n\
                    [[records]]\nname = \"@\"\naddresses = [\"127.0.1.10\"]\n[[records]]\nname = \"ns-01\"\naddresses = [\"127.0.4.1\"]\n";
        let config = dns::DnsConfig::from_source(&webstack_config::Source::from_text("fuzz.toml", text)).unwrap();
        dns::zone::Zone::new(&config).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some(answer) = zone().answer_bytes(data, |_| true) {
        assert!(hickory_proto::op::Message::from_vec(&answer).is_ok());
    }
});
