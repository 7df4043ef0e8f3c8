//! The dependency graph: scopes, providers and invokes collected from the cells, validated
//! before anything runs, then resolved lazily.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::cell::Location;
use crate::config::ConfigSpec;
use crate::error::HiveError;
use crate::health::Health;
use crate::hive::Shutdowner;
use crate::inject::{AnyArc, Dependency, ErasedCtor, ModuleId};
use crate::job::JobGroup;
use crate::lifecycle::Lifecycle;

/// Index of a scope (module) in the graph; 0 is the root.
pub(crate) type ScopeId = usize;

/// A module scope.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) parent: Option<ScopeId>,
    pub(crate) id: String,
    pub(crate) path: String,
}

/// A registered constructor.
#[derive(Clone)]
pub(crate) struct ProviderSpec {
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) deps: Vec<Dependency>,
    pub(crate) ctor: ErasedCtor,
    pub(crate) private: bool,
    pub(crate) location: Location,
}

/// A registered invoke.
#[derive(Clone)]
pub(crate) struct InvokeSpec {
    pub(crate) deps: Vec<Dependency>,
    pub(crate) ctor: ErasedCtor,
    pub(crate) location: Location,
}

/// Collects the registrations of all cells. Passed to [`crate::Cell::register`].
pub struct Builder {
    pub(crate) scopes: Vec<Scope>,
    current: ScopeId,
    pub(crate) providers: Vec<(ProviderSpec, ScopeId)>,
    pub(crate) invokes: Vec<(InvokeSpec, ScopeId)>,
    pub(crate) configs: Vec<(ConfigSpec, ScopeId)>,
    pub(crate) errors: Vec<HiveError>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        let root = Scope {
            parent: None,
            id: String::new(),
            path: String::new(),
        };
        Builder {
            scopes: vec![root],
            current: 0,
            providers: Vec::new(),
            invokes: Vec::new(),
            configs: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn enter_module(&mut self, id: &str) -> ScopeId {
        let parent = &self.scopes[self.current];
        let path = if parent.path.is_empty() {
            id.to_string()
        } else {
            format!("{}.{id}", parent.path)
        };
        self.scopes.push(Scope {
            parent: Some(self.current),
            id: id.to_string(),
            path,
        });
        let prev = self.current;
        self.current = self.scopes.len() - 1;
        prev
    }

    pub(crate) fn exit_module(&mut self, prev: ScopeId) {
        self.current = prev;
    }

    pub(crate) fn provide(&mut self, spec: ProviderSpec) {
        self.providers.push((spec, self.current));
    }

    pub(crate) fn invoke(&mut self, spec: InvokeSpec) {
        self.invokes.push((spec, self.current));
    }

    pub(crate) fn config(&mut self, spec: ConfigSpec) {
        self.configs.push((spec, self.current));
    }

    pub(crate) fn error(&mut self, e: HiveError) {
        self.errors.push(e);
    }
}

/// Display name of a module path (the root has an empty path).
pub(crate) fn module_name(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

/// The validated graph.
pub(crate) struct Graph {
    pub(crate) scopes: Vec<Scope>,
    pub(crate) providers: Vec<(ProviderSpec, ScopeId)>,
    pub(crate) invokes: Vec<(InvokeSpec, ScopeId)>,
    public: HashMap<TypeId, usize>,
    private: HashMap<(ScopeId, TypeId), usize>,
}

impl Graph {
    /// Validate the registrations: module ids, duplicates, missing types and cycles.
    pub(crate) fn build(b: Builder) -> Result<Graph, HiveError> {
        let Builder {
            scopes,
            providers,
            invokes,
            mut errors,
            ..
        } = b;
        if !errors.is_empty() {
            return Err(errors.remove(0));
        }
        let mut g = Graph {
            scopes,
            providers,
            invokes,
            public: HashMap::new(),
            private: HashMap::new(),
        };
        for (i, (spec, scope)) in g.providers.iter().enumerate() {
            let prev = if spec.private {
                g.private.insert((*scope, spec.type_id), i)
            } else {
                g.public.insert(spec.type_id, i)
            };
            if let Some(prev) = prev {
                return Err(g.duplicate(prev, i));
            }
        }
        // A private provider must not shadow a public one or a private one in an ancestor.
        for (&(scope, tid), &i) in &g.private {
            if let Some(&p) = g.public.get(&tid) {
                return Err(g.duplicate(p, i));
            }
            let mut s = g.scopes[scope].parent;
            while let Some(sc) = s {
                if let Some(&p) = g.private.get(&(sc, tid)) {
                    return Err(g.duplicate(p, i));
                }
                s = g.scopes[sc].parent;
            }
        }
        for (spec, scope) in &g.providers {
            g.check_deps(
                &spec.deps,
                *scope,
                &format!("constructor of {}", spec.type_name),
                spec.location,
            )?;
        }
        for (spec, scope) in &g.invokes {
            g.check_deps(&spec.deps, *scope, "invoke", spec.location)?;
        }
        g.check_cycles()?;
        Ok(g)
    }

    fn where_(&self, i: usize) -> String {
        let (spec, scope) = &self.providers[i];
        format!(
            "{} in module {}",
            spec.location,
            module_name(&self.scopes[*scope].path)
        )
    }

    fn duplicate(&self, a: usize, b: usize) -> HiveError {
        HiveError::DuplicateProvider {
            type_name: self.providers[a].0.type_name.to_string(),
            first: self.where_(a.min(b)),
            second: self.where_(a.max(b)),
        }
    }

    /// The provider of `tid` visible from `scope`.
    pub(crate) fn lookup(&self, scope: ScopeId, tid: TypeId) -> Option<usize> {
        let mut s = Some(scope);
        while let Some(sc) = s {
            if let Some(&i) = self.private.get(&(sc, tid)) {
                return Some(i);
            }
            s = self.scopes[sc].parent;
        }
        self.public.get(&tid).copied()
    }

    fn check_deps(
        &self,
        deps: &[Dependency],
        scope: ScopeId,
        cell: &str,
        location: Location,
    ) -> Result<(), HiveError> {
        for d in deps {
            if let Dependency::Required { type_id, .. } = d
                && self.lookup(scope, *type_id).is_none()
            {
                return Err(HiveError::MissingDependency {
                    cell: cell.to_string(),
                    location: location.to_string(),
                    module: module_name(&self.scopes[scope].path).to_string(),
                    needed: d.describe(),
                });
            }
        }
        Ok(())
    }

    /// Provider indices a provider depends on.
    fn edges(&self, i: usize) -> Vec<usize> {
        let (spec, scope) = &self.providers[i];
        spec.deps
            .iter()
            .filter_map(|d| match d {
                Dependency::Required { type_id, .. } | Dependency::Optional { type_id, .. } => {
                    self.lookup(*scope, *type_id)
                }
                Dependency::Builtin(_) => None,
            })
            .collect()
    }

    fn check_cycles(&self) -> Result<(), HiveError> {
        // 0 = unvisited, 1 = on stack, 2 = done
        let mut mark = vec![0u8; self.providers.len()];
        let mut stack = Vec::new();
        for start in 0..self.providers.len() {
            if mark[start] == 0 {
                self.dfs(start, &mut mark, &mut stack)?;
            }
        }
        Ok(())
    }

    fn dfs(&self, i: usize, mark: &mut [u8], stack: &mut Vec<usize>) -> Result<(), HiveError> {
        mark[i] = 1;
        stack.push(i);
        for j in self.edges(i) {
            if mark[j] == 1 {
                let pos = stack.iter().position(|&x| x == j).unwrap_or(0);
                let mut chain: Vec<String> = stack[pos..]
                    .iter()
                    .map(|&k| {
                        format!(
                            "{} (cell at {})",
                            self.providers[k].0.type_name,
                            self.where_(k)
                        )
                    })
                    .collect();
                chain.push(self.providers[j].0.type_name.to_string());
                return Err(HiveError::Cycle {
                    chain: chain.join(" -> "),
                });
            }
            if mark[j] == 0 {
                self.dfs(j, mark, stack)?;
            }
        }
        stack.pop();
        mark[i] = 2;
        Ok(())
    }

    /// The graph in graphviz dot format: providers and invokes with their dependencies.
    pub(crate) fn dot(&self) -> String {
        let mut s = String::from("digraph hive {\n  rankdir=LR;\n");
        for (i, (spec, scope)) in self.providers.iter().enumerate() {
            let _ = writeln!(
                s,
                "  p{i} [shape=box,label=\"{}\\n{}\\n{}\"];",
                spec.type_name,
                module_name(&self.scopes[*scope].path),
                spec.location
            );
            for j in self.edges(i) {
                let _ = writeln!(s, "  p{i} -> p{j};");
            }
        }
        for (k, (spec, scope)) in self.invokes.iter().enumerate() {
            let _ = writeln!(
                s,
                "  i{k} [shape=ellipse,label=\"invoke\\n{}\\n{}\"];",
                module_name(&self.scopes[*scope].path),
                spec.location
            );
            for d in &spec.deps {
                if let Dependency::Required { type_id, .. } | Dependency::Optional { type_id, .. } =
                    d
                    && let Some(j) = self.lookup(*scope, *type_id)
                {
                    let _ = writeln!(s, "  i{k} -> p{j};");
                }
            }
        }
        s.push_str("}\n");
        s
    }
}

/// Shared runtime services handed to built-in extractors.
#[derive(Clone)]
pub(crate) struct Runtime {
    pub(crate) lifecycle: Lifecycle,
    pub(crate) health: Health,
    pub(crate) shutdowner: Shutdowner,
}

/// Mutable resolution state: memoized instances and per-module services.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) instances: Vec<Option<AnyArc>>,
    pub(crate) job_groups: HashMap<ScopeId, JobGroup>,
    pub(crate) config_values: HashMap<TypeId, AnyArc>,
}

/// The context in which constructor parameters are resolved.
pub struct ResolveCtx<'a> {
    pub(crate) graph: &'a Graph,
    pub(crate) state: &'a mut State,
    pub(crate) rt: &'a Runtime,
    pub(crate) scope: ScopeId,
}

