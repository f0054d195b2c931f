//! `edge-bridge watch [ID]`: status events as they come, one readable line each.
//!
//! With an id, the task's current state is asked first (a query), so a task that finished
//! before the command started is shown at once; the command ends with the task's final
//! state, and its exit status says whether it completed.

use std::time::Duration;

use rumqttc::QoS;

use super::{ConnectArgs, Incoming, ask, clock_time, connect, json_name, subscribe, token};
use crate::api::{StatusEvent, TaskState};

#[derive(Debug)]
pub struct WatchArgs {
    /// One task: its current state, then its events until its final state.
    pub id: Option<String>,
    /// Print each event as the JSON the bridge published.
    pub json: bool,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// How long to wait for the broker (and, with an id, for the bridge's answer).
    pub timeout: Duration,
    pub connect: ConnectArgs,
}

impl Default for WatchArgs {
    /// Every event, as lines, the broker awaited 5 s.
    fn default() -> Self {
        Self {
            id: None,
            json: false,
            count: None,
            timeout: Duration::from_secs(5),
            connect: ConnectArgs::default(),
        }
    }
}

/// Runs the command. `Ok(Some(completed))` when a watched task ended; `Ok(None)` otherwise.
pub async fn run(args: WatchArgs) -> anyhow::Result<Option<bool>> {
    let target = args.connect.target()?;
    if let Some(id) = &args.id {
        anyhow::ensure!(
            crate::api::valid_id(id),
            "{id:?} is not a task id (one MQTT topic level)"
        );
    }
    let level = args.id.as_deref().unwrap_or("+");
    let status = format!("{}/tasks/{level}/status", target.root);
    let reply = token();
    let reply_topic = format!("{}/query/replies/{reply}", target.root);
    let mut filters = vec![status];
    if args.id.is_some() {
        filters.push(reply_topic.clone());
    }
    let (client, mut events) = connect(&target, 8);
    subscribe(&client, &mut events, &target, &filters, args.timeout).await?;
    eprintln!(
        "watching {} at {}:{} (Ctrl-C to stop)",
        filters[0], target.host, target.port
    );
    let mut seen = 0u64;
    // With an id: where the task stands now (again after a reconnect, whose clean session
    // missed what happened meanwhile), then its events.
    let mut ask_now = args.id.is_some();
    loop {
        let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
        if std::mem::take(&mut ask_now) {
            let id = args.id.as_deref();
            let asked = ask(
                &client,
                &mut events,
                &target,
                &reply,
                id,
                None,
                args.timeout,
            )
            .await?;
            let answer = asked.answer;
            if let Some(e) = &answer.error {
                eprintln!("edge-bridge: {}", e.message);
                return Ok(Some(false));
            }
            if let Some(done) = answer.finished {
                print_event(&done, &serde_json::to_string(&done)?, args.json);
                return Ok(Some(done.state == TaskState::Completed));
            }
            if let Some(t) = answer.tasks.first() {
                eprintln!("{} is {}: {}", t.id, json_name(&t.state), t.waiting.message);
            }
            pending = asked.others;
        }
        let mut next = pending
            .into_iter()
            .map(|(topic, payload)| Incoming::Message { topic, payload })
            .collect::<std::collections::VecDeque<_>>();
        loop {
            let event = match next.pop_front() {
                Some(e) => e,
                None => match events.recv().await {
                    Some(e) => e,
                    None => anyhow::bail!("the MQTT connection task ended"),
                },
            };
            match event {
                // Answers to earlier asks.
                Incoming::Message { topic, .. } if topic == reply_topic => {}
                Incoming::Message { payload, .. } => {
                    let text = String::from_utf8_lossy(&payload);
                    let Ok(event) = serde_json::from_slice::<StatusEvent>(&payload) else {
                        eprintln!("not a status event: {text}");
                        continue;
                    };
                    print_event(&event, &text, args.json);
                    seen += 1;
                    if args.id.is_some() && event.state.is_terminal() {
                        return Ok(Some(event.state == TaskState::Completed));
                    }
                    if args.count.is_some_and(|n| seen >= n) {
                        return Ok(None);
                    }
                }
                Incoming::Lost(e) => {
                    eprintln!("connection to the broker lost ({e}); reconnecting");
                }
                Incoming::Connected => {
                    // A clean session: subscribed again; events meanwhile are not replayed,
                    // so a watched task's state is asked again.
                    for f in &filters {
                        client.subscribe(f.clone(), QoS::AtLeastOnce).await?;
                    }
                    if args.id.is_some() {
                        ask_now = true;
                        break;
                    }
                }
                Incoming::Subscribed | Incoming::Acked => {}
                Incoming::Refused => anyhow::bail!("the broker refused the subscription again"),
            }
        }
    }
}

/// One event: `HH:MM:SS.mmm  id  state  device  attempt  result or error` (or its JSON).
fn print_event(e: &StatusEvent, json: &str, as_json: bool) {
    if as_json {
        println!("{json}");
        return;
    }
    let state = json_name(&e.state);
    let mut line = format!(
        "{}  {}  {:9}  {}  attempt {}",
        clock_time(e.ts_ms),
        e.id,
        state,
        e.device.as_deref().unwrap_or("-"),
        e.attempt
    );
    if let Some(r) = &e.result {
        line.push_str(&format!("  result {r}"));
    }
    if let Some(err) = &e.error {
        let code = json_name(&err.code);
        line.push_str(&format!("  {code}: {}", err.message));
    }
    println!("{line}");
}
