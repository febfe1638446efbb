//! `skiff certs ca|issue`: a mesh CA and SPIFFE workload certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::certs::{Ca, Validity, write_workload};

#[derive(Subcommand)]
pub(super) enum Certs {
    /// Create a mesh CA: DIR/ca.pem and DIR/ca-key.pem.
    Ca {
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value = "8760h")]
        validity: skiff_control::model::Duration,
    },
    /// Issue a workload certificate: DIR/cert.pem, DIR/key.pem and the trust bundle DIR/ca.pem.
    Issue {
        /// The directory holding the CA (ca.pem, ca-key.pem).
        #[arg(long)]
        ca: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        id: String,
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid; short, since rotation is cheap.
        #[arg(long, default_value = "24h")]
        validity: skiff_control::model::Duration,
    },
}

pub(super) fn certs(command: Certs) -> ExitCode {
    let result = match command {
        Certs::Ca { out, validity } => Ca::generate(Validity::from_now(validity.get()))
            .and_then(|ca| ca.write(&out))
            .map(|()| {
                format!(
                    "wrote {0}/ca.pem and {0}/ca-key.pem (valid {validity})",
                    out.display()
                )
            }),
        Certs::Issue {
            ca,
            id,
            out,
            validity,
        } => Ca::load(&ca)
            .and_then(|ca| {
                let workload = ca.issue(&id, Validity::from_now(validity.get()))?;
                write_workload(&out, &workload, &ca)
            })
            .map(|()| {
                format!(
                    "wrote {0}/cert.pem, {0}/key.pem and {0}/ca.pem for {id} (valid {validity})",
                    out.display()
                )
            }),
    };
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("skiff certs: {e}");
            ExitCode::FAILURE
        }
    }
}
