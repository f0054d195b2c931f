//! The gateway builds, as a gateway runs them: the static `edge-bridge` and `edge-device-sim`
//! of `cargo build --profile gateway --target T` (aarch64, armv7 and x86_64 musl), each
//! under qemu-user (x86_64 too, so that every target runs the same way). For each target:
//! - both binaries are ELF for that machine, static (no interpreter, no shared library);
//! - an ARM bridge is at most 4 MiB (4,194,304 bytes), the size goal for gateways' flash;
//! - the bridge starts with its embedded broker, a TCP and a DTLS device listener (PSK and
//!   certificates: both DTLS modes run on the target's own build of ring's assembly);
//! - one simulated device on the TCP link, one proving its id by PSK and one by an ECDSA
//!   certificate on the DTLS link, the simulator emulated too;
//! - the bridge starts with the default DTLS cipher list (an unknown suite stops `run`), and
//!   `check-config` names a `DHE-*` suite as unknown;
//! - one task per device, published with `mosquitto_pub`, completes with its payload echoed;
//! - SIGTERM stops the bridge cleanly (exit status 0).
//!
//! These tests need the cross builds (about ten minutes each), so `cargo test` lists them as
//! ignored; `tests/run.sh` builds the targets and runs them with `--ignored`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edge_tests::{
    Proc, Watcher, binary, last_state, make_link_certificates, publish_lines, run_to_end,
    terminate, wait_ready,
};

const ROOT: &str = "edge/gateway";
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// ELF machine numbers.
const EM_ARM: u16 = 40;
const EM_AARCH64: u16 = 183;
const EM_X86_64: u16 = 62;
/// The most a gateway build of `edge-bridge` may take, in bytes: 4 MiB, the "4M" of `ls -h`
/// and of flash parts (a 32 Mbit NOR flash holds 4,194,304 bytes).
const BRIDGE_MAX_BYTES: u64 = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the aarch64 gateway build: tests/run.sh builds it and runs this"]
async fn aarch64_gateway_build_runs_end_to_end_under_qemu() {
    end_to_end(
        "aarch64-unknown-linux-musl",
        "qemu-aarch64-static",
        EM_AARCH64,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the armv7 gateway build: tests/run.sh builds it and runs this"]
async fn armv7_gateway_build_runs_end_to_end_under_qemu() {
    end_to_end("armv7-unknown-linux-musleabihf", "qemu-arm-static", EM_ARM).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the x86_64 gateway build: tests/run.sh builds it and runs this"]
async fn x86_64_gateway_build_runs_end_to_end_under_qemu() {
    end_to_end("x86_64-unknown-linux-musl", "qemu-x86_64-static", EM_X86_64).await;
}

async fn end_to_end(target: &str, qemu: &str, machine: u16) {
    let bridge_bin = gateway_binary(target, "edge-bridge");
    let sim_bin = gateway_binary(target, "edge-device-sim");
    for bin in [&bridge_bin, &sim_bin] {
        assert_static_elf(bin, machine);
    }
    // The ARM gateways' flash is what the goal is for; x86-64 boxes have disks.
    let size = std::fs::metadata(&bridge_bin).unwrap().len();
    assert!(
        machine == EM_X86_64 || size <= BRIDGE_MAX_BYTES,
        "{}: {size} bytes, over the goal of {BRIDGE_MAX_BYTES}",
        bridge_bin.display()
    );
    let qemu = find_qemu(qemu);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_link_certificates(d, "/CN=test CA", &["dev-c"]);
    let file = |name: &str| d.join(name).to_str().unwrap().to_owned();
    dhe_is_left_out(&qemu, &bridge_bin, d);
    let config = d.join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"gateway\"\n\
             [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\
             [[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n\
             [[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:0\"\npsk = {{ \"dev-d\" = \"{KEY}\" }}\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            file("bridge.pem"),
            file("bridge.key"),
            file("ca.pem"),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&qemu);
    cmd.arg(&bridge_bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let bridge = wait_ready(cmd.spawn().expect("spawn the bridge under qemu"));
    let [tcp, dtls] = bridge.listeners[..] else {
        panic!("two device listeners expected: {:?}", bridge.listeners);
    };

    let mut watcher = Watcher::connect(bridge.mqtt, ROOT).await;
    watcher.wait_bridge_online().await;
    let _tcp_device = device(&qemu, &sim_bin, tcp, "dev-t", &[]);
    let _dtls_device = device(&qemu, &sim_bin, dtls, "dev-d", &["--dtls", "--psk", KEY]);
    let (ca, cert, key) = (file("ca.pem"), file("dev-c.pem"), file("dev-c.key"));
    let certificate = [
        "--dtls",
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let _cert_device = device(&qemu, &sim_bin, dtls, "dev-c", &certificate);
    for id in ["dev-t", "dev-d", "dev-c"] {
        watcher.wait_device_online(id).await;
    }

    let tasks = [
        ("over-tcp", "dev-t"),
        ("over-dtls", "dev-d"),
        ("over-dtls-certificate", "dev-c"),
    ];
    let lines: Vec<String> = tasks
        .iter()
        .map(|(id, device)| {
            serde_json::json!({
                "id": id, "capability": "echo", "device": device, "payload": format!("from {id}")
            })
            .to_string()
        })
        .collect();
    publish_lines(
        bridge.mqtt,
        &format!("{ROOT}/tasks/submit"),
        &lines,
        Duration::from_secs(30),
    );
    watcher
        .wait_for(Duration::from_secs(60), "every task completed", |seen| {
            tasks
                .iter()
                .all(|(id, _)| last_state(seen, id).as_deref() == Some("completed"))
        })
        .await;
    let states = watcher.states();
    for (id, device) in tasks {
        let done = states[id].last().unwrap();
        assert_eq!(done["result"], format!("from {id}"), "{done}");
        assert!(
            states[id].iter().any(|s| s["device"] == device),
            "{id} ran on {device}: {:?}",
            states[id]
        );
    }

    let status = terminate(bridge.proc);
    assert!(status.success(), "the bridge stopped with {status}");
}

/// `target/{target}/gateway/{name}`, next to the host's `target/debug`.
fn gateway_binary(target: &str, name: &str) -> PathBuf {
    let host = binary("edge-bridge");
    let target_dir = host
        .parent()
        .and_then(Path::parent)
        .expect("the binaries are in target/{profile}");
    let path = target_dir.join(target).join("gateway").join(name);
    assert!(
        path.exists(),
        "{} is missing: run tools/cross/setup, then \
         `cargo build --profile gateway --target {target} -p edge-bridge` (tests/run.sh does)",
        path.display()
    );
    path
}

fn find_qemu(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: apt-get install qemu-user-static (tests/run.sh does)")
    })
}

/// The DTLS stack has no finite-field DH: `check-config` on the gateway build names a DTLS
/// link's `DHE-*` suite as unknown.
fn dhe_is_left_out(qemu: &Path, bridge: &Path, dir: &Path) {
    let config = dir.join("dhe.toml");
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"gateway\"\ndata_dir = \"{}\"\n\
             [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\
             [[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:0\"\npsk = {{ \"dev-d\" = \"{KEY}\" }}\n\
             ciphers = \"PSK-AES128-CCM8:DHE-PSK-AES128-GCM-SHA256\"\n",
            dir.join("dhe-data").display()
        ),
    )
    .unwrap();
    let (status, out, err) = run_to_end(
        Command::new(qemu)
            .arg(bridge)
            .arg("check-config")
            .arg(&config)
            .env("NO_COLOR", "1"),
        Duration::from_secs(60),
    );
    let printed = format!("{out}{err}");
    assert!(
        !status.success(),
        "check-config accepted a DHE suite: {printed}"
    );
    assert!(
        printed.contains("DHE-PSK-AES128-GCM-SHA256"),
        "check-config did not name the DHE suite: {printed}"
    );
}

