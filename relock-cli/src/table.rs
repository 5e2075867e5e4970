//! Plain-text tables: a header row, then one row per lock, columns padded to their widest cell.

/// Renders `rows` under `header`, columns separated by two spaces, each line ending in `\n` and
/// never in a space. Widths count characters, so non-ASCII keys line up.
pub(crate) fn render<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|title| title.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<const N: usize>(cells: [&str; N]) -> [String; N] {
        cells.map(str::to_owned)
    }

    #[test]
    fn pads_columns_to_their_widest_cell() {
        let table = render(
            ["KEY", "TOKEN", "HOST"],
            &[row(["order:1", "7", "a"]), row(["o:2", "1234567", "box"])],
        );
        assert_eq!(
            table,
            "KEY      TOKEN    HOST\n\
             order:1  7        a\n\
             o:2      1234567  box\n"
        );
    }

    #[test]
    fn header_alone_when_there_are_no_rows() {
        assert_eq!(render(["KEY", "TTL"], &[]), "KEY  TTL\n");
    }

    #[test]
    fn lines_never_end_in_spaces() {
        let table = render(["A", "B"], &[row(["x", ""]), row(["yyyy", "z"])]);
        assert!(table.lines().all(|line| !line.ends_with(' ')), "{table:?}");
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let table = render(["K", "V"], &[row(["clé", "1"]), row(["abcd", "2"])]);
        assert_eq!(table, "K     V\nclé   1\nabcd  2\n");
    }
}
