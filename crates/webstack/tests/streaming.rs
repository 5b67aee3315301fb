//! Bodies stream through the proxy both ways: a 1 GiB download and a 1 GiB upload pass
//! through `webstack proxy` while its memory stays small.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use support::Stop;

const GIB: u64 = 1 << 30;

/// Answers `GET /big` with 1 GiB of zeros, and `POST /upload` with the byte count it read.
fn upstream(listener: TcpListener) {
    for stream in listener.incoming().take(2) {
        let Ok(stream) = stream else { return };
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0u64;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&line);
        }
        let mut stream = reader.get_ref().try_clone().unwrap();
        if head.starts_with("GET /big") {
            stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n").as_bytes()).unwrap();
            let chunk = vec![0u8; 256 * 1024];
            let mut sent = 0;
            while sent < GIB {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
                sent += chunk.len() as u64;
            }
        } else {
            let mut got = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            while got < length {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            let body = got.to_string();
            let _ =
                stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        }
    }
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 =
        status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

#[test]
fn a_gibibyte_streams_down_and_up_without_sitting_in_memory() {
    let listener = TcpListener::bind("127.207.0.11:9000").unwrap();
    let origin = std::thread::spawn(move || upstream(listener));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lb.toml");
    std::fs::write(
        &config,
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.207.0.1:8080\"\n[[listeners.routes]]\nprefix = \"/\"\npool = \"o\"\n\
         [pools.o]\n[[pools.o.servers]]\nname = \"origin\"\naddress = \"127.207.0.11:9000\"\n",
    )
    .unwrap();
    let proxy = Stop(
        Command::new(env!("CARGO_BIN_EXE_webstack"))
            .args(["proxy", "--config", config.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let connect = || loop {
        match TcpStream::connect("127.207.0.1:8080") {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("proxy did not start: {e}"),
        }
    };

    let mut down = connect();
    down.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    down.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match down.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => panic!("download broke after {total} bytes: {e}"),
        }
    }
    assert!(total > GIB && total < GIB + 1024, "read {total} bytes");

    let mut up = connect();
    up.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    up.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let mut sent = 0;
    while sent < GIB {
        up.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    let mut answer = String::new();
    up.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with(&GIB.to_string()), "{answer}");

    let rss = peak_rss_mib(proxy.0.id());
    assert!(rss < 64, "the proxy's peak RSS was {rss} MiB for 1 GiB each way");
    drop(proxy);
    origin.join().unwrap();
}
