//! What every tokenizer hands the text tower.

/// Token ids for one text, ready to feed the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// The text had more tokens than the model accepts and was cut (special tokens kept).
    pub truncated: bool,
}
