//! An open-loop load generator over a pool of keep-alive HTTP/1.1 connections.
//!
//! Open loop: request *i* is due at `start + i / rate` whatever happened to
//! the requests before it, and its latency is measured from that due time.
//! A closed-loop client (send, wait, send) slows down exactly when the proxy
//! stalls, so the stall hides in fewer samples (coordinated omission); here a
//! stall shows up in every request that was due during it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A 2xx response, body read to the end.
    Ok,
    /// Any other status, with Skiff's `skiff-error` reason when it gave one.
    Status(u16, Option<String>),
    /// The client could not get an answer: `connect`, `send`, `body`, `timeout`.
    Client(&'static str),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// A short label for failure tables, e.g. `503 connect-failed`.
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Status(code, Some(reason)) => format!("{code} {reason}"),
            Outcome::Status(code, None) => code.to_string(),
            Outcome::Client(what) => format!("client {what}"),
        }
    }
}

/// One request: when it was due (from the run's start), how long it took
/// from then until its response body ended (or it failed), and its outcome.
#[derive(Debug, Clone)]
pub struct Record {
    pub due: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// Keep-alive connections to the proxy, reused LIFO (the most recently used
/// connection is the warmest) and opened on demand when none is idle, so a
/// slow request never delays the ones due after it. `limit` bounds how many
/// requests are in flight at once (and so the connections), only so a stuck
/// proxy cannot exhaust file descriptors; a request waiting for a permit is
/// late, and its latency says so.
pub struct Pool {
    target: SocketAddr,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    limit: Semaphore,
    timeout: Duration,
}

impl Pool {
    pub fn new(target: SocketAddr, max_in_flight: usize, timeout: Duration) -> Self {
        Self {
            target,
            idle: Mutex::new(Vec::new()),
            limit: Semaphore::new(max_in_flight),
            timeout,
        }
    }

    /// Sends one `GET /` and reads the whole response, bounded by the
    /// client timeout.
    async fn request(&self) -> Outcome {
        let Ok(_permit) = self.limit.acquire().await else {
            return Outcome::Client("closed");
        };
        tokio::time::timeout(self.timeout, self.exchange())
            .await
            .unwrap_or(Outcome::Client("timeout"))
    }

    async fn exchange(&self) -> Outcome {
        let mut sender = match self.checkout().await {
            Ok(sender) => sender,
            Err(_) => return Outcome::Client("connect"),
        };
        let request = match Request::get("/")
            .header(header::HOST, "chaos.local")
            .body(Empty::new())
        {
            Ok(request) => request,
            Err(_) => return Outcome::Client("request"),
        };
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => return Outcome::Client("send"),
        };
        let status = response.status();
        let reason = response
            .headers()
            .get("skiff-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response.into_body().collect().await.is_err() {
            return Outcome::Client("body");
        }
        self.checkin(sender);
        if status.is_success() {
            Outcome::Ok
        } else {
            Outcome::Status(status.as_u16(), reason)
        }
    }

    /// An idle connection that is still open, or a new one.
    async fn checkout(&self) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match idle {
                Some(mut sender) => {
                    if !sender.is_closed() && sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => return self.connect().await,
            }
        }
    }

    fn checkin(&self, sender: SendRequest<Empty<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        let stream = TcpStream::connect(self.target)
            .await
            .with_context(|| format!("connecting to {}", self.target))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends when the proxy closes it or the sender
        // is dropped; its error, if any, surfaces on the request in flight.
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Closes every idle connection (dropping a sender ends its connection).
    pub fn close_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Sends `rate` requests per second from `start` for `duration`, each due at
/// its slot on the timetable, and returns every request's record once the
/// last one has finished.
pub async fn run(pool: Arc<Pool>, rate: f64, start: Instant, duration: Duration) -> Vec<Record> {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let generator = async move {
        for i in 0..total {
            let due_in = Duration::from_secs_f64(i as f64 / rate);
            let due = start + due_in;
            // Past due (the generator fell behind): send at once, and the
            // latency, measured from `due`, includes the delay.
            tokio::time::sleep_until(due).await;
            let pool = pool.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = pool.request().await;
                let record = Record {
                    due: due_in,
                    latency: due.elapsed(),
                    outcome,
                };
                // The receiver lives until every sender is gone.
                let _ = tx.send(record);
            });
        }
    };
    // Records arrive while the generator runs; the channel closes when the
    // generator and the last request task have dropped their senders.
    let collector = async {
        let mut records = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        while let Some(record) = rx.recv().await {
            records.push(record);
        }
        records
    };
    let ((), records) = tokio::join!(generator, collector);
    records
}
