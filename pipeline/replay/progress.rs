//! Progress of a replay: a bar for a person at a terminal, periodic
//! structured log lines for everything else (CI, containers, log files),
//! where a redrawn bar would be noise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a replay reports its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// A bar on stderr.
    Bar,
    /// An `info` log line every [`LOG_EVERY`].
    Log,
    /// Nothing but the final summary line.
    Off,
}

/// Interval between progress log lines; often enough to see a stall, rare
/// enough not to drown the router's own logs when both run in one terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

const BAR_TEMPLATE: &str =
    "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}";

/// The live progress display of one replay.
pub(super) struct Tracker {
    bar: Option<ProgressBar>,
    log: bool,
    total: Option<u64>,
    started: Instant,
    last_log: Instant,
}

impl Tracker {
    /// Starts tracking a replay of `total` records (`None` when unknown).
    pub(super) fn new(progress: Progress, total: Option<u64>) -> Self {
        let progress = match progress {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::Log,
            other => other,
        };
        let bar = (progress == Progress::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            // The template is a constant; the default style is a fine
            // fallback should a future indicatif reject it.
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            log: progress == Progress::Log,
            total,
            started: now,
            last_log: now,
        }
    }

    /// Records that `sent` records have been handed to the producer.
    pub(super) fn update(&mut self, sent: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(sent);
        }
        if self.log && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            tracing::info!(
                sent,
                total = self.total,
                rate = per_second(sent, self.started.elapsed()),
                "replay progress"
            );
        }
    }

    /// Removes the bar; the caller logs the summary.
    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Tracker {
    /// Leaves the bar where it stopped when the replay failed part-way, so
    /// the error below it shows how far it got.
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

/// Records per second over `elapsed`, 0 before any time has passed.
pub(super) fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}