impl ResolveCtx<'_> {
    /// Get (constructing if needed) the `Arc<T>` visible from the current scope.
    pub fn get<T: Send + Sync + 'static>(&mut self) -> Result<Option<Arc<T>>, HiveError> {
        let Some(i) = self.graph.lookup(self.scope, TypeId::of::<T>()) else {
            return Ok(None);
        };
        let any = self.construct(i)?;
        Ok(any.downcast::<T>().ok())
    }

    pub(crate) fn construct(&mut self, i: usize) -> Result<AnyArc, HiveError> {
        if self.state.instances.len() < self.graph.providers.len() {
            self.state
                .instances
                .resize(self.graph.providers.len(), None);
        }
        if let Some(v) = &self.state.instances[i] {
            return Ok(v.clone());
        }
        let (spec, scope) = &self.graph.providers[i];
        let mut child = ResolveCtx {
            graph: self.graph,
            state: &mut *self.state,
            rt: self.rt,
            scope: *scope,
        };
        let started = std::time::Instant::now();
        let v = (spec.ctor)(&mut child)?.map_err(|cause| HiveError::Constructor {
            type_name: spec.type_name.to_string(),
            location: spec.location.to_string(),
            module: module_name(&self.graph.scopes[*scope].path).to_string(),
            cause,
        })?;
        tracing::debug!(
            type_name = spec.type_name,
            module = module_name(&self.graph.scopes[*scope].path),
            duration_us = started.elapsed().as_micros() as u64,
            "constructed"
        );
        self.state.instances[i] = Some(v.clone());
        Ok(v)
    }

    /// The module the value is being resolved for.
    pub fn module_id(&self) -> ModuleId {
        let s = &self.graph.scopes[self.scope];
        ModuleId {
            id: s.id.clone(),
            path: s.path.clone(),
        }
    }

    /// The module path of the current scope (empty at the root).
    pub fn module_path(&self) -> &str {
        &self.graph.scopes[self.scope].path
    }

    pub(crate) fn config_value(&self, tid: TypeId) -> Option<AnyArc> {
        self.state.config_values.get(&tid).cloned()
    }

    /// The module-scoped lifecycle.
    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.rt.lifecycle.for_module(self.module_path())
    }

    /// The module-scoped health reporter.
    pub(crate) fn health(&self) -> Health {
        self.rt.health.for_module(self.module_path())
    }

    pub(crate) fn shutdowner(&self) -> Shutdowner {
        self.rt.shutdowner.clone()
    }

    /// The module's job group (one per module, created on first use).
    pub(crate) fn job_group(&mut self) -> JobGroup {
        if let Some(g) = self.state.job_groups.get(&self.scope) {
            return g.clone();
        }
        let g = JobGroup::new(self.lifecycle(), self.health(), self.shutdowner());
        self.state.job_groups.insert(self.scope, g.clone());
        g
    }
}
