//! Bad configuration stops `cmms-router run` at start, before any Kafka
//! client exists, with a message that names the key or file and the problem.
//!
//! Each case runs the real binary against a config written to a temporary
//! directory. Bootstrap points at 127.0.0.1:1, where nothing listens: a
//! mistake that let the router get as far as Kafka would show up as a hang,
//! which the timeout turns into a failure.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Longer than any start-up failure needs, short of a hung test run.
const TIMEOUT: Duration = Duration::from_secs(20);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A valid config for `run`, with absolute paths into the repository.
fn good_config() -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = "127.0.0.1:1"
group_id = "cli-config-test"
transactional_id = "cli-config-test-1"

[router]
schemas_dir = '{schemas}'
topology = '{topology}'

[window]
max_orders = 20
max_wait_ms = 5000

[state]
# Relative to the config file's directory: the test's temp dir.
dir = "state"

[http]
listen = "off"
"#,
        schemas = repo().join("schemas").display(),
        topology = repo().join("topology/topology.toml").display(),
    )
}

/// What a finished run printed.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and extra environment, killing it after [`TIMEOUT`].
fn cmms_router(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    // Output goes to files, not pipes, so a chatty child can never block on a
    // full pipe while we wait for it.
    let out_dir = TempDir::new().expect("tempdir");
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cmms-router"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    // Overrides from the developer's or CI's shell must not leak into a case.
    for (var, _) in std::env::vars() {
        if var.starts_with("CMMS_ROUTER") || var == "RUST_LOG" {
            cmd.env_remove(var);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("cmms-router starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on cmms-router") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            // Best effort: the child may exit between the check and the kill.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cmms-router {args:?} still running after {TIMEOUT:?}: it got past config \
                 validation; stderr so far:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: std::fs::read_to_string(&out_path).expect("read stdout"),
        stderr: std::fs::read_to_string(&err_path).expect("read stderr"),
    }
}

/// Writes `config` as `router.toml` in a fresh directory.
fn write_config(config: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("router.toml");
    std::fs::write(&path, config).expect("write config");
    (dir, path)
}

/// Runs `cmms-router run --config <path>` and checks it fails with every
/// one of `expected` in its stderr.
fn assert_run_fails(path: &Path, env: &[(&str, &str)], expected: &[&str]) {
    let path = path.to_str().expect("temp paths are UTF-8");
    let out = cmms_router(&["run", "--config", path], env);
    assert!(
        !out.status.success(),
        "run should fail, exited with {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    for needle in expected {
        assert!(
            out.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn misspelt_key_is_named() {
    let (_dir, path) = write_config(&good_config().replace("max_wait_ms", "max_wiat_ms"));
    assert_run_fails(&path, &[], &["max_wiat_ms", "unknown field", "router.toml"]);
}

#[test]
fn missing_bootstrap_servers_is_named() {
    let config = good_config().replace("bootstrap_servers = \"127.0.0.1:1\"\n", "");
    let (_dir, path) = write_config(&config);
    assert_run_fails(&path, &[], &["kafka.bootstrap_servers", "missing"]);
}

#[test]
fn zero_max_orders_is_out_of_range() {
    let (_dir, path) = write_config(&good_config().replace("max_orders = 20", "max_orders = 0"));
    assert_run_fails(
        &path,
        &[],
        &["window.max_orders", "0 is out of range", "1 to 10000"],
    );
}

#[test]
fn schemas_dir_without_schema_files_names_the_file() {
    let (dir, _) = write_config("");
    let empty = dir.path().join("no-schemas");
    std::fs::create_dir(&empty).expect("mkdir");
    let schemas = repo().join("schemas");
    // Relative on purpose: it resolves against the config file's directory.
    let config = good_config().replace(&format!("'{}'", schemas.display()), "'no-schemas'");
    let path = dir.path().join("router.toml");
    std::fs::write(&path, config).expect("write config");
    assert_run_fails(
        &path,
        &[],
        &["cannot read schema file", "no-schemas/work_order.avsc"],
    );
}

#[test]
fn bad_topology_value_is_named() {
    let (dir, _) = write_config("");
    let topology =
        std::fs::read_to_string(repo().join("topology/topology.toml")).expect("read repo topology");
    let bad = topology.replacen(
        "name = \"cmms.workorders.normalized\"\npartitions = 6",
        "name = \"cmms.workorders.normalized\"\npartitions = 0",
        1,
    );
    assert_ne!(bad, topology, "the input section of topology.toml changed");
    std::fs::write(dir.path().join("topology.toml"), bad).expect("write topology");
    let config = good_config().replace(
        &format!("'{}'", repo().join("topology/topology.toml").display()),
        "'topology.toml'",
    );
    let path = dir.path().join("router.toml");
    std::fs::write(&path, config).expect("write config");
    assert_run_fails(
        &path,
        &[],
        &["topology key `input`", "0 partitions is out of range"],
    );
}

#[test]
fn nonexistent_config_file_is_named() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("absent.toml");
    assert_run_fails(
        &path,
        &[],
        &[
            "cannot read config file",
            "absent.toml",
            "No such file or directory",
        ],
    );
}

#[test]
fn environment_override_of_unknown_key_is_named() {
    let (_dir, path) = write_config(&good_config());
    assert_run_fails(
        &path,
        &[("CMMS_ROUTER__WINDOW__MAX_ODERS", "3")],
        &[
            "CMMS_ROUTER__WINDOW__MAX_ODERS",
            "unknown field `max_oders`",
        ],
    );
}

#[test]
fn config_check_accepts_the_shipped_config_and_lists_trades() {
    let path = repo().join("config/router.toml");
    let out = cmms_router(
        &[
            "config",
            "check",
            "--config",
            path.to_str().expect("repo path is UTF-8"),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "config check failed ({}):\n{}",
        out.status,
        out.stderr
    );
    assert!(out.stdout.contains("config ok"), "{}", out.stdout);
    let trades = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("trades: "))
        .unwrap_or_else(|| panic!("no trades line in:\n{}", out.stdout));
    let trades: Vec<&str> = trades.split(", ").collect();
    for trade in ["hvac", "plumbing", "electrical", "non_building"] {
        assert!(trades.contains(&trade), "{trade} missing from {trades:?}");
    }
}
