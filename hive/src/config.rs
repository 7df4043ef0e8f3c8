//! Per-cell configuration: clap flags, `CILIUM_*` env vars and a YAML file, merged with
//! precedence defaults < YAML < env < flags.
//!
//! A config struct derives `clap::Args` and `serde::Serialize`; `Config::<T>::new()` registers
//! it, and constructors receive it as `Arc<T>`.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::marker::PhantomData;
use std::sync::Arc;

use clap::{Arg, ArgMatches, Command};
use serde::Serialize;

use crate::cell::{BoxCell, Cell, Location};
use crate::error::HiveError;
use crate::graph::{Builder, ProviderSpec, Scope, ScopeId, module_name};
use crate::inject::AnyArc;

/// Prefix of the environment variable of every flag: `--foo-bar` is `CILIUM_FOO_BAR`.
pub const ENV_PREFIX: &str = "CILIUM_";

/// The name of the built-in flag that points to a YAML config file.
pub const CONFIG_FLAG: &str = "config";

/// The environment variable that can name a config file.
pub fn env_name(flag: &str) -> String {
    format!("{ENV_PREFIX}{}", flag.to_uppercase().replace('-', "_"))
}

/// Test/embedding overrides, applied to a config after parsing.
pub(crate) type OverrideFn = Arc<dyn Fn(&mut dyn Any) + Send + Sync>;
pub(crate) type Overrides = HashMap<TypeId, Vec<OverrideFn>>;

type ExtractFn = Arc<
    dyn Fn(&ArgMatches, &[OverrideFn]) -> Result<(AnyArc, serde_json::Value), String> + Send + Sync,
>;

/// A registered config type.
#[derive(Clone)]
pub(crate) struct ConfigSpec {
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) location: Location,
    augment: fn(Command) -> Command,
    extract: ExtractFn,
}

/// The bounds a config struct must satisfy.
pub trait ConfigStruct: clap::Args + Serialize + Clone + Send + Sync + 'static {}
impl<T: clap::Args + Serialize + Clone + Send + Sync + 'static> ConfigStruct for T {}

/// The config cell: registers `T`'s flags and provides `Arc<T>`.
pub struct Config<T>(PhantomData<fn() -> T>);

impl<T: ConfigStruct> Config<T> {
    /// Register config `T`. Its flags become part of the hive's command line.
    #[track_caller]
    #[expect(
        clippy::new_ret_no_self,
        reason = "cells are used as BoxCell in vec![]"
    )]
    pub fn new() -> BoxCell {
        let extract: ExtractFn = Arc::new(|m: &ArgMatches, overrides: &[OverrideFn]| {
            let mut v = T::from_arg_matches(m).map_err(|e| e.to_string())?;
            for o in overrides {
                o(&mut v as &mut dyn Any);
            }
            let json = serde_json::to_value(&v).map_err(|e| e.to_string())?;
            Ok((Arc::new(v) as AnyArc, json))
        });
        Box::new(ConfigCell {
            spec: ConfigSpec {
                type_id: TypeId::of::<T>(),
                type_name: std::any::type_name::<T>(),
                location: Location::caller(),
                augment: T::augment_args,
                extract,
            },
        })
    }
}

struct ConfigCell {
    spec: ConfigSpec,
}

impl Cell for ConfigCell {
    fn register(&self, b: &mut Builder) {
        b.config(self.spec.clone());
        let tid = self.spec.type_id;
        b.provide(ProviderSpec {
            type_id: tid,
            type_name: self.spec.type_name,
            deps: Vec::new(),
            ctor: Arc::new(move |ctx| {
                ctx.config_value(tid).map(Ok).ok_or(HiveError::State {
                    state: "populating",
                    action: "read a config that was not parsed (hive bug)",
                })
            }),
            private: false,
            location: self.spec.location,
        });
    }

