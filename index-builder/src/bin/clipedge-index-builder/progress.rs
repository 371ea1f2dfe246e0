//! Progress on stderr: bars on a terminal, plain lines (every tenth of a stage) in a log.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use clipedge_index_builder::Progress;
use indicatif::{ProgressBar, ProgressStyle};

pub enum StderrProgress {
    Bars(Mutex<Option<ProgressBar>>),
    Lines(Mutex<LineState>),
}

pub struct LineState {
    name: String,
    total: u64,
    done: u64,
    next_report: u64,
    started: Instant,
}

impl StderrProgress {
    pub fn new() -> Self {
        if std::io::stderr().is_terminal() {
            return StderrProgress::Bars(Mutex::new(None));
        }
        StderrProgress::Lines(Mutex::new(LineState {
            name: String::new(),
            total: 0,
            done: 0,
            next_report: 0,
            started: Instant::now(),
        }))
    }

    pub fn finish(&self) {
        if let StderrProgress::Bars(current) = self {
            if let Some(bar) = current.lock().expect("progress lock").take() {
                bar.finish();
            }
        }
    }
}

impl Progress for StderrProgress {
    fn stage(&self, name: &str, total: u64) {
        match self {
            StderrProgress::Bars(current) => {
                let mut current = current.lock().expect("progress lock");
                if let Some(bar) = current.take() {
                    bar.finish();
                }
                let bar = ProgressBar::new(total);
                let style = ProgressStyle::with_template(
                    "{msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_message(name.to_string());
                *current = Some(bar);
            }
            StderrProgress::Lines(state) => {
                let mut state = state.lock().expect("progress lock");
                *state = LineState {
                    name: name.to_string(),
                    total,
                    done: 0,
                    next_report: total.div_ceil(10).max(1),
                    started: Instant::now(),
                };
                eprintln!("progress: {name}: started ({total} units)");
            }
        }
    }

    fn advance(&self, units: u64) {
        match self {
            StderrProgress::Bars(current) => {
                if let Some(bar) = current.lock().expect("progress lock").as_ref() {
                    bar.inc(units);
                }
            }
            StderrProgress::Lines(state) => {
                let mut state = state.lock().expect("progress lock");
                state.done += units;
                if state.done >= state.next_report {
                    let step = state.total.div_ceil(10).max(1);
                    state.next_report = (state.done / step + 1) * step;
                    eprintln!(
                        "progress: {}: {}/{} ({:.0}%) after {:.1}s",
                        state.name,
                        state.done,
                        state.total,
                        100.0 * state.done as f64 / state.total.max(1) as f64,
                        state.started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
}
