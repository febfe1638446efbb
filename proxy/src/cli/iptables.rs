//! `skiff iptables`: what the `skiff-init` container runs
//! (rules in `k8s::iptables`).

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use crate::k8s::iptables::{CHAINS, Family, JUMPS, Rules, parse_cidr};

#[derive(clap::Args)]
pub(super) struct Args {
    /// Print the rules (iptables-restore input, and the jumps) instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove Skiff's chains and the jumps into them, and nothing else.
    #[arg(long)]
    clean: bool,
    /// The UID the proxy runs as: its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The GID the proxy runs as, also never redirected.
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// The inbound capture listener's port.
    #[arg(long, default_value_t = 15006)]
    inbound_capture_port: u16,
    /// The outbound capture listener's port.
    #[arg(long, default_value_t = 15001)]
    outbound_capture_port: u16,
    /// The proxy's admin port: never captured inbound (a captured admin
    /// request would reach it from loopback, where it trusts callers).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Inbound ports to capture, comma-separated; `*` for every port not excluded.
    #[arg(long, default_value = "*")]
    inbound_ports: String,
    /// Inbound ports never captured (the proxy's own ports are always excluded).
    #[arg(long, value_delimiter = ',', default_value = "22")]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations never captured: CIDRs or addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// Which iptables: `auto` (the system's `iptables`), `nft` or `legacy`.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// IPv6 rules with ip6tables too: `auto` (when the kernel has IPv6), `on`, `off`.
    #[arg(long, value_enum, default_value_t = Ipv6::Auto)]
    ipv6: Ipv6,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Ipv6 {
    Auto,
    On,
    Off,
}

/// The control feed's port, never captured inbound either.
const CONTROL_PORT: u16 = 15010;

pub(super) fn iptables(args: Args) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff iptables: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let rules = rules(args)?;
    let mut families = vec![Family::V4];
    let v6 = match args.ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto => std::path::Path::new("/proc/net/if_inet6").exists(),
    };
    if v6 {
        families.push(Family::V6);
    }
    for family in families {
        let (tool, restore) = binaries(args.backend, family);
        if args.clean {
            clean(&tool, args.dry_run)?;
            continue;
        }
        let input = rules.restore(family);
        if args.dry_run {
            println!("# {restore} --noflush <<EOF\n{input}EOF");
            for (chain, rule) in JUMPS {
                println!("{tool} -t nat -C {chain} {rule} || {tool} -t nat -A {chain} {rule}");
            }
            continue;
        }
        restore_input(&restore, &input)?;
        for (chain, rule) in JUMPS {
            let rule: Vec<&str> = rule.split(' ').collect();
            // Added once: -C says whether it is there.
            if !succeeds(
                &tool,
                &[&["-t", "nat", "-C", chain], rule.as_slice()].concat(),
            ) {
                check(
                    &tool,
                    &[&["-t", "nat", "-A", chain], rule.as_slice()].concat(),
                )?;
            }
        }
        eprintln!("skiff iptables: {tool} rules installed");
    }
    Ok(())
}

fn rules(args: &Args) -> Result<Rules, String> {
    let inbound_ports = match args.inbound_ports.trim() {
        "*" | "" => Vec::new(),
        list => list
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("--inbound-ports: {p:?} is not a port"))
            })
            .collect::<Result<_, _>>()?,
    };
    // The proxy's own ports, as configured: admin, the capture listeners.
    let mut exclude_inbound_ports = vec![
        args.admin_port,
        args.outbound_capture_port,
        args.inbound_capture_port,
        CONTROL_PORT,
    ];
    for p in &args.exclude_inbound_ports {
        if !exclude_inbound_ports.contains(p) {
            exclude_inbound_ports.push(*p);
        }
    }
    let exclude_outbound_cidrs = args
        .exclude_outbound_cidrs
        .iter()
        .map(|c| parse_cidr(c).map_err(|e| format!("--exclude-outbound-cidrs: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Rules {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        inbound_to: args.inbound_capture_port,
        outbound_to: args.outbound_capture_port,
        inbound_ports,
        exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports.clone(),
        exclude_outbound_cidrs,
    })
}

/// (`iptables`, `iptables-restore`) for a backend and family.
fn binaries(backend: Backend, family: Family) -> (String, String) {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let suffix = match backend {
        Backend::Auto => "",
        Backend::Nft => "-nft",
        Backend::Legacy => "-legacy",
    };
    (format!("{base}{suffix}"), format!("{base}{suffix}-restore"))
}

/// Removes the jumps (every copy) and Skiff's chains; what is not there is
/// not an error, so cleaning twice is fine.
fn clean(tool: &str, dry_run: bool) -> Result<(), String> {
    for (chain, rule) in JUMPS {
        let rule: Vec<&str> = rule.split(' ').collect();
        if dry_run {
            println!("{tool} -t nat -D {chain} {}", rule.join(" "));
            continue;
        }
        while succeeds(
            tool,
            &[&["-t", "nat", "-D", chain], rule.as_slice()].concat(),
        ) {}
    }
    for chain in CHAINS {
        if dry_run {
            println!("{tool} -t nat -F {chain}; {tool} -t nat -X {chain}");
            continue;
        }
        if succeeds(tool, &["-t", "nat", "-F", chain]) {
            check(tool, &["-t", "nat", "-X", chain])?;
        }
    }
    if !dry_run {
        eprintln!("skiff iptables: {tool} rules removed");
    }
    Ok(())
}

fn restore_input(restore: &str, input: &str) -> Result<(), String> {
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {restore}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{restore}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{restore}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{restore} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn succeeds(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn check(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
