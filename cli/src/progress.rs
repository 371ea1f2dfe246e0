use std::sync::Mutex;

use clipedge_index_builder::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Progress bars on stderr, one per build stage (hidden when stderr is not a terminal).
pub struct BarProgress {
    current: Mutex<Option<ProgressBar>>,
}

impl BarProgress {
    pub fn new() -> Self {
        BarProgress {
            current: Mutex::new(None),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = self.current.lock().expect("progress lock").take() {
            bar.finish();
        }
    }
}

impl Progress for BarProgress {
    fn stage(&self, name: &str, total: u64) {
        let mut current = self.current.lock().expect("progress lock");
        if let Some(bar) = current.take() {
            bar.finish();
        }
        let bar = ProgressBar::new(total);
        let style =
            ProgressStyle::with_template("{msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(name.to_string());
        *current = Some(bar);
    }

    fn advance(&self, units: u64) {
        if let Some(bar) = self.current.lock().expect("progress lock").as_ref() {
            bar.inc(units);
        }
    }
}
