//! Config: flags, env, YAML file, precedence, errors, overrides, JSON dump.

use std::io::Write as _;
use std::sync::Arc;

use hive::{Config, ConfigDump, Hive, HiveError, Invoke, Module};
use serde::Serialize;

fn ok<T>(v: T) -> anyhow::Result<T> {
    Ok(v)
}

/// Env vars are process-wide; each test uses flags no other test uses.
#[expect(
    unsafe_code,
    reason = "set_var in a test; the name is unique to this test binary and test"
)]
fn set_env(k: &str, v: &str) {
    unsafe { std::env::set_var(k, v) };
}

#[expect(clippy::expect_used, reason = "test helper")]
fn yaml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write yaml");
    f
}

#[derive(clap::Args, Serialize, Clone, Debug)]
struct PrecCfg {
    #[arg(long, default_value = "default")]
    prec_a: String,
    #[arg(long, default_value = "default")]
    prec_b: String,
    #[arg(long, default_value = "default")]
    prec_c: String,
    #[arg(long, default_value = "default")]
    prec_d: String,
    #[arg(long, default_value_t = 1)]
    prec_workers: u32,
    #[arg(long)]
    prec_devices: Vec<String>,
    #[arg(long)]
    prec_flag: bool,
}

#[test]
fn precedence_is_default_yaml_env_flag() {
    let file = yaml(
        "prec-b: yaml\nprec-c: yaml\nprec-d: yaml\nprec-workers: 4\nprec-devices: [eth0, eth1]\nprec-flag: true\n",
    );
    set_env("CILIUM_PREC_C", "env");
    set_env("CILIUM_PREC_D", "env");
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Config::<PrecCfg>::new()],
    )]);
    let path = file.path().to_string_lossy().into_owned();
    hive.populate_with_args(["agent", "--config", &path, "--prec-d", "flag"])
        .expect("populate");
    let cfg = hive
        .get::<PrecCfg>()
        .expect("get")
        .expect("config provided");
    assert_eq!(
        (
            cfg.prec_a.as_str(),
            cfg.prec_b.as_str(),
            cfg.prec_c.as_str(),
            cfg.prec_d.as_str()
        ),
        ("default", "yaml", "env", "flag")
    );
    assert_eq!(cfg.prec_workers, 4);
    assert_eq!(
        cfg.prec_devices,
        vec!["eth0".to_string(), "eth1".to_string()]
    );
    assert!(cfg.prec_flag);

    let dump = hive.get::<ConfigDump>().expect("get").expect("dump");
    assert_eq!(dump.0["agent"]["prec_d"], "flag");
    assert_eq!(dump.0["agent"]["prec_workers"], 4);
}

#[derive(clap::Args, Serialize, Clone, Debug)]
struct UnknownCfg {
    #[arg(long, default_value = "x")]
    known_key: String,
}

#[test]
fn unknown_yaml_key_names_key_and_file() {
    let file = yaml("known-key: y\nno-such-flag: 3\n");
    let path = file.path().to_string_lossy().into_owned();
    let hive = Hive::new(vec![Config::<UnknownCfg>::new()]);
    let err = hive
        .populate_with_args(["agent", &format!("--config={path}")])
        .expect_err("must fail");
    assert!(matches!(err, HiveError::UnknownConfigKey { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"no-such-flag\"") && msg.contains(&path),
        "{msg}"
    );
}

#[derive(clap::Args, Serialize, Clone, Debug)]
struct DupOne {
    #[arg(long, default_value = "1")]
    dup_flag: String,
}

#[derive(clap::Args, Serialize, Clone, Debug)]
struct DupTwo {
    #[arg(long, default_value = "2")]
    dup_flag: String,
}

#[test]
fn duplicate_flag_names_both_configs() {
    let (c1, l1) = (Config::<DupOne>::new(), line!());
    let (c2, l2) = (Config::<DupTwo>::new(), line!());
    let hive = Hive::new(vec![
        Module::new("one", "", vec![c1]),
        Module::new("two", "", vec![c2]),
    ]);
    let err = hive.populate().expect_err("must fail");
    assert!(matches!(err, HiveError::DuplicateFlag { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("--dup-flag"), "{msg}");
    assert!(
        msg.contains(&format!("config::DupOne at {}:{l1} in module one", file!())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("config::DupTwo at {}:{l2} in module two", file!())),
        "{msg}"
    );
}

#[derive(clap::Args, Serialize, Clone, Debug)]
struct OvrCfg {
    #[arg(long, default_value = "/var/run/cilium")]
    ovr_state_dir: String,
}

#[test]
fn override_without_argv_and_injection() {
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![
            Config::<OvrCfg>::new(),
            Invoke::new(|c: Arc<OvrCfg>, dump: Arc<ConfigDump>| {
                assert_eq!(c.ovr_state_dir, "/tmp/test");
                assert_eq!(dump.0["agent"]["ovr_state_dir"], "/tmp/test");
                ok(())
            }),
        ],
    )])
    .with_config_override(|c: &mut OvrCfg| c.ovr_state_dir = "/tmp/test".into());
    hive.populate().expect("populate");
}

#[test]
fn bad_flag_value_and_help() {
    #[derive(clap::Args, Serialize, Clone, Debug)]
    struct NumCfg {
        #[arg(long, default_value_t = 1)]
        num_value: u32,
    }
    let hive = Hive::new(vec![Config::<NumCfg>::new()]);
    let err = hive
        .populate_with_args(["agent", "--num-value", "abc"])
        .expect_err("must fail");
    assert!(matches!(err, HiveError::Cli(_)), "{err}");
    let help = Hive::new(vec![Config::<NumCfg>::new()])
        .command("agent")
        .expect("command")
        .render_long_help();
    let help = help.to_string();
    assert!(
        help.contains("--num-value")
            && help.contains("CILIUM_NUM_VALUE")
            && help.contains("--config"),
        "{help}"
    );
}
