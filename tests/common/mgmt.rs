//! Helpers for the management API tests: a `rabbitmq_http_client` client
//! for a broker, and raw HTTP/1.1 requests for exact status codes.

use rabbitmq_http_client::blocking_api::Client;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Broker;

pub type Api = Client<String, &'static str, &'static str>;

pub fn client(b: &mut Broker) -> Api {
    Client::new(format!("{}/api", b.mgmt_url()), "guest", "guest")
}

/// A unique name per test run (the external broker keeps state between runs).
pub fn name(base: &str) -> String {
    format!("mgmt-{base}-{}", std::process::id())
}

pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One raw HTTP/1.1 request (Connection: close), for exact status codes.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> Answer {
    use base64::Engine;
    let mut s = TcpStream::connect(addr).expect("connect to the management API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    Answer {
        status,
        headers: head.to_lowercase(),
        body: rest.to_string(),
    }
}

pub const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// Wait until the API reports `n` messages in `q`: RabbitMQ's counts lag by
/// its stats interval (5 s); Hopper's are current at once.
pub fn wait_count(c: &Api, q: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = c.get_queue_info("/", q).expect("queue info").message_count;
        if got == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{q}: {got} messages, not {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `path` as guest until `done` holds, bounded (RabbitMQ's counts lag by
/// its stats interval; Hopper's by its sample interval).
pub fn wait_json(addr: SocketAddr, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http(addr, "GET", path, GUEST, None);
        if r.status == 200 {
            let j = r.json();
            if done(&j) {
                return j;
            }
        }
        assert!(Instant::now() < deadline, "{path}: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}
