//! Dependency injection: resolution, laziness, validation errors, private scopes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hive::{Group, Hive, HiveError, Invoke, Module, ModuleId, Provide, ProvidePrivate};

struct A(u32);
struct B(u32);
struct C(u32);
struct Unused;
struct Missing;

fn ok<T>(v: T) -> anyhow::Result<T> {
    Ok(v)
}

#[test]
fn resolves_by_type_lazily_and_once() {
    let built = Arc::new(AtomicUsize::new(0));
    let unused_built = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let (b1, u1, s1, s2) = (
        built.clone(),
        unused_built.clone(),
        seen.clone(),
        seen.clone(),
    );
    let hive = Hive::new(vec![Module::new(
        "agent",
        "test agent",
        vec![
            Provide::new(move || {
                b1.fetch_add(1, Ordering::SeqCst);
                ok(A(1))
            }),
            Provide::new(|a: Arc<A>| ok(B(a.0 + 1))),
            Provide::new(|a: Arc<A>, b: Arc<B>| ok(C(a.0 + b.0))),
            Provide::new(move || {
                u1.fetch_add(1, Ordering::SeqCst);
                ok(Unused)
            }),
            Invoke::new(move |c: Arc<C>| {
                s1.store(c.0 as usize, Ordering::SeqCst);
                ok(())
            }),
            Invoke::new(move |_a: Arc<A>, m: ModuleId, none: Option<Arc<Missing>>| {
                assert_eq!(m.path, "agent");
                assert!(none.is_none());
                s2.fetch_add(100, Ordering::SeqCst);
                ok(())
            }),
        ],
    )]);
    hive.populate().expect("populate");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        103,
        "C = A + B = 1 + 2, then the second invoke"
    );
    assert_eq!(built.load(Ordering::SeqCst), 1, "A is memoized");
    assert_eq!(
        unused_built.load(Ordering::SeqCst),
        0,
        "unused providers are lazy"
    );
    assert_eq!(hive.get::<C>().expect("get").map(|c| c.0), Some(3));
}

#[test]
fn missing_dependency_names_cell_module_and_line() {
    let (inv, line) = (Invoke::new(|_m: Arc<Missing>| ok(())), line!());
    let hive = Hive::new(vec![Module::new(
        "agent",
        "a",
        vec![Module::new("api", "b", vec![inv])],
    )]);
    let err = hive.populate().expect_err("must fail").to_string();
    assert!(err.contains(&format!("{}:{line}", file!())), "{err}");
    assert!(err.contains("in module agent.api"), "{err}");
    assert!(
        err.contains("needs Arc<di::Missing> but nothing provides it"),
        "{err}"
    );
}

#[test]
fn missing_dependency_of_constructor_is_found_without_running_anything() {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let (p, line) = (Provide::new(|_m: Arc<Missing>| ok(A(0))), line!());
    let hive = Hive::new(vec![
        Provide::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
            ok(B(0))
        }),
        p,
        Invoke::new(|_b: Arc<B>| ok(())),
    ]);
    let err = hive.populate().expect_err("must fail");
    assert!(matches!(err, HiveError::MissingDependency { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("constructor of di::A at {}:{line}", file!())),
        "{msg}"
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "validation happens before any constructor runs"
    );
}

