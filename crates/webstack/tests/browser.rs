//! The shop in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup --test`) signs up, puts a product in the cart, orders it and finds the order
//! in the history, through the pages and their forms as a person would. Screenshots of each
//! step land in `target/screenshots/` for a human to look at.
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ended by NUL on file descriptors 3 and 4), so no WebSocket client is needed.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Stack, Stop};

const SITE: &str = "http://127.227.2.1:8080";

/// One Chromium, and the page it drives.
struct Browser {
    _process: Stop,
    commands: std::fs::File,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    log: std::path::PathBuf,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    let done = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(done, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn start(profile_dir: &std::path::Path) -> Browser {
        use std::os::fd::AsRawFd;
        let (their_in, our_out) = pipe();
        let (our_in, their_out) = pipe();
        let (child_in, child_out) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                // Containers often have a small /dev/shm; Chromium then crashes on larger pages.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--window-size=1100,900",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile_dir.with_extension("log")).map(Stdio::from).unwrap_or(Stdio::null()));
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Moved above 4 first: a pipe may itself be 3 or 4, and dup2 onto the same
                // number would keep its close-on-exec flag.
                let (from_in, from_out) =
                    (libc::fcntl(child_in, libc::F_DUPFD, 10), libc::fcntl(child_out, libc::F_DUPFD, 10));
                if from_in < 0 || from_out < 0 || libc::dup2(from_in, 3) < 0 || libc::dup2(from_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command.spawn().expect("chromium (scripts/setup --test installs it)");
        drop((their_in, their_out));
        let (tx, answers) = mpsc::channel();
        let reader = std::fs::File::from(our_in);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            _process: Stop(process),
            commands: std::fs::File::from(our_out),
            answers,
            next_id: 0,
            session: String::new(),
            log: profile_dir.with_extension("log"),
        };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("a page").to_string();
        let attached = browser.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }));
        browser.session = attached["sessionId"].as_str().expect("a session").to_string();
        browser.call("Page.enable", json!({}));
        browser
    }

    /// Sends a command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).expect("chromium takes commands");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(answer) = self.answers.recv_timeout(left) else {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).rev().take(15).collect();
                panic!("no answer to {method}; chromium said: {tail:#?}");
            };
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        result["result"]["value"].clone()
    }

    fn open(&mut self, path: &str) {
        self.call("Page.navigate", json!({ "url": format!("{SITE}{path}") }));
        self.wait_for(&format!("location.pathname === '{}' && document.readyState === 'complete'", path));
    }

    /// Waits until `condition` (JavaScript) holds in the page, as after a form's navigation.
    fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.eval(&format!("!!({condition})")) != json!(true) {
            assert!(Instant::now() < deadline, "never true: {condition}; page: {}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''").as_str().unwrap_or("").to_string()
    }

    fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(shot["data"].as_str().unwrap_or(""));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let dir = support::repo_root().join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    digits
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

#[test]
fn a_shopper_signs_up_orders_and_finds_the_order_in_the_history() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "single", "--subnet", "127.227.0.0/16", "--timeout", "120"]);
    let mut browser = Browser::start(&stack.state_dir().join("chromium"));

    browser.open("/");
    assert!(browser.text().contains("products"), "{}", browser.text());
    browser.screenshot("1-home");

    browser.open("/signup");
    browser.eval(
        "document.querySelector('input[name=email]').value = 'shopper@example.com';
         document.querySelector('input[name=password]').value = 'a long password';
         document.querySelector('main form').submit();",
    );
    browser
        .wait_for("location.pathname === '/' && document.body.innerText.includes('Signed in as shopper@example.com')");
    browser.screenshot("2-signed-in");

    browser.open("/products/4");
    assert!(browser.text().contains("in stock"), "{}", browser.text());
    browser.eval("document.querySelector('input[name=quantity]').value = '2'; document.querySelector('form.inline-buy').submit();");
    browser.wait_for("location.pathname === '/cart' && document.readyState === 'complete'");
    let cart = browser.text();
    assert!(cart.contains("Coffee beans, Ethiopia") && cart.contains("Total $28.00"), "{cart}");
    browser.screenshot("3-cart");

    browser.eval("document.querySelector('form[action=\"/orders\"]').submit();");
    browser.wait_for("location.pathname === '/orders' && document.readyState === 'complete'");
    let history = browser.text();
    assert!(history.contains("Your orders") && history.contains("2 × Coffee beans, Ethiopia"), "{history}");
    assert!(history.contains("total $28.00"), "{history}");
    browser.screenshot("4-orders");

    // The cookies the browser holds for the session are out of reach of the page's scripts.
    assert_eq!(browser.eval("document.cookie"), json!(""), "session and CSRF cookies are HttpOnly");
}