    fn describe(&self, depth: usize, out: &mut String) {
        let cmd = (self.spec.augment)(Command::new("x"));
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .collect();
        out.push_str(&format!(
            "{}⚙️ {}: config {} [{}]\n",
            "  ".repeat(depth),
            self.spec.location,
            self.spec.type_name,
            flags.join(", ")
        ));
    }
}

/// All configs as JSON, keyed by module path (`root` for configs outside any module).
/// Injected as `Arc<ConfigDump>`; this is what `GET /v1/config` serves.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ConfigDump(pub BTreeMap<String, serde_json::Value>);

/// The parsed configs.
pub(crate) struct ParsedConfigs {
    pub(crate) values: HashMap<TypeId, AnyArc>,
    pub(crate) dump: ConfigDump,
}

fn flag_name(a: &Arg) -> String {
    a.get_long()
        .map(str::to_string)
        .unwrap_or_else(|| a.get_id().to_string())
}

fn describe_cfg(spec: &ConfigSpec, scopes: &[Scope], scope: ScopeId) -> String {
    format!(
        "{} at {} in module {}",
        spec.type_name,
        spec.location,
        module_name(&scopes[scope].path)
    )
}

/// Build the clap command of all configs, rejecting duplicate flags first.
pub(crate) fn build_command(
    name: &str,
    configs: &[(ConfigSpec, ScopeId)],
    scopes: &[Scope],
) -> Result<Command, HiveError> {
    let mut seen_types: HashMap<TypeId, String> = HashMap::new();
    let mut seen_flags: HashMap<String, String> = HashMap::new();
    seen_flags.insert(
        CONFIG_FLAG.to_string(),
        "<hive built-in --config>".to_string(),
    );
    for (spec, scope) in configs {
        let me = describe_cfg(spec, scopes, *scope);
        if let Some(first) = seen_types.insert(spec.type_id, me.clone()) {
            return Err(HiveError::DuplicateConfig {
                type_name: spec.type_name.to_string(),
                first,
                second: me,
            });
        }
        let cmd = (spec.augment)(Command::new("x"));
        for a in cmd.get_arguments() {
            let flag = flag_name(a);
            if let Some(first) = seen_flags.insert(flag.clone(), me.clone()) {
                return Err(HiveError::DuplicateFlag {
                    flag,
                    first,
                    second: me,
                });
            }
        }
    }
    let mut cmd = Command::new(name.to_string()).arg(
        Arg::new(CONFIG_FLAG)
            .long(CONFIG_FLAG)
            .value_name("FILE")
            .env(env_name(CONFIG_FLAG))
            .help("YAML file mapping flag names to values (defaults < file < env < flags)"),
    );
    for (spec, _) in configs {
        cmd = (spec.augment)(cmd);
    }
    // Each config's doc comment would otherwise become the command's description (the last
    // one augmented wins, e.g. "Node-wide flags").
    cmd = cmd.about(
        "Flags of every cell; each flag can also be set in the --config file or as CILIUM_<FLAG> \
         in the environment (defaults < file < environment < flags).",
    );
    cmd = cmd.long_about(None::<&str>);
    let ids: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != CONFIG_FLAG)
        .map(|a| (a.get_id().to_string(), flag_name(a)))
        .collect();
    for (id, flag) in ids {
        cmd = cmd.mut_arg(id, |a| a.env(env_name(&flag)));
    }
    Ok(cmd)
}

/// Find the `--config FILE` value in argv, else in the environment.
fn find_config_file(args: &[OsString]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(|v| v.to_string_lossy().into_owned());
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
    }
    std::env::var(env_name(CONFIG_FLAG))
        .ok()
        .filter(|v| !v.is_empty())
}

