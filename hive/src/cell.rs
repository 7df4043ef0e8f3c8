//! Cells: the building blocks a hive is assembled from.
//!
//! A cell registers itself into a [`Builder`] (providers, invokes, configs, modules); the
//! hive then validates and runs the resulting graph. Every registration function is
//! `#[track_caller]` so errors name the file:line that registered the cell.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use crate::error::HiveError;
use crate::graph::{Builder, InvokeSpec, ProviderSpec};
use crate::inject::{AnyArc, Constructor, erase_invoke, erase_provider};

/// The file:line where a cell was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Source file.
    pub file: &'static str,
    /// Line number.
    pub line: u32,
}

impl Location {
    /// The caller's location (use from `#[track_caller]` functions).
    #[track_caller]
    pub fn caller() -> Self {
        let l = std::panic::Location::caller();
        Location {
            file: l.file(),
            line: l.line(),
        }
    }

    /// A location for cells the hive adds itself.
    pub(crate) const fn builtin() -> Self {
        Location {
            file: "<hive built-in>",
            line: 0,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A unit of a hive: registers providers, invokes, configs or child cells.
pub trait Cell: Send + Sync {
    /// Register this cell into the builder.
    fn register(&self, b: &mut Builder);
    /// Append a human-readable description, indented by `depth`.
    fn describe(&self, depth: usize, out: &mut String);
}

/// A boxed cell, the common type of every cell constructor.
pub type BoxCell = Box<dyn Cell>;

fn indent(depth: usize) -> String {
    "  ".repeat(depth)
}

/// A named scope of cells. Gives its cells a module path such as `agent.ipam`,
/// a module-tagged Lifecycle, Health and JobGroup, and a private scope for `ProvidePrivate`.
pub struct Module {
    id: String,
    description: String,
    cells: Vec<BoxCell>,
    location: Location,
}

/// Whether `id` matches `^[a-z][a-z0-9_-]{1,30}$`.
pub fn valid_module_id(id: &str) -> bool {
    let b = id.as_bytes();
    (2..=31).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

impl Module {
    /// A module with an id (`^[a-z][a-z0-9_-]{1,30}$`), a one-line description and its cells.
    #[track_caller]
    #[expect(
        clippy::new_ret_no_self,
        reason = "cells are used as BoxCell in vec![]"
    )]
    pub fn new(id: &str, description: &str, cells: Vec<BoxCell>) -> BoxCell {
        Box::new(Module {
            id: id.to_string(),
            description: description.to_string(),
            cells,
            location: Location::caller(),
        })
    }
}

impl Cell for Module {
    fn register(&self, b: &mut Builder) {
        if !valid_module_id(&self.id) {
            b.error(HiveError::InvalidModuleId {
                id: self.id.clone(),
                location: self.location.to_string(),
            });
            return;
        }
        let prev = b.enter_module(&self.id);
        for c in &self.cells {
            c.register(b);
        }
        b.exit_module(prev);
    }

    fn describe(&self, depth: usize, out: &mut String) {
        out.push_str(&format!(
            "{}Ⓜ️ {} ({}):\n",
            indent(depth),
            self.id,
            self.description
        ));
        for c in &self.cells {
            c.describe(depth + 1, out);
        }
    }
}

/// A list of cells without a scope of its own.
pub struct Group {
    cells: Vec<BoxCell>,
}

impl Group {
    /// Group cells together (e.g. to export one `CELL` value from a crate).
    #[expect(
        clippy::new_ret_no_self,
        reason = "cells are used as BoxCell in vec![]"
    )]
    pub fn new(cells: Vec<BoxCell>) -> BoxCell {
        Box::new(Group { cells })
    }
}

impl Cell for Group {
    fn register(&self, b: &mut Builder) {
        for c in &self.cells {
            c.register(b);
        }
    }
    fn describe(&self, depth: usize, out: &mut String) {
        for c in &self.cells {
            c.describe(depth, out);
        }
    }
}

struct ProvideCell {
    spec: ProviderSpec,
}

impl Cell for ProvideCell {
    fn register(&self, b: &mut Builder) {
        b.provide(self.spec.clone());
    }
    fn describe(&self, depth: usize, out: &mut String) {
        let deps: Vec<String> = self.spec.deps.iter().map(|d| d.describe()).collect();
        out.push_str(&format!(
            "{}🚧{} {}: {} <- [{}]\n",
            indent(depth),
            if self.spec.private { "🔒" } else { "" },
            self.spec.location,
            self.spec.type_name,
            deps.join(", ")
        ));
    }
}

