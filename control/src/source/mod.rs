//! Where configs come from after the first one, and how each hears back.
//!
//! A source publishes every new version as a [`Delivery`]: the update, and
//! a [`Reply`] the proxy answers once it has applied or rejected it. The
//! file source logs the answer and keeps its baseline at the last applied
//! config; the control feed turns the same answer into ACK or NACK.

pub mod file;
pub mod xds;

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::{ConfigErrors, Snapshot};

/// A new version from a source: a validated snapshot to apply, or why the
/// source's new content was refused (the last good config stays).
#[derive(Debug)]
pub enum Update {
    /// Shared: the proxy serves it and the source keeps it, to make the
    /// next one from.
    Valid(Arc<Snapshot>),
    /// `snapshot` is `over` with `clusters` changed (their endpoints, and
    /// maybe their settings) and nothing else: no cluster added or
    /// removed, no listener or route changed. While `over` is what runs,
    /// the proxy does work for those clusters alone: it swaps the endpoint
    /// sets of clusters whose settings are unchanged, and re-plans the
    /// others, recompiling only the routes that use them (a control feed's
    /// one-cluster delta at 10,000 clusters). Otherwise it applies
    /// `snapshot` as it would `Valid`.
    Clusters {
        over: Arc<Snapshot>,
        snapshot: Arc<Snapshot>,
        clusters: Vec<String>,
    },
    Invalid(ConfigErrors),
}

/// What became of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Now serving.
    Applied,
    /// Not applied, for these reasons (one per line, each naming what it is
    /// about); the running config stays.
    Rejected(Vec<String>),
}

/// An update on its way to the proxy, with the way back to its source.
#[derive(Debug)]
pub struct Delivery {
    pub update: Update,
    pub reply: Reply,
}

impl Delivery {
    /// A delivery of `update`, and where its outcome arrives.
    pub fn new(update: Update) -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                update,
                reply: Reply(tx),
            },
            rx,
        )
    }
}

/// Tells a source what became of its update. Dropping it unanswered tells
/// the source the proxy has stopped.
#[derive(Debug)]
pub struct Reply(oneshot::Sender<Outcome>);

impl Reply {
    pub fn send(self, outcome: Outcome) {
        // The source may have stopped listening; nothing to do then.
        let _ = self.0.send(outcome);
    }
}
