//! The one error type of the hive crate.

use std::time::Duration;

/// Everything that can go wrong while building, populating, starting or stopping a hive.
#[derive(Debug, thiserror::Error)]
pub enum HiveError {
    /// A module id does not match `^[a-z][a-z0-9_-]{1,30}$`.
    #[error(
        "module at {location}: invalid module id {id:?}; use 2-31 chars of [a-z0-9_-] starting with a letter"
    )]
    InvalidModuleId {
        /// The offending id.
        id: String,
        /// file:line of the `Module::new` call.
        location: String,
    },

    /// A constructor or invoke needs a type that no visible provider supplies.
    #[error(
        "{cell} at {location} in module {module} needs {needed} but nothing provides it; add a Provide for it (a ProvidePrivate in another module is not visible here)"
    )]
    MissingDependency {
        /// What needs it, e.g. "constructor of Foo" or "invoke".
        cell: String,
        /// file:line of the registration.
        location: String,
        /// Module path of the registration.
        module: String,
        /// Type name of the missing dependency.
        needed: String,
    },

    /// Two providers supply the same type in overlapping scopes.
    #[error(
        "{type_name} is provided twice: by the cell at {first} and by the cell at {second}; remove one of them"
    )]
    DuplicateProvider {
        /// Type name provided twice.
        type_name: String,
        /// "file:line in module x" of the first provider.
        first: String,
        /// "file:line in module y" of the second provider.
        second: String,
    },

    /// Constructors depend on each other in a cycle.
    #[error("dependency cycle: {chain}; break it with an Option<Arc<T>> or a lifecycle hook")]
    Cycle {
        /// The chain of types with their registrations.
        chain: String,
    },

    /// Two config structs declare the same flag.
    #[error(
        "flag --{flag} is declared by config {first} and by config {second}; rename one of them"
    )]
    DuplicateFlag {
        /// The flag name.
        flag: String,
        /// "Type at file:line in module x" of the first config.
        first: String,
        /// "Type at file:line in module y" of the second config.
        second: String,
    },

    /// The same config type is registered twice.
    #[error("config {type_name} is registered twice: at {first} and at {second}; keep one")]
    DuplicateConfig {
        /// The config type name.
        type_name: String,
        /// First registration.
        first: String,
        /// Second registration.
        second: String,
    },

    /// The YAML config file could not be read or parsed.
    #[error("config file {file}: {reason}; fix the file or drop --config")]
    ConfigFile {
        /// The file path.
        file: String,
        /// What went wrong.
        reason: String,
    },

    /// The YAML config file has a key that no registered config declares.
    #[error(
        "config file {file}: unknown key {key:?}; no registered config has a flag --{key} (check the spelling, keys are flag names)"
    )]
    UnknownConfigKey {
        /// The unknown key.
        key: String,
        /// The file path.
        file: String,
    },

    /// Command line, environment or file values did not parse (also --help and --version).
    #[error("{0}")]
    Cli(#[from] clap::Error),

    /// A config struct could not be extracted or serialized.
    #[error("config {type_name} in module {module}: {reason}")]
    Config {
        /// The config type name.
        type_name: String,
        /// Module path of the registration.
        module: String,
        /// What went wrong.
        reason: String,
    },

    /// A constructor returned an error.
    #[error("constructor of {type_name} at {location} in module {module} failed: {cause:#}")]
    Constructor {
        /// Type being constructed.
        type_name: String,
        /// file:line of the Provide.
        location: String,
        /// Module path.
        module: String,
        /// The constructor's error.
        cause: anyhow::Error,
    },

    /// An invoke function returned an error.
    #[error("invoke at {location} in module {module} failed: {cause:#}")]
    Invoke {
        /// file:line of the Invoke.
        location: String,
        /// Module path.
        module: String,
        /// The invoke's error.
        cause: anyhow::Error,
    },

    /// A start hook failed; the hooks already started were stopped again.
    #[error("start hook {hook} in module {module} failed: {cause:#}")]
    StartHook {
        /// Hook name.
        hook: String,
        /// Module path.
        module: String,
        /// The hook's error.
        cause: anyhow::Error,
    },

    /// A hook did not finish within its timeout.
    #[error(
        "{phase} hook {hook} in module {module} did not finish within {timeout:?}; it is stuck or the timeout is too short"
    )]
    HookTimeout {
        /// "start" or "stop".
        phase: &'static str,
        /// Hook name.
        hook: String,
        /// Module path.
        module: String,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// One or more stop hooks failed (all hooks were still given the chance to stop).
    #[error("stopping the hive failed: {}", .0.join("; "))]
    Stop(Vec<String>),

    /// A cell asked the hive to shut down because of an error.
    #[error("shutdown requested: {0:#}")]
    Shutdown(anyhow::Error),

    /// The hive was used in the wrong state (e.g. started before populate).
    #[error("hive is {state}, cannot {action}")]
    State {
        /// The current state.
        state: &'static str,
        /// What was attempted.
        action: &'static str,
    },

    /// A built-in metric could not be registered.
    #[error("registering hive metrics: {0}")]
    Metrics(#[from] prometheus::Error),

    /// Installing signal handlers failed.
    #[error("installing signal handler: {0}")]
    Signal(#[from] std::io::Error),
}
