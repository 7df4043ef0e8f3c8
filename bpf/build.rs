//! Compiles the C datapath into a libbpf skeleton and generates the Rust drop-reason
//! list from `lib/drop_reasons.h`. Offline: only UAPI headers from linux-libc-dev and
//! the libbpf headers that libbpf-cargo ships are used.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// The BPF programs, one skeleton each.
const PROGRAMS: &[&str] = &["datapath"];

fn main() {
    if let Err(err) = run() {
        println!("cargo:warning=cilium-bpf build failed: {err}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let lib_dir = manifest.join("lib");

    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", lib_dir.display());
    for entry in
        fs::read_dir(&lib_dir).map_err(|e| format!("reading {}: {e}", lib_dir.display()))?
    {
        let path = entry.map_err(|e| e.to_string())?.path();
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang-19".to_string());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let multiarch = match arch.as_str() {
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };

    for prog in PROGRAMS {
        let src = manifest.join(format!("{prog}.bpf.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let obj = out.join(format!("{prog}.bpf.o"));
        let skel = out.join(format!("{prog}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(&obj)
            .clang(&clang)
            .clang_args([
                format!("-I/usr/include/{multiarch}"),
                format!("-I{}", lib_dir.display()),
                format!("-I{}", manifest.display()),
                "-Wall".to_string(),
                "-Wno-unused-function".to_string(),
            ])
            .build_and_generate(&skel)
            .map_err(|e| format!("compiling {} with {clang}: {e:#}", src.display()))?;
    }

    let header = lib_dir.join("drop_reasons.h");
    let text =
        fs::read_to_string(&header).map_err(|e| format!("reading {}: {e}", header.display()))?;
    let reasons = parse_drop_reasons(&text)?;
    fs::write(out.join("drop_reasons.rs"), render_drop_reasons(&reasons))
        .map_err(|e| format!("writing drop_reasons.rs: {e}"))?;
    Ok(())
}

struct Reason {
    c_name: String,
    code: u8,
    name: String,
    description: String,
}

/// Parses every `X(C_NAME, code, "name", "description")` entry of the X-macro list.
fn parse_drop_reasons(text: &str) -> Result<Vec<Reason>, String> {
    let joined = text.replace("\\\n", " ");
    let start = joined
        .find("#define CILIUM_DROP_REASONS(X)")
        .ok_or("drop_reasons.h: CILIUM_DROP_REASONS(X) not found")?;
    let body = joined[start..].lines().next().unwrap_or_default();
    let mut reasons = Vec::new();
    let mut rest = body.split_once("(X)").map(|(_, r)| r).unwrap_or_default();
    while let Some(pos) = rest.find("X(") {
        rest = &rest[pos + 2..];
        let (c_name, after) = rest.split_once(',').ok_or("drop_reasons.h: missing name")?;
        let (code, after) = after
            .split_once(',')
            .ok_or("drop_reasons.h: missing code")?;
        let (name, after) = quoted(after)?;
        let after = after
            .trim_start()
            .strip_prefix(',')
            .ok_or("drop_reasons.h: missing ','")?;
        let (description, after) = quoted(after)?;
        rest = after;
        let code: u8 = code
            .trim()
            .parse()
            .map_err(|e| format!("drop_reasons.h: bad code {code:?} for {c_name}: {e}"))?;
        if code == 0 {
            return Err(format!(
                "drop_reasons.h: {c_name} uses code 0 (reserved: forwarded)"
            ));
        }
        reasons.push(Reason {
            c_name: c_name.trim().to_string(),
            code,
            name,
            description,
        });
    }
    if reasons.is_empty() {
        return Err("drop_reasons.h: no X(...) entries".into());
    }
    Ok(reasons)
}

fn quoted(s: &str) -> Result<(String, &str), String> {
    let s = s.trim_start();
    let s = s
        .strip_prefix('"')
        .ok_or_else(|| format!("drop_reasons.h: expected string at {s:.20}"))?;
    let end = s.find('"').ok_or("drop_reasons.h: unterminated string")?;
    // Adjacent C string literals ("a" "b") are not used in the list.
    Ok((s[..end].to_string(), &s[end + 1..]))
}

fn camel(c_name: &str) -> String {
    let base = c_name.strip_prefix("DROP_").unwrap_or(c_name);
    base.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}

fn render_drop_reasons(reasons: &[Reason]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/// Why the datapath dropped a packet (generated from `bpf/lib/drop_reasons.h`)."
    );
    let _ = writeln!(
        s,
        "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]"
    );
    let _ = writeln!(s, "#[repr(u8)]");
    let _ = writeln!(s, "pub enum DropReason {{");
    for r in reasons {
        let _ = writeln!(s, "    /// `{}` ({}): {}.", r.c_name, r.code, r.description);
        let _ = writeln!(s, "    {} = {},", camel(&r.c_name), r.code);
    }
    let _ = writeln!(s, "}}\n");
    let _ = writeln!(s, "impl DropReason {{");
    let _ = writeln!(s, "    /// Every reason, in header order.");
    let _ = writeln!(s, "    pub const ALL: &'static [DropReason] = &[");
    for r in reasons {
        let _ = writeln!(s, "        DropReason::{},", camel(&r.c_name));
    }
    let _ = writeln!(s, "    ];\n");
    let table = |field: &dyn Fn(&Reason) -> String, fname: &str, doc: &str| {
        let mut f = String::new();
        let _ = writeln!(f, "    /// {doc}");
        let _ = writeln!(f, "    pub const fn {fname}(self) -> &'static str {{");
        let _ = writeln!(f, "        match self {{");
        for r in reasons {
            let _ = writeln!(
                f,
                "            DropReason::{} => {:?},",
                camel(&r.c_name),
                field(r)
            );
        }
        let _ = writeln!(f, "        }}\n    }}\n");
        f
    };
    s += &table(
        &|r| r.name.clone(),
        "name",
        "Short kebab-case name (metrics label, CLI).",
    );
    s += &table(
        &|r| r.description.clone(),
        "description",
        "One-line human description.",
    );
    s += &table(&|r| r.c_name.clone(), "c_name", "The C enumerator name.");
    let _ = writeln!(
        s,
        "    /// The reason for a code, `None` for 0 (forwarded) or an unknown code."
    );
    let _ = writeln!(
        s,
        "    pub const fn from_code(code: u8) -> Option<DropReason> {{"
    );
    let _ = writeln!(s, "        match code {{");
    for r in reasons {
        let _ = writeln!(
            s,
            "            {} => Some(DropReason::{}),",
            r.code,
            camel(&r.c_name)
        );
    }
    let _ = writeln!(s, "            _ => None,\n        }}\n    }}\n");
    let _ = writeln!(s, "    /// The numeric code used in maps and events.");
    let _ = writeln!(
        s,
        "    pub const fn code(self) -> u8 {{\n        self as u8\n    }}"
    );
    let _ = writeln!(s, "}}");
    s
}
