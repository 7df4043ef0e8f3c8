//! hive: the application framework of the agent. Owns cells (modules, providers, invokes,
//! configs), dependency injection by type with whole-graph validation before anything runs,
//! per-cell configuration (flags, `CILIUM_*` env, YAML), the start/stop lifecycle, module
//! health (kept in a statedb `health` table), background jobs and hook metrics.
//!
//! See README.md for a tour.

mod cell;
mod config;
mod error;
mod graph;
mod health;
mod health_db;
mod hive;
mod inject;
mod job;
mod lifecycle;

pub use cell::{
    BoxCell, Cell, Group, Invoke, Location, Module, Provide, ProvidePrivate, valid_module_id,
};
pub use config::{CONFIG_FLAG, Config, ConfigDump, ConfigStruct, ENV_PREFIX, env_name};
pub use error::HiveError;
pub use graph::{Builder, ResolveCtx};
pub use health::{Health, HealthStatus, HealthStore, Level, MemoryHealthStore};
pub use health_db::{HEALTH_ID_INDEX, HEALTH_TABLE, StatedbHealthStore};
pub use hive::{HealthView, Hive, Shutdowner};
pub use inject::{Constructor, CtorResult, Dependency, Inject, ModuleId};
pub use job::{Backoff, Job, JobGroup, OneShot, Timer, Trigger};
pub use lifecycle::{FnHook, Hook, HookContext, Lifecycle, LifecycleOptions, LifecycleState};

/// Re-exported so cells need not depend on these crates directly for the common types.
pub use {
    anyhow, async_trait::async_trait, prometheus, statedb, tokio_util::sync::CancellationToken,
};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
