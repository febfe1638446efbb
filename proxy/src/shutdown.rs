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
    /// The part of the process this task belongs to (a listener), which
    /// may drain on its own: its draining and terminated flags.
    scope: Option<(watch::Receiver<bool>, watch::Receiver<bool>)>,
    _alive: Option<mpsc::Sender<()>>,
}

/// A part of the process that drains on its own: a listener a new config
/// removed or moved, while the rest keeps serving. Its watches see its
/// drain and the process's; the process's drain still waits for them.
#[derive(Debug)]
pub struct Scope {
    draining: watch::Sender<bool>,
    terminated: watch::Sender<bool>,
}

impl Scope {
    pub fn new() -> Self {
        Self {
            draining: watch::channel(false).0,
            terminated: watch::channel(false).0,
        }
    }

    /// A watch on this scope and on the whole process (`base` is a watch
    /// on the process's drain).
    pub fn watch(&self, base: &Watch) -> Watch {
        Watch {
            scope: Some((self.draining.subscribe(), self.terminated.subscribe())),
            ..base.clone()
        }
    }

    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Cuts what is still open in this scope (its drain timeout passed).
    pub fn terminate(&self) {
        self.terminated.send_replace(true);
    }
}

impl Default for Scope {
    fn default() -> Self {
        Self::new()
    }
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
            scope: None,
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
    /// Whether the drain has started, the process's or the scope's.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow() || self.scope.as_ref().is_some_and(|(s, _)| *s.borrow())
    }

    /// Resolves once the drain has started, the process's or the scope's.
    pub async fn draining(&mut self) {
        match &mut self.scope {
            None => {
                let _ = self.draining.wait_for(|d| *d).await;
            }
            Some((scope, _)) => tokio::select! {
                _ = self.draining.wait_for(|d| *d) => {}
                _ = scope.wait_for(|d| *d) => {}
            },
        }
    }

    /// Resolves once the drain timeout has passed, the process's or the scope's.
    pub async fn terminated(&mut self) {
        match &mut self.scope {
            None => {
                let _ = self.terminated.wait_for(|t| *t).await;
            }
            Some((_, scope)) => tokio::select! {
                _ = self.terminated.wait_for(|t| *t) => {}
                _ = scope.wait_for(|t| *t) => {}
            },
        }
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
