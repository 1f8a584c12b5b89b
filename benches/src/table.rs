//! Text tables. A layout is a format string whose placeholders are `{}`,
//! `{:<W}` or `{:>W}` (left or right in W characters), with `.P` for a
//! number's digits after the point. One layout prints a table's headings
//! ([`head`], the precision left out) and its rows ([`row`]), so that the
//! two cannot drift apart; a heading line whose cells span columns (a
//! group's name over its columns) has a layout of its own.

use std::fmt::Display;

/// `layout` filled with `cells`, one a placeholder; headings take no
/// precision.
fn fill(layout: &str, cells: &[&dyn Display], heading: bool) -> String {
    let mut out = String::new();
    let mut rest = layout;
    let mut cells = cells.iter();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("a placeholder ends with }");
        let spec = rest[open + 1..close].trim_start_matches(':');
        let cell = cells.next().expect("a cell for every placeholder");
        let (width, precision) = spec
            .get(1..)
            .unwrap_or("")
            .split_once('.')
            .map_or((spec.get(1..).unwrap_or(""), None), |(w, p)| {
                (w, p.parse::<usize>().ok())
            });
        let text = match precision.filter(|_| !heading) {
            Some(p) => format!("{cell:.p$}"),
            None => cell.to_string(),
        };
        let w = width.parse().unwrap_or(0);
        if spec.starts_with('<') {
            out.push_str(&format!("{text:<w$}"));
        } else {
            out.push_str(&format!("{text:>w$}"));
        }
        rest = &rest[close + 1..];
    }
    assert!(cells.next().is_none(), "more cells than placeholders");
    out.push_str(rest);
    out
}

/// Prints a row: `row!(LAYOUT, cell, cell, ...)`.
#[macro_export]
macro_rules! row {
    ($layout:expr, $($cell:expr),* $(,)?) => {
        println!("{}", $crate::table::row($layout, &[$(&$cell),*]))
    };
}

/// A row of `layout`.
pub fn row(layout: &str, cells: &[&dyn Display]) -> String {
    fill(layout, cells, false)
}

/// A heading line of `layout`: `headings` are its cells, separated by `;`.
pub fn head(layout: &str, headings: &str) -> String {
    let cells: Vec<&str> = headings.split(';').collect();
    let cells: Vec<&dyn Display> = cells.iter().map(|c| c as &dyn Display).collect();
    fill(layout, &cells, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_and_rows_share_the_layout() {
        let l = "  {:<6} {:>8.2}x | {}";
        assert_eq!(head(l, "name;ratio;note"), "  name      ratiox | note");
        assert_eq!(row(l, &[&"a", &1.23456, &"ok"]), "  a          1.23x | ok");
        assert_eq!(row("{:>4.1} {:>3}", &[&2.0, &7u64]), " 2.0   7");
        assert_eq!(head("{:>3} | {:>2}", ";"), "    |   ");
    }
}
