//! Tables, printed aligned for a terminal or as Markdown for BENCHMARKS.md.

/// A titled table whose first column is a label and whose other columns are right-aligned.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) title: String,
    pub(crate) headers: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
    pub(crate) notes: Vec<String>,
    /// Columns after the first that are text, aligned left.
    pub(crate) text_columns: Vec<usize>,
}

impl Table {
    pub(crate) fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Aligns `columns` left, as text, in the terminal rendering.
    pub(crate) fn text(mut self, columns: &[usize]) -> Self {
        self.text_columns = columns.to_vec();
        self
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub(crate) fn render(&self, markdown: bool) -> String {
        if markdown {
            self.markdown()
        } else {
            self.plain()
        }
    }

    fn plain(&self) -> String {
        let width = |text: &str| text.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate() {
                widths[column] = widths[column].max(width(cell));
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (column, cell) in cells.iter().enumerate() {
                let pad = " ".repeat(widths[column] - width(cell));
                if column > 0 {
                    out.push_str("  ");
                }
                if column == 0 || self.text_columns.contains(&column) {
                    out.push_str(cell);
                    out.push_str(&pad);
                } else {
                    out.push_str(&pad);
                    out.push_str(cell);
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str(&format!("  {note}\n"));
        }
        out
    }

    fn markdown(&self) -> String {
        let escape = |cell: &str| cell.replace('|', "\\|");
        let mut out = format!("### {}\n\n", self.title);
        out.push_str(&format!(
            "| {} |\n",
            self.headers
                .iter()
                .map(|h| escape(h))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        out.push_str(&format!(
            "|{}\n",
            (0..self.headers.len())
                .map(|column| {
                    if column == 0 || self.text_columns.contains(&column) {
                        "---|"
                    } else {
                        "---:|"
                    }
                })
                .collect::<String>()
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                row.iter()
                    .map(|c| escape(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("{note}\n"));
            }
        }
        out
    }
}

/// A goal from the issue that asked for the benchmark, judged against what a run measured.
#[derive(Debug)]
pub(crate) struct Goal {
    pub(crate) what: String,
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

impl Goal {
    pub(crate) fn new(what: &str, target: &str, measured: String, met: bool) -> Self {
        Self {
            what: what.to_owned(),
            target: target.to_owned(),
            measured,
            met,
        }
    }
}

/// Every scenario's table, and the goals judged along the way.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) tables: Vec<Table>,
    pub(crate) goals: Vec<Goal>,
}

impl Report {
    /// The header lines, the tables, and the goals table last.
    pub(crate) fn render(&self, header: &[String], markdown: bool) -> String {
        let mut out = String::new();
        for line in header {
            if markdown {
                out.push_str("- ");
            }
            out.push_str(line);
            out.push('\n');
        }
        let mut goals = Table::new(
            "Goals (from the benchmark issue), judged on this run",
            &["goal", "target", "measured", "met"],
        )
        .text(&[1, 2]);
        for goal in &self.goals {
            goals.row(vec![
                goal.what.clone(),
                goal.target.clone(),
                goal.measured.clone(),
                verdict(goal.met),
            ]);
        }
        for table in self.tables.iter().chain([&goals]) {
            out.push('\n');
            out.push_str(&table.render(markdown));
        }
        out
    }
}

/// `✓` or `✗`.
pub(crate) fn verdict(met: bool) -> String {
    if met { "✓" } else { "✗" }.to_owned()
}

/// A ratio with two decimals and a `×`.
pub(crate) fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}×")
    } else {
        "—".to_owned()
    }
}

/// A rate with thousands separators.
pub(crate) fn rate(value: f64) -> String {
    if !value.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_get_thousands_separators() {
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(999.0), "999");
        assert_eq!(rate(f64::NAN), "—");
    }

    #[test]
    fn plain_tables_align_on_characters() {
        let mut table = Table::new("t", &["name", "÷ raw"]);
        table.row(vec!["µ".to_owned(), "1.00×".to_owned()]);
        let text = table.render(false);
        assert!(text.contains("name  ÷ raw\n"));
        assert!(text.contains("µ     1.00×\n"));
    }

    #[test]
    fn markdown_tables_right_align_numbers() {
        let mut table = Table::new("t", &["a", "b"]);
        table.row(vec!["x".to_owned(), "1".to_owned()]);
        assert!(table.render(true).contains("|---|---:|\n| x | 1 |\n"));
    }
}
