//! `SLUICED_*` variables that no flag reads: a typo there
//! (`SLUICED_SPOOL_DIRR`) would otherwise be ignored without a word, and
//! the daemon would run on a default the operator meant to change. They
//! are named at start (a warning, not an error: a variable can be set for
//! other programs of the same name prefix), each with the variable nearest
//! in spelling.

use super::Args;

const PREFIX: &str = "SLUICED_";

/// One line for each of `vars` that starts with `SLUICED_` and is no
/// variable of sluiced's flags.
pub fn unknown_variables(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    let command = Args::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let mut unknown: Vec<String> = vars
        .into_iter()
        .filter(|v| v.starts_with(PREFIX) && !known.contains(v))
        .collect();
    unknown.sort();
    unknown
        .into_iter()
        .map(|v| {
            let nearest = known
                .iter()
                .map(|k| (strsim::levenshtein(&v, k), k))
                .min()
                .filter(|(d, _)| *d <= 3);
            match nearest {
                Some((_, k)) => format!(
                    "environment variable {v} is not one sluiced reads: did you mean {k}? (it is ignored)"
                ),
                None => format!(
                    "environment variable {v} is not one sluiced reads (it is ignored; `sluiced --help` lists them)"
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::unknown_variables;

    #[test]
    fn a_mistyped_variable_is_named_with_the_nearest_one() {
        let said = unknown_variables(
            [
                "SLUICED_SPOOL_DIRR",
                "SLUICED_SPOOL_DIR",
                "SLUICED_WHATEVER_ELSE_ENTIRELY",
                "PATH",
            ]
            .map(String::from),
        );
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].starts_with("environment variable SLUICED_SPOOL_DIRR"));
        assert!(
            said[0].contains("did you mean SLUICED_SPOOL_DIR?"),
            "{said:?}"
        );
        assert!(said[1].contains("SLUICED_WHATEVER_ELSE_ENTIRELY"));
        assert!(!said[1].contains("did you mean"), "{said:?}");
    }
}
