/// Receives build progress; the CLI draws a progress bar, tests ignore it.
pub trait Progress: Sync {
    /// A new stage with `total` units of work (0 when unknown).
    fn stage(&self, name: &str, total: u64);
    fn advance(&self, units: u64);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: u64) {}
    fn advance(&self, _units: u64) {}
}
