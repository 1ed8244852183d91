//! How commands show progress: always on stderr, never on stdout. The
//! library reports counts to a callback; this module draws them.

use crate::segment::Progress;
use std::io::IsTerminal;
use std::time::Instant;

/// `--progress` of `cws train`, `cws segment` and `cws eval --model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressStyle {
    /// A bar when stderr is a terminal (for segmentation: and the input's
    /// size is known); nothing otherwise.
    Auto,
    /// A bar when stderr is a terminal (for segmentation: also of an input
    /// of unknown size, without ETA); where it is not, the summary.
    Bar,
    /// No bar: one line at the end (`cws train`: a line per dev score).
    Summary,
    /// No bar, no summary.
    Quiet,
}

/// Shows a segmentation run's progress as `--progress` asks: a bar of bytes
/// done with chars/s and ETA, and / or one closing line.
pub struct Meter {
    bar: indicatif::ProgressBar,
    summary: bool,
    start: Instant,
    last: std::cell::RefCell<Progress>,
}

impl Meter {
    /// A meter for input of `total` bytes (None where the size is unknown).
    pub fn new(style: ProgressStyle, total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let (bar, summary) = match style {
            ProgressStyle::Auto => (terminal && total.is_some(), false),
            ProgressStyle::Bar => (terminal, !terminal),
            ProgressStyle::Summary => (false, true),
            ProgressStyle::Quiet => (false, false),
        };
        let bar = match (bar, total) {
            (false, _) => indicatif::ProgressBar::hidden(),
            (true, Some(total)) => indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:24} {bytes}/{total_bytes}  {msg}  {elapsed} (ETA {eta})",
                )
                .expect("valid template"),
            ),
            (true, None) => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {bytes}  {msg}  {elapsed}")
                    .expect("valid template"),
            ),
        };
        Self {
            bar,
            summary,
            start: Instant::now(),
            last: Default::default(),
        }
    }

    fn rate(&self, p: &Progress) -> (f64, f64) {
        let seconds = self.start.elapsed().as_secs_f64();
        (seconds, p.chars as f64 / seconds.max(1e-9))
    }

    /// Shows the counts so far.
    pub fn update(&self, p: &Progress) {
        *self.last.borrow_mut() = p.clone();
        if !self.bar.is_hidden() {
            self.bar.set_position(p.bytes);
            self.bar
                .set_message(format!("{:.0} chars/s", self.rate(p).1));
        }
    }

    /// Takes the bar away and, when asked, prints the closing line with the
    /// last counts shown.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
        if self.summary {
            let p = self.last.borrow();
            let (seconds, rate) = self.rate(&p);
            eprintln!(
                "segmented {} lines, {} chars in {seconds:.1} s ({rate:.0} chars/s)",
                p.lines, p.chars
            );
        }
    }
}