/// Registers a lazy, memoized constructor visible everywhere in the hive.
///
/// The constructor is `Fn(A1, .., An) -> Result<T, E>`; its value is stored and injected as
/// `Arc<T>`. It runs only if an invoke (directly or indirectly) needs `Arc<T>`.
pub struct Provide;

impl Provide {
    /// Register constructor `f` providing `Arc<Out>`.
    #[track_caller]
    #[expect(
        clippy::new_ret_no_self,
        reason = "cells are used as BoxCell in vec![]"
    )]
    pub fn new<F, Args, Out>(f: F) -> BoxCell
    where
        F: Constructor<Args, Out>,
        Out: Send + Sync + 'static,
    {
        provide_cell::<F, Args, Out>(f, false, Location::caller())
    }

    /// Register an already constructed value, injected as `Arc<T>`.
    #[track_caller]
    pub fn value<T: Send + Sync + 'static>(value: T) -> BoxCell {
        Self::arc_at(Arc::new(value), Location::caller())
    }

    /// Register an already shared value, injected as this same `Arc<T>`.
    #[track_caller]
    pub fn arc<T: Send + Sync + 'static>(value: Arc<T>) -> BoxCell {
        Self::arc_at(value, Location::caller())
    }

    pub(crate) fn arc_at<T: Send + Sync + 'static>(value: Arc<T>, location: Location) -> BoxCell {
        let value: AnyArc = value;
        Box::new(ProvideCell {
            spec: ProviderSpec {
                type_id: TypeId::of::<T>(),
                type_name: std::any::type_name::<T>(),
                deps: Vec::new(),
                ctor: Arc::new(move |_| Ok(Ok(value.clone()))),
                private: false,
                location,
            },
        })
    }
}

/// Like [`Provide`], but the type is visible only in the enclosing module and its children.
pub struct ProvidePrivate;

impl ProvidePrivate {
    /// Register private constructor `f` providing `Arc<Out>`.
    #[track_caller]
    #[expect(
        clippy::new_ret_no_self,
        reason = "cells are used as BoxCell in vec![]"
    )]
    pub fn new<F, Args, Out>(f: F) -> BoxCell
    where
        F: Constructor<Args, Out>,
        Out: Send + Sync + 'static,
    {
        provide_cell::<F, Args, Out>(f, true, Location::caller())
    }
}

fn provide_cell<F, Args, Out>(f: F, private: bool, location: Location) -> BoxCell
where
    F: Constructor<Args, Out>,
    Out: Send + Sync + 'static,
{
    Box::new(ProvideCell {
        spec: ProviderSpec {
            type_id: TypeId::of::<Out>(),
            type_name: std::any::type_name::<Out>(),
            deps: F::dependencies(),
            ctor: erase_provider::<F, Args, Out>(f),
            private,
            location,
        },
    })
}

struct InvokeCell {
    spec: InvokeSpec,
}

impl Cell for InvokeCell {
    fn register(&self, b: &mut Builder) {
        b.invoke(self.spec.clone());
    }
    fn describe(&self, depth: usize, out: &mut String) {
        let deps: Vec<String> = self.spec.deps.iter().map(|d| d.describe()).collect();
        out.push_str(&format!(
            "{}🛠️ {}: invoke({})\n",
            indent(depth),
            self.spec.location,
            deps.join(", ")
        ));
    }
}

/// A function run once during populate, in declaration order; this is what instantiates
/// the providers it depends on.
pub struct Invoke;

impl Invoke {
    /// Register invoke `f`: `Fn(A1, .., An) -> Result<(), E>`.
    #[track_caller]
    #[expect(
        clippy::new_ret_no_self,
        reason = "cells are used as BoxCell in vec![]"
    )]
    pub fn new<F, Args>(f: F) -> BoxCell
    where
        F: Constructor<Args, ()>,
    {
        Box::new(InvokeCell {
            spec: InvokeSpec {
                deps: F::dependencies(),
                ctor: erase_invoke::<F, Args>(f),
                location: Location::caller(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_module_id;

    #[test]
    fn module_ids() {
        assert!(valid_module_id("agent"));
        assert!(valid_module_id("l2-announcer_v2"));
        assert!(!valid_module_id("a"));
        assert!(!valid_module_id("Agent"));
        assert!(!valid_module_id("1agent"));
        assert!(!valid_module_id("agent.x"));
        assert!(!valid_module_id(&"a".repeat(32)));
    }
}
