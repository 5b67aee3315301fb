//! The CLI as a user meets it: `check` and component configs report errors with file, line
//! and field; commands on a stack that is not up say what to do.

mod support;

use std::process::Command;

use support::{repo_root, webstack_bin};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(webstack_bin()).args(args).current_dir(repo_root()).output().expect("run webstack");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The repo's topology, with its static root made absolute so the copy can live elsewhere.
fn topology_copy(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("webstack.toml")).unwrap();
    let root = repo_root().join("crates/app/static");
    let text = text.replace("static_root = \"crates/app/static\"", &format!("static_root = \"{}\"", root.display()));
    let path = dir.join("webstack.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn check_accepts_the_repo_topology() {
    let (code, out) = run(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("webstack.toml: ok"), "{out}");
}

#[test]
fn check_names_file_line_and_field_of_each_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology_copy(dir.path(), |t| {
        t.replace("address = \"127.0.2.2\"", "address = \"127.0.2.1\"").replace("db = 3306", "db = 8080")
    });
    let (code, out) = run(&["check", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let dup_line = text.lines().position(|l| l.contains("name = \"server-02\"")).unwrap() + 2;
    assert!(
        out.contains(&format!(
            "{}:{dup_line}: hosts[3].address: 127.0.2.1 is also the address of `server-01`",
            path.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:{}: ports.db: port 8080 is also ports.http", path.display(), line_of("db = 8080"))),
        "{out}"
    );
}

#[test]
fn a_component_config_error_exits_2_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.0.0.1:8080\"\n[[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\n[pools.web]\nbalance = \"static-rr\"\n[[pools.web.servers]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let (code, out) = run(&["proxy", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{}:10: pools.web.balance: unknown balance `static-rr`", path.display())), "{out}");

    let (code, out) = run(&["app", "--config", "/nonexistent/app.toml"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("/nonexistent/app.toml: cannot read config file"), "{out}");
}

#[test]
fn stack_commands_without_a_stack_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let (code, out) = run(&["status", "--state-dir", state]);
    assert_ne!(code, 0);
    assert!(out.contains("run `webstack up` first"), "{out}");
    let (code, out) = run(&["kill", "server-02/web", "--state-dir", state]);
    assert_ne!(code, 0);
    assert!(out.contains("is the stack up"), "{out}");
}

#[test]
fn up_refuses_addresses_already_in_use() {
    // Something else holds server-01's web address of this range.
    let _squatter = std::net::TcpListener::bind("127.205.2.1:8080").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run(&[
        "up",
        "-d",
        "--profile",
        "single",
        "--subnet",
        "127.205.0.0/16",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("127.205.2.1:8080 (server-01/web)") && out.contains("--subnet"), "{out}");
}

#[test]
fn sighup_reloads_the_proxy_config_in_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("a/x.txt"), "from a").unwrap();
    std::fs::write(dir.path().join("b/x.txt"), "from b").unwrap();
    let config =
        |routes: &str| format!("name = \"web\"\n[[listeners]]\nname = \"site\"\nbind = \"127.206.0.1:8080\"\n{routes}");
    let route = |prefix: &str, dir_name: &str| {
        format!(
            "[[listeners.routes]]\nprefix = \"{prefix}\"\nstatic_root = \"{}\"\n",
            dir.path().join(dir_name).display()
        )
    };
    let path = dir.path().join("web.toml");
    std::fs::write(&path, config(&route("/a/", "a"))).unwrap();
    let child = std::process::Command::new(webstack_bin())
        .args(["proxy", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = support::Stop(child);
    let site: std::net::SocketAddr = "127.206.0.1:8080".parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while support::get(site, "/a/x.txt").is_err() {
        assert!(std::time::Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(support::get(site, "/b/x.txt").unwrap().status, 404);

    std::fs::write(&path, config(&(route("/a/", "a") + &route("/b/", "b")))).unwrap();
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let b = support::get(site, "/b/x.txt").unwrap();
        if b.status == 200 {
            assert_eq!(b.body, "from b");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SIGTERM stops it cleanly.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "SIGTERM did not stop the proxy");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.0.try_wait().unwrap().unwrap().success());
}
