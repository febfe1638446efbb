//! `skiff demo`: the demo backends and a proxy in front of them, in one process.

use skiff_examples::demo;

use crate::app;

/// Where the embedded demo config claims to come from (for messages and `/config`).
pub const SOURCE: &str = "examples/demo/skiff.yaml";

/// Runs the demo until `shutdown` resolves, then drains.
pub async fn run(shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = skiff_control::load_str(demo::CONFIG_YAML, SOURCE)?;
    let backends = demo::start_backends().await?;
    let bound = app::build_from(skiff_control::Snapshot {
        version: 1,
        source: SOURCE.to_owned(),
        config,
    })
    .await?;
    let proxy = bound
        .listener_addr("demo")
        .ok_or_else(|| anyhow::anyhow!("the demo config has no listener named demo"))?;
    let admin = bound.admin_addr();
    println!(
        "\
Skiff demo is running.
  proxy  http://{proxy}   (listener \"demo\", HTTP/1.1 and h2c)
  admin  http://{admin}
  backends: web a {a}, web b {b} (flaky: fails ~{pct}%), gRPC greeter {g}

Try:
  curl -i http://{proxy}/hello                      # JSON from instance a or b; x-served-by: skiff
  curl -s --http2-prior-knowledge http://{proxy}/   # the same over h2c
  curl -s -X POST --data-binary 'echo me' http://{proxy}/echo
  grpcurl -plaintext -import-path examples/proto -proto greeter.proto \\
      -d '{{\"name\":\"you\"}}' {proxy} skiff.demo.v1.Greeter/SayHello
  curl -s http://{admin}/metrics | grep skiff_requests_total
  curl -s http://{admin}/clusters
  curl -s http://{admin}/config

Ctrl-C stops it.",
        a = demo::HTTP_A,
        b = demo::HTTP_B,
        g = demo::GREETER,
        pct = demo::FLAKY_FAIL_PERCENT,
    );
    shutdown.await;
    bound.drain();
    bound.wait_termination().await?;
    for b in backends {
        b.abort();
    }
    Ok(())
}