fn yaml_scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Apply a YAML file as new defaults of the command's args.
fn apply_yaml(mut cmd: Command, file: &str) -> Result<Command, HiveError> {
    let err = |reason: String| HiveError::ConfigFile {
        file: file.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| err(format!("invalid YAML: {e}")))?;
    let map = match doc {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => return Ok(cmd),
        _ => {
            return Err(err(
                "top level must be a mapping of flag name to value".to_string()
            ));
        }
    };
    for (k, v) in map {
        let key = yaml_scalar(&k).ok_or_else(|| err(format!("key {k:?} is not a string")))?;
        let id = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && a.get_id() != CONFIG_FLAG)
            .map(|a| a.get_id().to_string())
            .ok_or_else(|| HiveError::UnknownConfigKey {
                key: key.clone(),
                file: file.to_string(),
            })?;
        let values: Vec<String> = match &v {
            serde_yaml::Value::Null => continue,
            serde_yaml::Value::Sequence(seq) => seq
                .iter()
                .map(|x| {
                    yaml_scalar(x)
                        .ok_or_else(|| err(format!("key {key}: list items must be scalars")))
                })
                .collect::<Result<_, _>>()?,
            other => vec![
                yaml_scalar(other)
                    .ok_or_else(|| err(format!("key {key}: value must be a scalar or a list")))?,
            ],
        };
        cmd = cmd.mut_arg(id, |a| a.default_values(values));
    }
    Ok(cmd)
}

/// Parse argv (plus env and the YAML file) into every registered config.
pub(crate) fn parse(
    configs: &[(ConfigSpec, ScopeId)],
    scopes: &[Scope],
    args: Vec<OsString>,
    overrides: &Overrides,
) -> Result<ParsedConfigs, HiveError> {
    let name = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hive".to_string());
    let mut cmd = build_command(&name, configs, scopes)?;
    if let Some(file) = find_config_file(&args) {
        cmd = apply_yaml(cmd, &file)?;
    }
    let matches = cmd.try_get_matches_from(args)?;
    let mut values = HashMap::new();
    let mut dump = ConfigDump::default();
    for (spec, scope) in configs {
        let module = module_name(&scopes[*scope].path).to_string();
        let ovr = overrides
            .get(&spec.type_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let (v, json) = (spec.extract)(&matches, ovr).map_err(|reason| HiveError::Config {
            type_name: spec.type_name.to_string(),
            module: module.clone(),
            reason,
        })?;
        values.insert(spec.type_id, v);
        let key = if scopes[*scope].path.is_empty() {
            "root".to_string()
        } else {
            module
        };
        match (dump.0.get_mut(&key), json) {
            (Some(serde_json::Value::Object(existing)), serde_json::Value::Object(new)) => {
                existing.extend(new)
            }
            (_, json) => {
                dump.0.insert(key, json);
            }
        }
    }
    Ok(ParsedConfigs { values, dump })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn env_names_and_config_file_lookup() {
        assert_eq!(env_name("state-dir"), "CILIUM_STATE_DIR");
        assert_eq!(
            find_config_file(&args(&["a", "--config", "/x.yaml"])).as_deref(),
            Some("/x.yaml")
        );
        assert_eq!(
            find_config_file(&args(&["a", "--config=/y.yaml"])).as_deref(),
            Some("/y.yaml")
        );
        assert_eq!(
            find_config_file(&args(&["a", "--", "--config", "/z"])),
            None
        );
    }

    #[test]
    fn yaml_must_be_a_mapping_of_scalars_or_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "- a\n- b\n").expect("write");
        let cmd = Command::new("x").arg(Arg::new("foo").long("foo"));
        let err = apply_yaml(cmd.clone(), &path.to_string_lossy()).expect_err("must fail");
        assert!(
            err.to_string().contains("top level must be a mapping"),
            "{err}"
        );
        std::fs::write(&path, "foo: {a: 1}\n").expect("write");
        let err = apply_yaml(cmd, &path.to_string_lossy()).expect_err("must fail");
        assert!(
            err.to_string()
                .contains("key foo: value must be a scalar or a list"),
            "{err}"
        );
    }
}
