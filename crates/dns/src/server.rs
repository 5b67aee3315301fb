//! Serving the zone over UDP and TCP, and checking record addresses.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::config::DnsConfig;
use crate::zone::Zone;

/// The classic UDP payload limit without EDNS.
const UDP_LIMIT: usize = 512;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Up/down of each checked address; unchecked addresses count as up.
type Health = Arc<Mutex<HashMap<Ipv4Addr, bool>>>;

pub async fn run(config: DnsConfig, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let zone = Arc::new(Zone::new(&config).map_err(std::io::Error::other)?);
    let udp = UdpSocket::bind(config.listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {} (UDP): {e}", config.listen)))?;
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {} (TCP): {e}", config.listen)))?;
    let health: Health = Arc::new(Mutex::new(HashMap::new()));
    let checks = tokio::spawn(check_addresses(config.clone(), health.clone()));
    let udp_task = tokio::spawn(serve_udp(udp, zone.clone(), health.clone()));
    let tcp_task = tokio::spawn(serve_tcp(tcp, zone, health));
    tracing::info!(listen = %config.listen, zone = config.zone, "authoritative DNS is serving");
    shutdown.await;
    for t in [checks, udp_task, tcp_task] {
        t.abort();
    }
    Ok(())
}

fn is_up(health: &Health) -> impl Fn(Ipv4Addr) -> bool + '_ {
    move |ip| health.lock().map(|h| h.get(&ip).copied().unwrap_or(true)).unwrap_or(true)
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>, health: Health) {
    let mut buf = [0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        if let Some(mut answer) = zone.answer_bytes(&buf[..n], is_up(&health)) {
            if answer.len() > UDP_LIMIT {
                // Too big for UDP: the question alone with TC set tells the resolver to ask over TCP.
                let Some(truncated) = truncated(&answer) else { continue };
                answer = truncated;
            }
            let _ = socket.send_to(&answer, from).await;
        }
    }
}

/// `answer` cut down to its header and question, with the TC bit: a well-formed message
/// whose counts match what it holds (a bare header would still count the records cut off).
fn truncated(answer: &[u8]) -> Option<Vec<u8>> {
    let mut message = hickory_proto::op::Message::from_vec(answer).ok()?;
    message.answers.clear();
    message.authorities.clear();
    message.additionals.clear();
    message.metadata.truncation = true;
    message.to_vec().ok()
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>, health: Health) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (zone, health) = (zone.clone(), health.clone());
        tokio::spawn(async move {
            // Each message is preceded by its length (RFC 1035 §4.2.2); several may follow.
            loop {
                let mut len = [0u8; 2];
                let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let mut request = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut request).await.is_err() {
                    return;
                }
                let Some(answer) = zone.answer_bytes(&request, is_up(&health)) else { return };
                let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&answer);
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Every second, each address of a record with a check: up while its port accepts.
async fn check_addresses(config: DnsConfig, health: Health) {
    let targets: Vec<SocketAddr> = config
        .records
        .iter()
        .filter_map(|r| r.check_port.map(|p| r.addresses.iter().map(move |a| SocketAddr::new((*a).into(), p))))
        .flatten()
        .collect();
    if targets.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        for target in &targets {
            let up = matches!(
                tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(target)).await,
                Ok(Ok(_))
            );
            let ip = match target.ip() {
                std::net::IpAddr::V4(v4) => v4,
                std::net::IpAddr::V6(_) => continue,
            };
            let changed = health.lock().map(|mut h| h.insert(ip, up) != Some(up)).unwrap_or(false);
            if changed {
                tracing::warn!(address = %ip, up, "record address health changed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::str::FromStr;

    #[test]
    fn a_truncated_answer_keeps_its_question_and_counts_only_what_it_holds() {
        let name = Name::from_str("many.foobar.com.").unwrap();
        let mut full = Message::response(77, OpCode::Query);
        full.add_query(Query::query(name.clone(), RecordType::A));
        full.add_answers(
            (1..=40).map(|i| Record::from_rdata(name.clone(), 30, RData::A(A(Ipv4Addr::new(127, 0, 8, i))))),
        );
        let bytes = full.to_vec().unwrap();
        assert!(bytes.len() > UDP_LIMIT);
        let cut = Message::from_vec(&truncated(&bytes).unwrap()).expect("well-formed");
        assert!(cut.metadata.truncation);
        assert_eq!(cut.metadata.id, 77);
        assert_eq!(cut.queries.len(), 1);
        assert!(cut.answers.is_empty());
    }
}
