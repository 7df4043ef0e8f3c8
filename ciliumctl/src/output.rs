//! Rendering of answers as a table, JSON or YAML (`-o`).

use std::io::Write;

use serde::Serialize;

/// Output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
    /// YAML.
    Yaml,
}

/// A table: a header row and rows of cells.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Append a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Render with two spaces between columns; the last column is not padded.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths = vec![0usize; cols];
        for r in std::iter::once(&self.header).chain(self.rows.iter()) {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(cols) {
                if i + 1 == cols {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Print `value` as JSON or YAML; returns false for the table format (caller renders).
pub fn print_structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)?;
            Ok(true)
        }
        Format::Yaml => {
            let text = serde_yaml::to_string(value)?;
            write!(stdout, "{text}")?;
            Ok(true)
        }
    }
}

/// A JSON value as a short cell: strings bare, the rest compact JSON.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["ID", "LEVEL"]);
        t.row(["agent.api", "ok"]);
        t.row(["x", "degraded"]);
        assert_eq!(
            t.render(),
            "ID         LEVEL\nagent.api  ok\nx          degraded\n"
        );
    }
}
