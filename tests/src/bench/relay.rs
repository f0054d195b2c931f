//! Phase 1: the broker's raw relay rate. A responder subscribed to a request topic republishes
//! every payload on a response topic; a requester keeps `--concurrency` requests outstanding
//! and measures round trips. Both are QoS 1 and go through the bridge's own embedded broker, so
//! the path is the one a task takes minus the bridge: client → broker → responder → broker →
//! client.

use std::time::Instant;

use tokio::sync::oneshot;

use super::client::Client;
use super::report::RelayFigures;
use super::stats::{CpuSnapshot, Latencies, Progress};
use super::{BenchError, Options, STALL};
use crate::Bridge;

/// A request the size of a task submission; the response is the same bytes.
fn request(nonce: &str, i: usize) -> Vec<u8> {
    format!(r#"{{"id":"r-{nonce}-{i}","capability":"echo","priority":3,"payload":{{"i":{i}}}}}"#)
        .into_bytes()
}

/// The request number a response carries.
fn number(payload: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    usize::try_from(v["payload"]["i"].as_u64()?).ok()
}

pub(crate) async fn run(
    bridge: &Bridge,
    opts: &Options,
    nonce: &str,
) -> Result<RelayFigures, BenchError> {
    const PHASE: &str = "relay";
    let mut progress = Progress::new(PHASE);
    let req_topic = format!("bench-relay/{nonce}/req");
    let resp_topic = format!("bench-relay/{nonce}/resp");
    let window = opts.concurrency;
    let mut responder = Client::connect(
        bridge.mqtt,
        &format!("bench-responder-{nonce}"),
        window,
        std::slice::from_ref(&req_topic),
    )
    .await?;
    let mut requester = Client::connect(
        bridge.mqtt,
        &format!("bench-requester-{nonce}"),
        window,
        std::slice::from_ref(&resp_topic),
    )
    .await?;

    // The responder echoes until told to stop, then reports its reconnects.
    let (stop, mut stopped) = oneshot::channel::<()>();
    let echo_topic = resp_topic.clone();
    let echo = tokio::spawn(async move {
        loop {
            tokio::select! {
                m = responder.next() => match m {
                    Some(m) => responder.publish(&echo_topic, m.payload).await?,
                    None => break,
                },
                _ = &mut stopped => break,
            }
        }
        Ok::<u64, BenchError>(responder.errors())
    });

    let n = opts.relay_messages;
    progress.say(&format!(
        "{n} QoS 1 round trips through the embedded broker, {window} outstanding"
    ));
    let bridge_pid = bridge.proc.child.id();
    let cpu_start = CpuSnapshot::take(bridge_pid, &[]);
    let start = Instant::now();
    let deadline = start + opts.phase_timeout();
    let mut sent_at: Vec<Option<Instant>> = vec![None; n];
    let mut latency = Latencies::default();
    let (mut next, mut done) = (0usize, 0usize);
    let mut last = start;
    while done < n {
        while next < n && next - done < window {
            sent_at[next] = Some(Instant::now());
            requester.publish(&req_topic, request(nonce, next)).await?;
            next += 1;
        }
        let until = deadline.min(Instant::now() + STALL);
        let Some(m) = requester.next_until(until).await else {
            return Err(BenchError::Timeout {
                phase: PHASE,
                what: format!(
                    "{done} of {n} round trips done; no response for {STALL:?} or past the phase deadline"
                ),
            });
        };
        if let Some(sent) = number(&m.payload).and_then(|i| sent_at.get_mut(i)?.take()) {
            latency.push(m.at.duration_since(sent));
            done += 1;
            last = m.at;
        }
        progress.tick(|| {
            format!(
                "{done}/{n} round trips, {:.0}/s",
                done as f64 / start.elapsed().as_secs_f64()
            )
        });
    }
    let cpu = CpuSnapshot::take(bridge_pid, &[]).since(&cpu_start);
    let _ = stop.send(());
    let responder_errors = match echo.await {
        Ok(Ok(errors)) => errors,
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            return Err(BenchError::Mqtt {
                client: "responder".into(),
                reason: e.to_string(),
            });
        }
    };
    latency.finish();
    let seconds = last.duration_since(start).as_secs_f64().max(1e-9);
    let figures = RelayFigures {
        round_trips: n,
        seconds,
        per_s: n as f64 / seconds,
        latency,
        cpu,
        reconnects: requester.errors() + responder_errors,
    };
    progress.say(&format!(
        "{} round trips in {:.2} s: {:.0}/s",
        n, seconds, figures.per_s
    ));
    Ok(figures)
}
