//! Reads Skiff's own counters from the admin server's `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The counters this benchmark reads, at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// When it was taken, from the start of the measured run.
    pub at: Duration,
    /// `skiff_retries_total`, summed over its labels.
    pub retries: f64,
    /// `skiff_outlier_ejections_total`, summed over its labels.
    pub ejections: f64,
    /// Requests each endpoint had answered (filled in by the caller: the
    /// endpoints are not Skiff's to report).
    pub served: [u64; 3],
    /// CPU ticks used by every other process on the machine so far
    /// ([`crate::cpu::others_ticks`]).
    pub others_cpu: u64,
}

/// GETs `/metrics` on its own short-lived connection, so scraping never
/// shares a connection (or a queue) with the load.
pub async fn scrape(admin: SocketAddr, at: Duration) -> anyhow::Result<Sample> {
    let stream = TcpStream::connect(admin)
        .await
        .with_context(|| format!("connecting to the admin server {admin}"))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/metrics")
        .header(header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!("GET /metrics: {}", response.status());
    }
    let body = response.into_body().collect().await?.to_bytes();
    let text = std::str::from_utf8(&body).context("/metrics is not UTF-8")?;
    Ok(Sample {
        at,
        retries: sum(text, "skiff_retries_total"),
        ejections: sum(text, "skiff_outlier_ejections_total"),
        served: [0; 3],
        others_cpu: crate::cpu::others_ticks(),
    })
}

/// The sum of every sample of `name` (any labels) in Prometheus text format.
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name{...} value` or `name value`, not `name_suffix ...`.
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum;

    #[test]
    fn sums_every_label_set_and_ignores_look_alikes() {
        let text = "# HELP skiff_retries Retries sent\n\
                    # TYPE skiff_retries counter\n\
                    skiff_retries_total{route=\"a/0\",cluster=\"app\"} 3\n\
                    skiff_retries_total{route=\"b/0\",cluster=\"app\"} 4\n\
                    skiff_retries_total_other 100\n\
                    skiff_outlier_ejections_total{cluster=\"app\"} 2\n";
        assert_eq!(sum(text, "skiff_retries_total"), 7.0);
        assert_eq!(sum(text, "skiff_outlier_ejections_total"), 2.0);
        assert_eq!(sum(text, "skiff_rate_limited_total"), 0.0);
    }
}
