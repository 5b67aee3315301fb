//! `webstack dns` answers as an authoritative server should, checked with dig (Debian's
//! bind9-dnsutils) over UDP and TCP.

mod support;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use support::Stop;

fn dig(args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.208.4.1", "-p", "5353", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (Debian's bind9-dnsutils; scripts/setup installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    let mut lines: Vec<String> = dig(&all).lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines
}

#[test]
fn dig_gets_authoritative_answers_nxdomain_nodata_and_health_following_records() {
    // Two addresses for www: one with a listener on the checked port, one without.
    let healthy = std::net::TcpListener::bind("127.208.1.10:8443").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dns.toml");
    std::fs::write(
        &config,
        "name = \"ns-01\"\nlisten = \"127.208.4.1:5353\"\nzone = \"foobar.com\"\nttl = 30\nnameserver = \"ns-01\"\n\
         [[records]]\nname = \"@\"\naddresses = [\"127.208.1.10\"]\n\
         [[records]]\nname = \"www\"\naddresses = [\"127.208.1.10\", \"127.208.1.11\"]\ncheck_port = 8443\n\
         [[records]]\nname = \"ns-01\"\naddresses = [\"127.208.4.1\"]\n\
         [[records]]\nname = \"server-01\"\naddresses = [\"127.208.2.1\"]\n",
    )
    .unwrap();
    let _dns = Stop(
        Command::new(env!("CARGO_BIN_EXE_webstack"))
            .args(["dns", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while short(&["server-01.foobar.com"]).is_empty() {
        assert!(Instant::now() < deadline, "no answer from webstack dns");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(short(&["server-01.foobar.com"]), ["127.208.2.1"]);
    assert_eq!(short(&["foobar.com"]), ["127.208.1.10"]);
    assert_eq!(short(&["+tcp", "server-01.foobar.com"]), ["127.208.2.1"], "over TCP too");
    assert_eq!(short(&["foobar.com", "NS"]), ["ns-01.foobar.com."]);
    assert!(short(&["foobar.com", "SOA"])[0].starts_with("ns-01.foobar.com. hostmaster.foobar.com. 1 "));

    let full = dig(&["www.foobar.com"]);
    assert!(full.contains("flags: qr aa"), "authoritative: {full}");

    let nx = dig(&["nope.foobar.com"]);
    assert!(nx.contains("status: NXDOMAIN") && nx.contains("AUTHORITY: 1"), "{nx}");
    let nodata = dig(&["www.foobar.com", "AAAA"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0") && nodata.contains("AUTHORITY: 1"),
        "{nodata}"
    );
    let other = dig(&["example.org"]);
    assert!(other.contains("status: REFUSED"), "{other}");

    // The address without a listener is withdrawn once its check fails; the other stays.
    let deadline = Instant::now() + Duration::from_secs(5);
    while short(&["www.foobar.com"]) != ["127.208.1.10"] {
        assert!(Instant::now() < deadline, "www kept its dead address: {:?}", short(&["www.foobar.com"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    // With no healthy address left, every address is given rather than none.
    drop(healthy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while short(&["www.foobar.com"]).len() != 2 {
        assert!(Instant::now() < deadline, "www lost all its addresses");
        std::thread::sleep(Duration::from_millis(100));
    }
}
