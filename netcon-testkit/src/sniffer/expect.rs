//! What a test expects a running `netcon-sniff` to print: lines in order, a line with a
//! needle, or no such line.

use std::time::{Duration, Instant};

use super::run::Sniffer;

impl Sniffer {
    /// The next `n` stdout lines not yet consumed.
    ///
    /// # Panics
    /// If they do not all arrive within `timeout`.
    pub fn expect_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while self.stdout.len() < self.cursor + n {
            let progressed = self.pump(deadline);
            assert!(
                progressed,
                "expected {n} more stdout lines from `{}` within {timeout:?}, got {}; \
                     last lines: {:#?}\nstderr:\n{}",
                self.command,
                self.stdout.len() - self.cursor,
                self.tail(5),
                self.stderr_text()
            );
        }
        let lines = self.stdout[self.cursor..self.cursor + n].to_vec();
        self.cursor += n;
        lines
    }

    /// The first not yet consumed stdout line that contains `needle`; lines before it are
    /// consumed too.
    ///
    /// # Panics
    /// If none arrives within `timeout`.
    pub fn expect_line_containing(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        // Each line is looked at once: a burst of thousands before the match stays linear.
        let mut checked = self.cursor;
        loop {
            if let Some(i) = self.stdout[checked..]
                .iter()
                .position(|l| l.contains(needle))
            {
                let line = self.stdout[checked + i].clone();
                self.cursor = checked + i + 1;
                return line;
            }
            checked = self.stdout.len();
            let progressed = self.pump(deadline);
            assert!(
                progressed,
                "no stdout line containing {needle:?} from `{}` within {timeout:?}; \
                     last lines: {:#?}\nstderr:\n{}",
                self.command,
                self.tail(5),
                self.stderr_text()
            );
        }
    }

    /// The first stderr line (consumed or not: stderr has no cursor) after the first `skip`
    /// that contains `needle`, waiting for it.
    ///
    /// # Panics
    /// If none arrives within `timeout`.
    pub fn expect_stderr_containing(
        &mut self,
        needle: &str,
        skip: usize,
        timeout: Duration,
    ) -> String {
        self.try_stderr_containing(needle, skip, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Collects output for `quiet` and then asserts that no stdout line printed so far (consumed
    /// or not) contains `needle`.
    ///
    /// # Panics
    /// If such a line was printed.
    pub fn assert_no_line_containing(&mut self, needle: &str, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while self.pump(deadline) {}
        if let Some(line) = self.stdout.iter().find(|l| l.contains(needle)) {
            panic!(
                "`{}` printed a line it should not have: {line}",
                self.command
            );
        }
    }

    fn tail(&self, n: usize) -> &[String] {
        &self.stdout[self.stdout.len().saturating_sub(n)..]
    }
}
