//! The control socket (`supervisor.sock` in the state dir): one JSON request per connection,
//! one JSON answer.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Kill { target: String },
    Start { target: String },
    Restart { target: String },
    Down,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::StackStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Answer {
    pub fn ok(message: impl Into<String>) -> Answer {
        Answer { ok: true, error: None, status: None, message: Some(message.into()) }
    }

    pub fn error(e: impl Into<String>) -> Answer {
        Answer { ok: false, error: Some(e.into()), status: None, message: None }
    }
}

/// Sends one request to the supervisor listening on `socket`.
pub async fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Answer, String> {
    let exchange = async {
        let mut stream =
            UnixStream::connect(socket).await.map_err(|e| format!("no supervisor at {} ({e})", socket.display()))?;
        let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).await.map_err(|e| e.to_string())?;
        serde_json::from_str(&answer).map_err(|e| format!("bad answer from the supervisor: {e}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err("the supervisor did not answer in time".into()))
}
