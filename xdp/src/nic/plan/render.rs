//! A plan as the text `sluice nic plan` prints.

use std::fmt;

use super::{list, Plan};

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Plan for {}: UDP port {} to queue(s) {} on CPU(s) {}",
            self.iface,
            self.port,
            list(&self.queues),
            list(&self.cpus)
        )?;
        writeln!(f, "\nChecks:")?;
        for c in &self.checks {
            writeln!(f, "  {:<4}  {}", c.level, c.message)?;
        }
        writeln!(f, "\nCommands (as root, in this order; none has been run):")?;
        if self.steps.is_empty() {
            writeln!(f, "  (none needed)")?;
        }
        let mut last_skip: Option<&str> = None;
        for s in &self.steps {
            if !s.comment.is_empty() {
                last_skip = None;
                writeln!(f)?;
                for line in wrap(&s.comment, 76) {
                    writeln!(f, "  # {line}")?;
                }
            }
            match s.skip.as_deref() {
                None => writeln!(f, "  {}", s.command)?,
                Some(why) => {
                    // The reason once for a run of commands skipped for it.
                    if last_skip != Some(why) {
                        for line in wrap(&format!("not here: {why}"), 74) {
                            writeln!(f, "  # ! {line}")?;
                        }
                    }
                    writeln!(f, "  # {}", s.command)?;
                }
            }
            last_skip = s.skip.as_deref();
        }
        writeln!(f, "\nsluiced config:")?;
        for line in self.config.lines() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Words of `text` in lines of at most `width` characters.
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for w in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + w.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
