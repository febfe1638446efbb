//! Steady traffic through a proxy while its config changes: the zero-loss
//! tests of live reconfiguration and of the control feed.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Request;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::body::empty;
use crate::client::{greeter_client, hello};
use crate::{Client, guard};

/// Three clients in loops through one listener: HTTP/1.1 and h2c `GET /`
/// (which must answer 200) and gRPC `SayHello`, each counting what it did
/// and reporting every failure.
pub struct Steady {
    stop: watch::Sender<bool>,
    failures: mpsc::UnboundedReceiver<String>,
    done: Arc<[AtomicUsize; 3]>,
    /// Woken after every request, for [`Steady::progress`].
    moved: Arc<Notify>,
    clients: Vec<JoinHandle<()>>,
}

impl Steady {
    pub async fn start(addr: SocketAddr) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (fail_tx, failures) = mpsc::unbounded_channel::<String>();
        let done = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        let moved = Arc::new(Notify::new());
        let mut clients = Vec::new();
        for (k, protocol) in ["http1", "h2c", "grpc"].into_iter().enumerate() {
            let (stopped, fail, done) = (stopped.clone(), fail_tx.clone(), done.clone());
            let moved = moved.clone();
            clients.push(tokio::spawn(async move {
                let mut http = match protocol {
                    "http1" => Some(Client::http1(addr).await),
                    "h2c" => Some(Client::h2c(addr).await),
                    _ => None,
                };
                let mut grpc = greeter_client(addr).await;
                while !*stopped.borrow() {
                    let result = match &mut http {
                        Some(c) => {
                            let rsp = c.request(Request::get("/").body(empty()).unwrap()).await;
                            match rsp.status.as_u16() {
                                200 => Ok(()),
                                s => {
                                    Err(format!("{protocol}: {s} {:?}", rsp.header("skiff-error")))
                                }
                            }
                        }
                        None => grpc
                            .say_hello(hello("zero", 0))
                            .await
                            .map(drop)
                            .map_err(|s| format!("grpc: {s}")),
                    };
                    if let Err(why) = result {
                        let _ = fail.send(why);
                    }
                    done[k].fetch_add(1, Ordering::Relaxed);
                    moved.notify_waiters();
                }
            }));
        }
        Self {
            stop,
            failures,
            done,
            moved,
            clients,
        }
    }

    /// Resolves once every client has completed three more requests.
    pub async fn progress(&self) {
        let before: Vec<usize> = self
            .done
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect();
        guard("each client to make progress", async {
            loop {
                // Registered before the check, so a request finishing in
                // between still wakes us.
                let woken = self.moved.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let behind = self
                    .done
                    .iter()
                    .zip(&before)
                    .any(|(d, b)| d.load(Ordering::Relaxed) < b + 3);
                if !behind {
                    return;
                }
                woken.await;
            }
        })
        .await;
    }

    /// Stops the clients: how many requests they made, and every failure.
    pub async fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.send_replace(true);
        for c in self.clients.drain(..) {
            c.await.unwrap();
        }
        let mut all = Vec::new();
        while let Ok(f) = self.failures.try_recv() {
            all.push(f);
        }
        let total = self.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        (total, all)
    }
}
