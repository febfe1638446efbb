//! What Skiff needs from a Kubernetes pod: the traffic-redirection rules
//! its init container installs (`iptables.rs`).

pub mod iptables;
