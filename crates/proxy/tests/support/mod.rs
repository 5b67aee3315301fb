//! What the proxy's integration tests share: the proxy itself, run in-process on a thread of
//! its own and stopped (draining) when the test lets go of it.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use proxy::ProxyConfig;
use tokio::sync::oneshot;
use webstack_config::Source;

pub struct Proxy {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[allow(dead_code)]
impl Proxy {
    /// A proxy from config text (not reloadable: there is no file).
    pub fn start(config_text: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        Self::start_with(ProxyConfig::from_source(&Source::from_text(&path, config_text)).expect("valid config"))
    }

    /// A proxy whose config lives in `path`, so that it can be reloaded.
    pub fn start_file(path: &std::path::Path) -> Proxy {
        Self::start_with(ProxyConfig::load(path).expect("valid config"))
    }

    /// Starts the proxy and waits until its first listener accepts.
    pub fn start_with(config: ProxyConfig) -> Proxy {
        let listen = config.listeners[0].bind;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = proxy::runtime(&config).unwrap();
            rt.block_on(proxy::run(config, async {
                let _ = stop_rx.await;
            }))
            .unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(listen).is_err() {
            assert!(Instant::now() < deadline, "proxy did not listen on {listen}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Proxy { stop: Some(stop_tx), thread: Some(thread) }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
