//! Debian's testssl.sh against the proxy's HTTPS listener, with the certificate `webstack cert`
//! makes: protocols, cipher categories and known vulnerabilities, nothing rated weak, not ok
//! or vulnerable.

mod support;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use support::Stop;

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[test]
fn testssl_finds_nothing_weak_not_ok_or_vulnerable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let made = Command::new(env!("CARGO_BIN_EXE_webstack"))
        .args(["cert", "--topology"])
        .arg(repo_root().join("webstack.toml"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello").unwrap();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"tls\"\n[[listeners]]\nname = \"tls\"\nbind = \"127.208.0.1:8443\"\n[listeners.tls]\nhsts_max_age = 31536000\n\
             [[listeners.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n[[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{}\"\n",
            state.join("certs/site.pem").display(),
            state.join("certs/site-key.pem").display(),
            www.display()
        ),
    )
    .unwrap();
    let _proxy = Stop(
        Command::new(env!("CARGO_BIN_EXE_webstack"))
            .args(["proxy", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect("127.208.0.1:8443").is_err() {
        assert!(Instant::now() < deadline, "the proxy did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let report = dir.path().join("testssl.json");
    let scan = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--protocols", "--std", "--vulnerable", "--ip", "127.208.0.1", "--jsonfile"])
        .arg(&report)
        .arg("https://www.foobar.com:8443/")
        .stdout(Stdio::null())
        .status()
        .expect("testssl (Debian's testssl.sh package; scripts/setup installs it)");
    assert!(scan.success() || report.exists(), "testssl did not run: {scan}");
    let findings: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(findings.len() >= 20, "the scan stopped early: {findings:?}");
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| !matches!(f["severity"].as_str(), Some("OK") | Some("INFO")))
        .map(|f| format!("{} {}: {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl findings rated weak, not ok or vulnerable:\n{}", bad.join("\n"));
}
