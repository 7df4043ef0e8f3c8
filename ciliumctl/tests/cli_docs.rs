//! docs/cli.md is the `--help` text of every ciliumctl command and subcommand, generated from the
//! built binary. This test walks the command tree (the `Commands:` section of each help page),
//! renders the page and fails when docs/cli.md differs. Regenerate with `make docs`, i.e.
//! `UPDATE_CLI_DOCS=1 cargo test -p ciliumctl --test cli_docs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The ciliumctl binary cargo built for this test.
const BIN: &str = env!("CARGO_BIN_EXE_ciliumctl");

/// Where the generated page lives.
fn docs_path() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).join("docs/cli.md")
}

/// The `--help` text of the command `path` (empty = the top level). The environment is pinned:
/// clap shows the current value of `CILIUM_SOCKET` in the help, so it is removed.
fn help(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .env_remove("CILIUM_SOCKET")
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert!(
        out.status.success(),
        "`ciliumctl {} --help` failed ({}): {}",
        path.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("help is not UTF-8: {e}"))
}

/// The subcommand names listed in the `Commands:` section of a help text, `help` excluded.
fn subcommands(help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if !in_commands {
            continue;
        }
        if line.trim().is_empty() || !line.starts_with(' ') {
            break;
        }
        // "  name  description": exactly two spaces, then the name.
        let rest = &line[2..];
        if rest.starts_with(' ') {
            continue; // continuation line of a description
        }
        if let Some(name) = rest.split_whitespace().next()
            && name != "help"
        {
            names.push(name.to_string());
        }
    }
    names
}

/// Every command path, depth first in the order the help lists them, with its help text.
fn walk(path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let text = help(&path);
    let children = subcommands(&text);
    out.push((path.clone(), text));
    for c in children {
        let mut p = path.clone();
        p.push(c);
        walk(p, out);
    }
}

/// GitHub's heading anchor for `ciliumctl a b`.
fn anchor(title: &str) -> String {
    title.replace(' ', "-")
}

/// The whole docs/cli.md.
fn render() -> String {
    let mut pages = Vec::new();
    walk(Vec::new(), &mut pages);
    let mut md = String::from(
        "# ciliumctl command reference\n\n\
         <!-- Generated from `ciliumctl <command> --help` by ciliumctl/tests/cli_docs.rs.\n     \
         Do not edit by hand: change the doc comments in ciliumctl/src/ and run `make docs`. -->\n\n\
         Every command talks to the agent over its unix socket (`--socket`, env `CILIUM_SOCKET`,\n\
         default `/var/run/cilium/cilium.sock`) and prints a table, or JSON/YAML with `-o json` /\n\
         `-o yaml`. Both options are global: they work before or after the subcommand.\n\
         For where to start when something does not work, see [troubleshooting.md](troubleshooting.md).\n\n",
    );
    for (path, _) in &pages {
        let title = std::iter::once("ciliumctl")
            .chain(path.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let indent = "  ".repeat(path.len().saturating_sub(1));
        md.push_str(&format!("{indent}- [{title}](#{})\n", anchor(&title)));
    }
    for (path, text) in &pages {
        let title = std::iter::once("ciliumctl")
            .chain(path.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        // Trailing blanks are dropped (clap indents empty lines; editors strip them anyway).
        let body: Vec<&str> = text.trim_end().lines().map(str::trim_end).collect();
        md.push_str(&format!(
            "\n## {title}\n\n```text\n{}\n```\n",
            body.join("\n")
        ));
    }
    md
}

#[test]
fn cli_md_matches_the_help_texts() {
    let want = render();
    let path = docs_path();
    if std::env::var_os("UPDATE_CLI_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let first = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "{} is not the --help text of the built ciliumctl (first difference at line {}: \
             have {:?}, want {:?}).\nRegenerate it with `make docs` \
             (UPDATE_CLI_DOCS=1 cargo test -p ciliumctl --test cli_docs) and commit the result.",
            path.display(),
            first + 1,
            have.lines().nth(first).unwrap_or("<end of file>"),
            want.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn walk_finds_nested_subcommands() {
    let top = help(&[]);
    let names = subcommands(&top);
    for want in ["status", "bpf", "policy", "connectivity", "get"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n == "help"));
    let bpf = subcommands(&help(&["bpf".to_string()]));
    assert!(bpf.iter().any(|n| n == "ct"), "{bpf:?}");
    let ct = subcommands(&help(&["bpf".to_string(), "ct".to_string()]));
    assert_eq!(ct, ["list", "gc"]);
}

#[test]
fn subcommand_parser_reads_only_the_commands_section() {
    let text = "Usage: x <COMMAND>\n\nCommands:\n  one   First\n  two   Second\n  help  Print\n\n\
                Options:\n  -h, --help  Print help\n";
    assert_eq!(subcommands(text), ["one", "two"]);
    assert!(subcommands("Usage: x\n\nOptions:\n  -h  Help\n").is_empty());
}

/// docs/troubleshooting.md explains every drop reason of the datapath: each `X(NAME, code,
/// "short-name", ...)` of bpf/lib/drop_reasons.h must have its row (name and code).
#[test]
fn troubleshooting_lists_every_drop_reason() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = crate_dir.parent().unwrap_or(crate_dir);
    let header = std::fs::read_to_string(root.join("bpf/lib/drop_reasons.h")).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
    let mut seen = 0;
    for part in header.split("X(DROP_").skip(1) {
        let fields: Vec<&str> = part.splitn(4, ',').map(str::trim).collect();
        let (code, name) = (fields[1], fields[2].trim_matches('"'));
        let row = format!("| `{name}` | {code} |");
        assert!(
            doc.contains(&row),
            "docs/troubleshooting.md has no drop reason row starting with {row:?}: add what it \
             means and what to do"
        );
        seen += 1;
    }
    assert!(
        seen >= 10,
        "parsed only {seen} drop reasons from the header"
    );
}
