//! Plain-text tables: columns as wide as their widest cell, numbers
//! aligned right, and optional colour that never shifts the alignment.

/// An ANSI colour for a cell, used only when writing to a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Green,
    Yellow,
    Red,
    Dim,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Colour::Green => "\x1b[32m",
            Colour::Yellow => "\x1b[33m",
            Colour::Red => "\x1b[1;31m",
            Colour::Dim => "\x1b[2m",
        }
    }
}

/// One cell: its text, whether it aligns right, and its colour.
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    right: bool,
    colour: Option<Colour>,
}

impl Cell {
    /// A cell aligned left.
    pub fn left(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            right: false,
            colour: None,
        }
    }

    /// A cell aligned right, for numbers.
    pub fn right(text: impl Into<String>) -> Cell {
        Cell {
            right: true,
            ..Cell::left(text)
        }
    }

    /// The same cell in `colour`.
    pub fn colour(self, colour: Colour) -> Cell {
        Cell {
            colour: Some(colour),
            ..self
        }
    }
}

/// Rows of cells, rendered with two spaces between columns.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table whose first row is `header`.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| Cell::left(*h)).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as lines, coloured when `colour` is set.
    pub fn render(&self, colour: bool) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                let cells = self.rows.iter().filter_map(|row| row.get(i));
                cells.map(|c| c.text.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line += "  ";
                }
                let pad = " ".repeat(widths[i] - cell.text.chars().count());
                let text = match cell.colour.filter(|_| colour) {
                    Some(c) => format!("{}{}\x1b[0m", c.code(), cell.text),
                    None => cell.text.clone(),
                };
                if cell.right {
                    line += &pad;
                    line += &text;
                } else {
                    line += &text;
                    line += &pad;
                }
            }
            out += line.trim_end();
            out += "\n";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_numbers_align_right() {
        let mut table = Table::new(&["NAME", "RATE"]);
        table.row(vec![Cell::left("pangyo"), Cell::right("1.5")]);
        table.row(vec![Cell::left("ansan"), Cell::right("120.0")]);
        assert_eq!(
            table.render(false),
            "NAME    RATE\npangyo    1.5\nansan   120.0\n"
        );
    }

    #[test]
    fn colour_wraps_the_text_without_shifting_the_columns() {
        let mut table = Table::new(&["STATE", "X"]);
        table.row(vec![
            Cell::left("dark").colour(Colour::Red),
            Cell::left("y"),
        ]);
        assert_eq!(table.render(true), "STATE  X\n\x1b[1;31mdark\x1b[0m   y\n");
    }
}
