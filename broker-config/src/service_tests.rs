//! The gateway service files agree with the format their init system defines and with the
//! layout the packages install (tools/package). `systemd-analyze verify` runs on the installed
//! unit in tests/tests/package.rs.

use super::*;
use serde_json::Value;

#[test]
fn a_packaged_config_is_the_default_with_its_data_dir() {
    assert_eq!(DEFAULT_CONFIG.matches(DEFAULT_DATA_DIR_LINE).count(), 1);
    for dir in [DEBIAN_DATA_DIR, OPENHARMONY_DATA_DIR, "/odd \"dir\"\\x"] {
        let text = default_config_with_data_dir(dir);
        let parsed = Config::from_toml(&text, "packaged").unwrap();
        let expected = Config {
            data_dir: PathBuf::from(dir),
            ..Config::default()
        };
        assert_eq!(parsed, expected, "{dir}");
        // Only that line changed: the comments stay for the operator.
        assert_eq!(text.lines().count(), DEFAULT_CONFIG.lines().count());
    }
}

/// The keys of systemd's unit, as `(section, key, value)`.
fn unit_entries() -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in SYSTEMD_UNIT.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else {
            let (key, value) = line.split_once('=').expect("key=value");
            entries.push((section.clone(), key.to_owned(), value.to_owned()));
        }
    }
    entries
}

fn unit_value(key: &str) -> String {
    let values: Vec<_> = unit_entries()
        .into_iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(values.len(), 1, "{key}: {values:?}");
    values[0].clone()
}

#[test]
fn the_systemd_unit_waits_for_ready_keeps_a_watchdog_and_the_queue_in_its_state_directory() {
    assert_eq!(unit_value("Type"), "notify");
    assert!(unit_value("WatchdogSec").ends_with('s'));
    assert_eq!(unit_value("Restart"), "on-failure");
    assert_eq!(
        unit_value("ExecStart"),
        "/usr/bin/edge-bridge run --config /etc/edge-bridge/config.toml"
    );
    // StateDirectory= is relative to /var/lib: the queue the packaged config names.
    let state = unit_value("StateDirectory");
    assert_eq!(format!("/var/lib/{state}"), DEBIAN_DATA_DIR);
    assert_eq!(unit_value("WorkingDirectory"), DEBIAN_DATA_DIR);
    assert_eq!(unit_value("User"), "edge-bridge");
    assert_eq!(unit_value("ProtectSystem"), "strict");
    assert_eq!(unit_value("NoNewPrivileges"), "yes");
    assert_eq!(unit_value("CapabilityBoundingSet"), "");
    // The bridge reads /proc/sys/kernel/random/boot_id to tell a reboot from a restart
    // (bridge/src/time.rs): ProcSubset=pid would hide it, and every downtime would count as
    // none.
    assert!(
        !unit_entries().iter().any(|(_, k, _)| k == "ProcSubset"),
        "ProcSubset hides /proc/sys"
    );
    // An unattended gateway keeps restarting a bridge that fails to start.
    let unit_section: Vec<_> = unit_entries()
        .into_iter()
        .filter(|(s, _, _)| s == "Unit")
        .collect();
    assert!(
        unit_section
            .iter()
            .any(|(_, k, v)| k == "StartLimitIntervalSec" && v == "0"),
        "{unit_section:?}"
    );
}

fn openharmony_service() -> serde_json::Map<String, Value> {
    let cfg: Value = serde_json::from_str(OPENHARMONY_CFG).unwrap();
    let services = cfg["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    services[0].as_object().unwrap().clone()
}

/// The limits and types of OpenHarmony init's service files (startup subsystem, "service
/// management"): a name of at most 32 bytes; `path` an array of at most 20 strings of at most
/// 64 bytes, the executable first; `uid` and `gid` names or numbers; `once` 0 (resident: init
/// restarts it when it exits) or 1; `start-mode` boot, normal or condition.
#[test]
fn the_openharmony_service_keeps_to_the_limits_of_its_format() {
    let service = openharmony_service();
    let known = [
        "name",
        "path",
        "uid",
        "gid",
        "once",
        "importance",
        "start-mode",
        "caps",
    ];
    for key in service.keys() {
        assert!(known.contains(&key.as_str()), "unexpected key {key}");
    }
    let name = service["name"].as_str().unwrap();
    assert!(!name.is_empty() && name.len() <= 32);
    let path: Vec<&str> = service["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!path.is_empty() && path.len() <= 20);
    assert!(
        path.iter().all(|a| !a.is_empty() && a.len() <= 64),
        "{path:?}"
    );
    assert_eq!(path[0], "/system/bin/edge-bridge");
    assert_eq!(
        &path[1..],
        ["run", "--config", "/system/etc/edge-bridge/config.toml"]
    );
    assert!(service["uid"].is_string() || service["uid"].is_u64());
    assert!(service["gid"].as_array().is_some_and(|g| !g.is_empty()));
    assert_eq!(service["once"], 0, "resident: restarted when it exits");
    assert!(["boot", "normal", "condition"].contains(&service["start-mode"].as_str().unwrap()));
    let importance = service["importance"].as_i64().unwrap();
    assert!((-20..=19).contains(&importance));
    assert_eq!(service["caps"], Value::Array(vec![]), "no capability");
}

#[test]
fn the_openharmony_data_directory_is_made_for_the_service_user_before_services_start() {
    let cfg: Value = serde_json::from_str(OPENHARMONY_CFG).unwrap();
    let service = openharmony_service();
    let uid = service["uid"].as_str().unwrap();
    let gid = service["gid"][0].as_str().unwrap();
    let jobs = cfg["jobs"].as_array().unwrap();
    let job = jobs
        .iter()
        .find(|j| j["name"] == "post-fs-data")
        .expect("a post-fs-data job: /data is mounted, services not started");
    let cmds: Vec<&str> = job["cmds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        cmds,
        [format!("mkdir {OPENHARMONY_DATA_DIR} 0700 {uid} {gid}")]
    );
}
