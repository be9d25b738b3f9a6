//! Prometheus metrics (`GET /metrics`, default `127.0.0.1:15020`) and
//! readiness (`GET /healthz/ready`, default `127.0.0.1:15021`), on Istio's
//! ports. Counters come from the kernel's per-CPU maps, summed here — never
//! counted a second time in userspace. The servers start only once the
//! programs are attached and the first config is applied, so "listening"
//! means "ready".

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{Command, Error};

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A Prometheus histogram of durations.
#[derive(Debug, Default, Clone)]
pub(super) struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, n) in BUCKETS.iter().zip(&mut self.counts) {
            if secs <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, n) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// One metric family being written.
pub(super) struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    pub fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Self { out, name }
    }

    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{} {value}", self.name);
        } else {
            let _ = writeln!(self.out, "{}{{{}}} {value}", self.name, labels.join(","));
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Aborts the servers when dropped.
pub(super) struct Servers(Vec<JoinHandle<()>>);

impl Drop for Servers {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

pub(super) async fn serve(
    metrics: SocketAddr,
    readiness: SocketAddr,
    tx: mpsc::Sender<Command>,
) -> Result<Servers, Error> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| Error::Io {
            op: "listening on",
            path: addr.to_string().into(),
            source,
        })
    };
    let metrics = bind(metrics).await?;
    let readiness = bind(readiness).await?;
    let m = tokio::spawn(accept(metrics, Some(tx)));
    let r = tokio::spawn(accept(readiness, None));
    Ok(Servers(vec![m, r]))
}

async fn accept(listener: TcpListener, tx: Option<mpsc::Sender<Command>>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(respond(stream, tx.clone()));
        }
    }
}

/// A minimal HTTP/1.1 exchange: one request, one response, close.
async fn respond(mut stream: TcpStream, tx: Option<mpsc::Sender<Command>>) {
    // Read the request head (up to 4 KiB, 5 s); the body, if any, is ignored.
    let mut buf = Vec::with_capacity(1024);
    let head = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 4096 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), head)
        .await
        .is_err()
    {
        return;
    }
    let request = String::from_utf8_lossy(&buf);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match (path, tx) {
        ("/metrics", Some(tx)) => {
            let (reply, rx) = oneshot::channel();
            match (tx.send(Command::Metrics(reply)).await, rx.await) {
                (Ok(()), Ok(text)) => ("200 OK", text),
                _ => ("503 Service Unavailable", "agent stopping\n".to_owned()),
            }
        }
        ("/healthz/ready", None) => ("200 OK", "ready\n".to_owned()),
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}
