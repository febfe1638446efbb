//! The nat rules that send a pod's TCP through its sidecar: inbound to the
//! inbound capture listener (15006), outbound to the outbound one (15001),
//! except the proxy's own traffic (by UID), loopback, and what is excluded
//! by port or CIDR. Kept in Skiff's own chains, so installing twice changes
//! nothing and `--clean` removes exactly what was added:
//!
//! ```text
//! PREROUTING -p tcp -j SKIFF_INBOUND     SKIFF_INBOUND: excluded ports RETURN,
//!                                          captured ports (or all) -j SKIFF_IN_REDIRECT
//! OUTPUT -p tcp -j SKIFF_OUTPUT          SKIFF_OUTPUT: proxy UID/GID RETURN, loopback
//!                                          RETURN, excluded ports and CIDRs RETURN,
//!                                          -j SKIFF_REDIRECT
//! SKIFF_IN_REDIRECT: REDIRECT --to-ports 15006    SKIFF_REDIRECT: REDIRECT --to-ports 15001
//! ```
//!
//! The chains are written with `iptables-restore --noflush` (atomic, and a
//! chain named in the input is flushed first, so its rules are exactly
//! these); the two jumps are added only when `-C` does not find them.

use std::net::IpAddr;

/// The chains Skiff owns in the nat table.
pub const CHAINS: [&str; 4] = [
    "SKIFF_INBOUND",
    "SKIFF_IN_REDIRECT",
    "SKIFF_OUTPUT",
    "SKIFF_REDIRECT",
];

/// The jumps from the built-in chains into Skiff's: (chain, rule).
pub const JUMPS: [(&str, &str); 2] = [
    ("PREROUTING", "-p tcp -j SKIFF_INBOUND"),
    ("OUTPUT", "-p tcp -j SKIFF_OUTPUT"),
];

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    /// Where inbound connections are redirected (the inbound capture listener).
    pub inbound_to: u16,
    /// Where outbound connections are redirected (the outbound capture listener).
    pub outbound_to: u16,
    /// Inbound ports captured; empty: every port not excluded.
    pub inbound_ports: Vec<u16>,
    /// Inbound ports never captured (the proxy's own, ssh).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks never captured (`10.0.0.0/8`, `fd00::/8`).
    pub exclude_outbound_cidrs: Vec<(IpAddr, u8)>,
}

/// Which table family the rules are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Rules {
    /// The `iptables-restore --noflush` input for `family`.
    pub fn restore(&self, family: Family) -> String {
        let mut out = String::from("*nat\n");
        for chain in CHAINS {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        let mut add = |chain: &str, rule: String| out.push_str(&format!("-A {chain} {rule}\n"));
        // Inbound.
        for port in &self.exclude_inbound_ports {
            add("SKIFF_INBOUND", format!("-p tcp --dport {port} -j RETURN"));
        }
        if self.inbound_ports.is_empty() {
            add("SKIFF_INBOUND", "-p tcp -j SKIFF_IN_REDIRECT".to_owned());
        } else {
            for port in &self.inbound_ports {
                add(
                    "SKIFF_INBOUND",
                    format!("-p tcp --dport {port} -j SKIFF_IN_REDIRECT"),
                );
            }
        }
        add(
            "SKIFF_IN_REDIRECT",
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_to),
        );
        // Outbound: the proxy's own connections, loopback, exclusions.
        add(
            "SKIFF_OUTPUT",
            format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid),
        );
        if let Some(gid) = self.proxy_gid {
            add(
                "SKIFF_OUTPUT",
                format!("-m owner --gid-owner {gid} -j RETURN"),
            );
        }
        let loopback = match family {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        };
        add("SKIFF_OUTPUT", format!("-d {loopback} -j RETURN"));
        for port in &self.exclude_outbound_ports {
            add("SKIFF_OUTPUT", format!("-p tcp --dport {port} -j RETURN"));
        }
        for (ip, len) in &self.exclude_outbound_cidrs {
            if matches!(
                (family, ip),
                (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
            ) {
                add("SKIFF_OUTPUT", format!("-d {ip}/{len} -j RETURN"));
            }
        }
        add("SKIFF_OUTPUT", "-j SKIFF_REDIRECT".to_owned());
        add(
            "SKIFF_REDIRECT",
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_to),
        );
        out.push_str("COMMIT\n");
        out
    }
}

/// `10.0.0.0/8` or an address alone (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8, fd00::/8) or an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length is 0 to {max}"))?,
        None => max,
    };
    Ok((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            proxy_uid: 1337,
            proxy_gid: None,
            inbound_to: 15006,
            outbound_to: 15001,
            inbound_ports: Vec::new(),
            exclude_inbound_ports: vec![15000, 15006, 15001],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec![
                parse_cidr("10.96.0.10/32").unwrap_or_else(|e| panic!("{e}")),
                parse_cidr("fd00::/8").unwrap_or_else(|e| panic!("{e}")),
            ],
        }
    }

    #[test]
    fn the_rules_as_restore_input() {
        let v4 = rules().restore(Family::V4);
        assert_eq!(
            v4,
            "*nat
:SKIFF_INBOUND - [0:0]
:SKIFF_IN_REDIRECT - [0:0]
:SKIFF_OUTPUT - [0:0]
:SKIFF_REDIRECT - [0:0]
-A SKIFF_INBOUND -p tcp --dport 15000 -j RETURN
-A SKIFF_INBOUND -p tcp --dport 15006 -j RETURN
-A SKIFF_INBOUND -p tcp --dport 15001 -j RETURN
-A SKIFF_INBOUND -p tcp -j SKIFF_IN_REDIRECT
-A SKIFF_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A SKIFF_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A SKIFF_OUTPUT -d 127.0.0.0/8 -j RETURN
-A SKIFF_OUTPUT -p tcp --dport 5432 -j RETURN
-A SKIFF_OUTPUT -d 10.96.0.10/32 -j RETURN
-A SKIFF_OUTPUT -j SKIFF_REDIRECT
-A SKIFF_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"
        );
        let v6 = rules().restore(Family::V6);
        assert!(v6.contains("-A SKIFF_OUTPUT -d ::1/128 -j RETURN"));
        assert!(v6.contains("-A SKIFF_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(!v6.contains("10.96.0.10"));
    }

    #[test]
    fn only_the_ports_asked_for_are_captured() {
        let mut r = rules();
        r.inbound_ports = vec![8080, 9090];
        let text = r.restore(Family::V4);
        assert!(text.contains("-A SKIFF_INBOUND -p tcp --dport 8080 -j SKIFF_IN_REDIRECT\n"));
        assert!(text.contains("-A SKIFF_INBOUND -p tcp --dport 9090 -j SKIFF_IN_REDIRECT\n"));
        assert!(!text.contains("-A SKIFF_INBOUND -p tcp -j SKIFF_IN_REDIRECT"));
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            parse_cidr("10.1.2.3").unwrap_or_else(|e| panic!("{e}")),
            ("10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}")), 32)
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("cluster.local").is_err());
    }
}
