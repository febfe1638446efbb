//! The drain signal and the count of work that must finish before exit.
//!
//! `Signal::drain` flips a watch that every accept loop and connection task
//! holds a `Watch` on. Each `Watch` also keeps an mpsc sender alive, so when
//! the last one is dropped the receiver wakes: that is "everything drained",
//! without counting by hand.

use tokio::sync::{mpsc, watch};

/// Owned by the app: starts the drain and waits for it.
#[derive(Debug)]
pub struct Signal {
    draining: watch::Sender<bool>,
    /// Set when the drain timeout passed: whatever is still open is cut.
    terminated: watch::Sender<bool>,
    alive_tx: Option<mpsc::Sender<()>>,
    alive_rx: mpsc::Receiver<()>,
}

/// Held by every task that must finish before the process exits.
#[derive(Debug, Clone)]
pub struct Watch {
    draining: watch::Receiver<bool>,
    terminated: watch::Receiver<bool>,
    _alive: Option<mpsc::Sender<()>>,
}

impl Signal {
    pub fn new() -> Self {
        let (draining, _) = watch::channel(false);
        let (terminated, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        Self {
            draining,
            terminated,
            alive_tx: Some(alive_tx),
            alive_rx,
        }
    }

    pub fn watch(&self) -> Watch {
        Watch {
            draining: self.draining.subscribe(),
            terminated: self.terminated.subscribe(),
            _alive: self.alive_tx.clone(),
        }
    }

    /// Cuts every connection still open (the drain timeout passed).
    pub fn terminate(&self) {
        self.terminated.send_replace(true);
    }

    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// A receiver that resolves when the drain starts (for the admin's `/ready`).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Waits for the drain to start, then for every `Watch` to be dropped.
    pub async fn drained(&mut self) {
        let mut started = self.draining.subscribe();
        let _ = started.wait_for(|d| *d).await;
        self.alive_tx = None;
        // Nothing is ever sent: recv returns None once all senders are gone.
        let _ = self.alive_rx.recv().await;
    }
}

impl Default for Signal {
    fn default() -> Self {
        Self::new()
    }
}

impl Watch {
    /// Resolves once the drain has started.
    pub async fn draining(&mut self) {
        let _ = self.draining.wait_for(|d| *d).await;
    }

    /// Resolves once the drain timeout has passed.
    pub async fn terminated(&mut self) {
        let _ = self.terminated.wait_for(|t| *t).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_every_watch() {
        let mut signal = Signal::new();
        let mut w = signal.watch();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            w.draining().await;
            rx.await.ok();
            drop(w);
        });
        signal.drain();
        let drained = tokio::spawn(async move { signal.drained().await });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        tx.send(()).unwrap();
        drained.await.unwrap();
        task.await.unwrap();
    }
}