#[test]
fn cycle_is_reported_with_locations() {
    let (pa, la) = (Provide::new(|_b: Arc<B>| ok(A(0))), line!());
    let (pb, lb) = (Provide::new(|_c: Arc<C>| ok(B(0))), line!());
    let pc = Provide::new(|_a: Arc<A>| ok(C(0)));
    let hive = Hive::new(vec![Module::new("agent", "a", vec![pa, pb, pc])]);
    let err = hive.populate().expect_err("must fail");
    assert!(matches!(err, HiveError::Cycle { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:{la}", file!())), "{msg}");
    assert!(msg.contains(&format!("{}:{lb}", file!())), "{msg}");
    assert!(msg.contains("di::C"), "{msg}");
}

#[test]
fn duplicate_provider_names_both_registrations() {
    let (p1, l1) = (Provide::new(|| ok(A(1))), line!());
    let (p2, l2) = (Provide::new(|| ok(A(2))), line!());
    let hive = Hive::new(vec![
        Module::new("one", "", vec![p1]),
        Module::new("two", "", vec![p2]),
    ]);
    let msg = hive.populate().expect_err("must fail").to_string();
    assert!(msg.contains("di::A is provided twice"), "{msg}");
    assert!(
        msg.contains(&format!("{}:{l1} in module one", file!())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}:{l2} in module two", file!())),
        "{msg}"
    );
}

#[test]
fn private_providers_are_visible_only_inside_their_module() {
    let inside = Hive::new(vec![Module::new(
        "one",
        "",
        vec![
            ProvidePrivate::new(|| ok(A(7))),
            Module::new(
                "child",
                "",
                vec![Invoke::new(|a: Arc<A>| {
                    assert_eq!(a.0, 7);
                    ok(())
                })],
            ),
        ],
    )]);
    inside
        .populate()
        .expect("child sees parent's private provider");

    let outside = Hive::new(vec![
        Module::new("one", "", vec![ProvidePrivate::new(|| ok(A(7)))]),
        Module::new("two", "", vec![Invoke::new(|_a: Arc<A>| ok(()))]),
    ]);
    let msg = outside.populate().expect_err("must fail").to_string();
    assert!(msg.contains("in module two needs Arc<di::A>"), "{msg}");

    // Each module may have its own private A.
    let two_private = Hive::new(vec![
        Module::new(
            "one",
            "",
            vec![
                ProvidePrivate::new(|| ok(A(1))),
                Invoke::new(|a: Arc<A>| {
                    assert_eq!(a.0, 1);
                    ok(())
                }),
            ],
        ),
        Module::new(
            "two",
            "",
            vec![
                ProvidePrivate::new(|| ok(A(2))),
                Invoke::new(|a: Arc<A>| {
                    assert_eq!(a.0, 2);
                    ok(())
                }),
            ],
        ),
    ]);
    two_private.populate().expect("separate private scopes");
}

#[test]
fn invalid_module_id_is_rejected() {
    let (m, line) = (Module::new("Agent", "bad", vec![]), line!());
    let msg = Hive::new(vec![m])
        .populate()
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("invalid module id \"Agent\""), "{msg}");
    assert!(msg.contains(&format!("{}:{line}", file!())), "{msg}");
}

#[test]
fn constructor_and_invoke_errors_name_their_cell() {
    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct DiskFull;
    fn new_a() -> Result<A, DiskFull> {
        Err(DiskFull)
    }
    let (p, line) = (Provide::new(|| Ok(new_a()?)), line!());
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![p, Invoke::new(|_a: Arc<A>| ok(()))],
    )]);
    let msg = hive.populate().expect_err("must fail").to_string();
    assert!(
        msg.contains(&format!(
            "constructor of di::A at {}:{line} in module agent failed: disk full",
            file!()
        )),
        "{msg}"
    );

    let (inv, line) = (Invoke::new(|| Err(anyhow::anyhow!("boom"))), line!());
    let msg = Hive::new(vec![Group::new(vec![inv])])
        .populate()
        .expect_err("must fail")
        .to_string();
    assert!(
        msg.contains(&format!("invoke at {}:{line}", file!())),
        "{msg}"
    );
    assert!(msg.contains("boom"), "{msg}");
}

#[test]
fn builtins_and_introspection() {
    let hive = Hive::new(vec![Module::new(
        "agent",
        "the agent",
        vec![
            Provide::new(|| ok(A(1))),
            Provide::new(|_a: Arc<A>| ok(B(1))),
            Invoke::new(
                |_r: Arc<prometheus::Registry>,
                 _d: Arc<hive::ConfigDump>,
                 _h: Arc<hive::HealthView>| ok(()),
            ),
            Invoke::new(|_b: Arc<B>| ok(())),
        ],
    )]);
    let dot = hive.dot().expect("dot");
    assert!(
        dot.contains("di::A") && dot.contains("di::B") && dot.contains("->"),
        "{dot}"
    );
    let tree = hive.describe();
    assert!(
        tree.contains("agent (the agent)") && tree.contains("di::B"),
        "{tree}"
    );
    hive.populate().expect("populate");
    assert!(matches!(hive.populate(), Err(HiveError::State { .. })));
}

/// The shape the daemon uses: closures returning plain `Ok(..)` infer their error type.
#[test]
fn daemon_shape_compiles_and_runs() {
    #[derive(clap::Args, serde::Serialize, Clone)]
    struct ApiConfig {
        #[arg(long, default_value = "127.0.0.1:9234")]
        shape_api_listen: String,
    }
    struct ApiServer(String);
    fn new_api_server(cfg: Arc<ApiConfig>) -> anyhow::Result<ApiServer> {
        Ok(ApiServer(cfg.shape_api_listen.clone()))
    }
    let hive = Hive::new(vec![Module::new(
        "agent",
        "the agent",
        vec![
            hive::Config::<ApiConfig>::new(),
            Provide::new(new_api_server),
            Invoke::new(|s: Arc<ApiServer>| {
                assert_eq!(s.0, "127.0.0.1:9234");
                Ok(())
            }),
        ],
    )]);
    hive.populate_with_args(["agent"]).expect("populate");
    assert!(hive.get::<ApiServer>().expect("get").is_some());
}
