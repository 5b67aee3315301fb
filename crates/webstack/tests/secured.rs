//! The `secured` profile: two load balancers share the VIP (one MASTER, one BACKUP), HTTP
//! answers with a redirect to HTTPS, HTTPS carries HSTS, the edge speaks HTTPS to the web
//! servers, and killing the MASTER's edge moves the site to the BACKUP.

mod support;

use std::time::{Duration, Instant};

use support::{get, Stack};

const SUBNET: &str = "127.219.0.0/16";

/// curl of `url` over HTTPS, trusting the stack's CA, the name sent to `resolve`'s address;
/// what `output` asks it to print (lowercased), and its errors.
fn curl_verified(stack: &Stack, resolve: &str, url: &str, output: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "2"])
        .args(output)
        .arg("--cacert")
        .arg(stack.state_dir().join("certs/ca.pem"))
        .args(["--resolve", resolve, url])
        .output()
        .expect("curl");
    (String::from_utf8_lossy(&out.stdout).to_ascii_lowercase(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn curl_https(stack: &Stack) -> (String, String) {
    curl_verified(stack, "www.foobar.com:8443:127.219.1.10", "https://www.foobar.com:8443/", &["-D", "-"])
}

fn edge_role(stack: &Stack, host: usize) -> String {
    let status = stack.status();
    let edge =
        status["hosts"][host]["components"].as_array().unwrap().iter().find(|c| c["name"] == "edge").unwrap().clone();
    edge["role"].as_str().unwrap_or("").to_string()
}

#[test]
fn secured_profile_runs_a_load_balancer_pair_and_https_only() {
    let stack = Stack::new();
    let up = stack.run_ok(&["up", "-d", "--profile", "secured", "--subnet", SUBNET, "--timeout", "150"]);
    assert!(up.contains("all healthy"), "{up}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(edge_role(&stack, 0) == "MASTER" && edge_role(&stack, 1) == "BACKUP") {
        assert!(Instant::now() < deadline, "no MASTER/BACKUP pair: {}", stack.run_ok(&["status"]));
        std::thread::sleep(Duration::from_millis(100));
    }

    // The zone's own DNS sends www.foobar.com to the VIP, and knows every host.
    let dig = |name: &str| {
        let out = std::process::Command::new("dig")
            .args(["@127.219.4.1", "-p", "5353", "+short", "+time=2", "+tries=1", name])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig("www.foobar.com"), "127.219.1.10");
    assert_eq!(dig("lb-02.foobar.com"), "127.219.1.2");
    assert_eq!(dig("server-03.foobar.com"), "127.219.2.3");

    // HTTP redirects to HTTPS; HTTPS answers with HSTS.
    let plain = get("127.219.1.10:8080".parse().unwrap(), "/products/1?x=1").unwrap();
    assert_eq!(plain.status, 301);
    assert_eq!(plain.header("location"), Some("https://www.foobar.com:8443/products/1?x=1"));
    let (head, err) = curl_https(&stack);
    assert!(head.starts_with("http/2 200"), "{head}{err}");
    assert!(head.contains("strict-transport-security: max-age=31536000"), "{head}");

    // Between the load balancer and the servers it is HTTPS too: a web server takes no plain
    // HTTP, and answers HTTPS with the site's certificate, which the local CA vouches for.
    assert!(get("127.219.2.1:8080".parse().unwrap(), "/").is_err(), "a web server answered plain HTTP");
    let (code, err) = curl_verified(
        &stack,
        "www.foobar.com:8080:127.219.2.1",
        "https://www.foobar.com:8080/healthz",
        &["-w", "%{http_code}"],
    );
    assert_eq!(code, "200", "{err}");

    // Drill: the MASTER's edge dies; the BACKUP takes the VIP.
    stack.run_ok(&["kill", "lb-01/edge"]);
    let killed = Instant::now();
    loop {
        let (head, _) = curl_https(&stack);
        if head.starts_with("http/2 200") {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(5), "the BACKUP never took over");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("lb-01/edge killed: the site answered again after {} ms", killed.elapsed().as_millis());
    // `status` follows within its probe interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge_role(&stack, 1) != "MASTER" {
        assert!(Instant::now() < deadline, "status never showed lb-02 as MASTER");
        std::thread::sleep(Duration::from_millis(100));
    }
    stack.run_ok(&["down"]);
    assert!(stack.processes_left().is_empty());
}
