//! What Skiff needs from a Kubernetes pod: the traffic-redirection rules
//! its init container installs (`iptables.rs`), and the sidecar `skiff
//! inject` adds to pod templates (`inject.rs`).

pub mod inject;
pub mod iptables;
