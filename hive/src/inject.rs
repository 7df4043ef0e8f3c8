//! Extractors: how a constructor parameter is obtained from the hive.
//!
//! Every constructor parameter implements [`Inject`]. The trait reports the parameter's
//! [`Dependency`] without running anything, so the whole graph can be validated before any
//! constructor is called, and resolves the value lazily during populate.

use std::any::{Any, TypeId};
use std::sync::Arc;

use crate::error::HiveError;
use crate::graph::ResolveCtx;

/// A type-erased constructed object.
pub(crate) type AnyArc = Arc<dyn Any + Send + Sync>;

/// What a parameter needs from the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// A provided type that must exist in a visible scope.
    Required {
        /// The provided type (`T` for `Arc<T>`).
        type_id: TypeId,
        /// Its name, for errors and introspection.
        type_name: &'static str,
    },
    /// A provided type that may be missing (`Option<Arc<T>>`).
    Optional {
        /// The provided type.
        type_id: TypeId,
        /// Its name.
        type_name: &'static str,
    },
    /// Something the hive always supplies (Lifecycle, Health, ...).
    Builtin(&'static str),
}

impl Dependency {
    /// The dependency for a provided type `T`.
    pub fn required<T: 'static>() -> Self {
        Dependency::Required {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }

    /// Short human-readable form, e.g. `Arc<my_crate::Foo>`.
    pub fn describe(&self) -> String {
        match self {
            Dependency::Required { type_name, .. } => format!("Arc<{type_name}>"),
            Dependency::Optional { type_name, .. } => format!("Option<Arc<{type_name}>>"),
            Dependency::Builtin(name) => (*name).to_string(),
        }
    }
}

/// A value a constructor can take as a parameter.
pub trait Inject: Sized + Send + 'static {
    /// What this parameter needs; must not run anything.
    fn dependency() -> Dependency;
    /// Obtain the value, constructing providers lazily.
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError>;
}

impl<T: Send + Sync + 'static> Inject for Arc<T> {
    fn dependency() -> Dependency {
        Dependency::required::<T>()
    }
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError> {
        ctx.get::<T>()?.ok_or_else(|| HiveError::State {
            state: "populating",
            action: "resolve a type that validation said exists (hive bug)",
        })
    }
}

impl<T: Send + Sync + 'static> Inject for Option<Arc<T>> {
    fn dependency() -> Dependency {
        Dependency::Optional {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError> {
        ctx.get::<T>()
    }
}

/// The id and full path of the module a constructor is registered in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleId {
    /// The module's own id, e.g. `ipam` (empty at the root).
    pub id: String,
    /// The full dotted path, e.g. `agent.ipam` (empty at the root).
    pub path: String,
}

impl Inject for ModuleId {
    fn dependency() -> Dependency {
        Dependency::Builtin("ModuleId")
    }
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError> {
        Ok(ctx.module_id())
    }
}

/// What a constructor may return: `anyhow::Result<Out>`.
///
/// Only this one impl exists on purpose: it lets the compiler infer the error type of
/// closures such as `|s: Arc<Server>| Ok(())` and of `?` inside them. Functions with their
/// own error type are wrapped: `Provide::new(|c: Arc<Cfg>| Ok(new_thing(&c)?))`.
pub trait CtorResult<Out> {
    /// Normalize into an anyhow result.
    fn into_result(self) -> Result<Out, anyhow::Error>;
}

impl<Out> CtorResult<Out> for Result<Out, anyhow::Error> {
    fn into_result(self) -> Result<Out, anyhow::Error> {
        self
    }
}

/// A function whose parameters are all [`Inject`]: constructors and invokes.
///
/// Implemented for `Fn(A1, .., An) -> anyhow::Result<Out>` for n up to 12.
pub trait Constructor<Args, Out>: Send + Sync + 'static {
    /// The dependencies of all parameters, in order.
    fn dependencies() -> Vec<Dependency>;
    /// Resolve the parameters and call the function. The outer error is a resolution
    /// failure (already described), the inner one the function's own error.
    fn call(&self, ctx: &mut ResolveCtx<'_>) -> Result<Result<Out, anyhow::Error>, HiveError>;
}

macro_rules! impl_constructor {
    ($($arg:ident),*) => {
        impl<Func, Res, Out, $($arg,)*> Constructor<($($arg,)*), Out> for Func
        where
            Func: Fn($($arg),*) -> Res + Send + Sync + 'static,
            Res: CtorResult<Out>,
            $($arg: Inject,)*
        {
            fn dependencies() -> Vec<Dependency> {
                vec![$($arg::dependency()),*]
            }
            #[allow(non_snake_case, unused_variables, reason = "macro-generated parameter names")]
            fn call(&self, ctx: &mut ResolveCtx<'_>) -> Result<Result<Out, anyhow::Error>, HiveError> {
                $(let $arg = $arg::resolve(ctx)?;)*
                Ok((self)($($arg),*).into_result())
            }
        }
    };
}

impl_constructor!();
impl_constructor!(A1);
impl_constructor!(A1, A2);
impl_constructor!(A1, A2, A3);
impl_constructor!(A1, A2, A3, A4);
impl_constructor!(A1, A2, A3, A4, A5);
impl_constructor!(A1, A2, A3, A4, A5, A6);
impl_constructor!(A1, A2, A3, A4, A5, A6, A7);
impl_constructor!(A1, A2, A3, A4, A5, A6, A7, A8);
impl_constructor!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
impl_constructor!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
impl_constructor!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
impl_constructor!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);

/// A type-erased constructor as stored in the graph.
pub(crate) type ErasedCtor = Arc<
    dyn Fn(&mut ResolveCtx<'_>) -> Result<Result<AnyArc, anyhow::Error>, HiveError> + Send + Sync,
>;

/// Erase a typed constructor whose output is stored as `Arc<Out>`.
pub(crate) fn erase_provider<F, Args, Out>(f: F) -> ErasedCtor
where
    F: Constructor<Args, Out>,
    Out: Send + Sync + 'static,
{
    Arc::new(move |ctx| Ok(f.call(ctx)?.map(|out| Arc::new(out) as AnyArc)))
}

/// Erase a typed invoke.
pub(crate) fn erase_invoke<F, Args>(f: F) -> ErasedCtor
where
    F: Constructor<Args, ()>,
{
    Arc::new(move |ctx| Ok(f.call(ctx)?.map(|()| Arc::new(()) as AnyArc)))
}
