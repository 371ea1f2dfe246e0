//! Tokenization with the model's own `tokenizer.json`: CLIP BPE, BERT WordPiece and
//! SentencePiece towers all come through the same code.

use tokenizers::{
    PaddingParams, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::{TextError, Tokens};

pub struct TextTokenizer {
    tokenizer: Tokenizer,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and forces right truncation at `max_tokens` with no padding:
    /// the graph runs only as many positions as the text has tokens.
    pub fn from_bytes(json: &[u8], max_tokens: usize) -> Result<TextTokenizer, TextError> {
        let mut tokenizer = Tokenizer::from_bytes(json).map_err(|error| TextError::Tokenizer {
            reason: error.to_string(),
        })?;
        let truncation = TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        };
        tokenizer
            .with_truncation(Some(truncation))
            .map_err(|error| TextError::Tokenizer {
                reason: error.to_string(),
            })?;
        tokenizer.with_padding(None::<PaddingParams>);
        Ok(TextTokenizer { tokenizer })
    }

    pub fn tokenize(&self, text: &str) -> Result<Tokens, TextError> {
        if text.trim().is_empty() {
            return Err(TextError::EmptyInput);
        }
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|error| TextError::Tokenize {
                reason: error.to_string(),
            })?;
        let has_content_token = encoding.get_special_tokens_mask().contains(&0);
        if !has_content_token {
            return Err(TextError::NoTokens);
        }
        Ok(Tokens {
            ids: encoding.get_ids().iter().map(|&id| i64::from(id)).collect(),
            type_ids: encoding
                .get_type_ids()
                .iter()
                .map(|&id| i64::from(id))
                .collect(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }
}