/// `edge-device-sim` (the gateway build, under qemu) offering `echo`.
fn device(qemu: &Path, sim: &Path, addr: SocketAddr, id: &str, extra: &[&str]) -> Proc {
    let child = Command::new(qemu)
        .arg(sim)
        .args(extra)
        .arg("--connect")
        .arg(addr.to_string())
        .args(["--id", id, "--capability", "echo"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the simulator under qemu");
    Proc {
        child,
        name: "edge-device-sim",
    }
}

/// Panics unless `path` is an ELF executable for `machine` that needs nothing at run time:
/// no program interpreter (the dynamic loader) and no shared library (`DT_NEEDED`).
fn assert_static_elf(path: &Path, machine: u16) {
    let elf = std::fs::read(path).unwrap();
    let shown = path.display();
    assert_eq!(&elf[..4], b"\x7fELF", "{shown} is not ELF");
    let wide = match elf[4] {
        1 => false,
        2 => true,
        c => panic!("{shown}: ELF class {c}"),
    };
    assert_eq!(elf[5], 1, "{shown}: not little-endian");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let word = |at: usize| -> usize {
        if wide {
            u64_at(at) as usize
        } else {
            u32_at(at) as usize
        }
    };
    assert_eq!(u16_at(18), machine, "{shown}: ELF machine");
    let (phoff, phentsize, phnum) = if wide {
        (word(32), u16_at(54), u16_at(56))
    } else {
        (word(28), u16_at(42), u16_at(44))
    };
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: usize = 1;
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * usize::from(phentsize);
        let kind = u32_at(ph);
        assert_ne!(kind, PT_INTERP, "{shown} names a dynamic loader");
        if kind == PT_DYNAMIC {
            // A static PIE keeps a dynamic section for its own relocations, without libraries.
            let (offset, size) = if wide {
                (word(ph + 8), word(ph + 32))
            } else {
                (word(ph + 4), word(ph + 16))
            };
            let entry = if wide { 16 } else { 8 };
            for at in (offset..offset + size).step_by(entry) {
                assert_ne!(word(at), DT_NEEDED, "{shown} needs a shared library");
            }
        }
    }
}
