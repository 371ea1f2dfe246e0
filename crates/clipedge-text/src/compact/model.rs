//! The two subword models, on one pre-tokenized word each.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use super::format::NONE;
use super::CompactTokenizer;

/// A BPE symbol in the word's linked list; `removed` once merged into its left neighbour.
#[derive(Debug, Clone, Copy)]
pub(super) struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    removed: bool,
}

const NO_SYMBOL: usize = usize::MAX;

impl CompactTokenizer {
    /// Byte-level BPE of one word (its UTF-8 bytes, before the byte-to-character mapping, which
    /// the packer folded into `initial_ids`). Merges apply lowest rank first, leftmost first
    /// among equal ranks, exactly as HF's `Word::merge_all` without dropout.
    pub(super) fn bpe_word(
        &self,
        word: &[u8],
        initial_ids: &[u32; 512],
        merges: &Range<usize>,
        symbols: &mut Vec<Symbol>,
        out: &mut Vec<u32>,
    ) {
        symbols.clear();
        for (index, &byte) in word.iter().enumerate() {
            let is_last = index + 1 == word.len();
            let id = initial_ids[usize::from(is_last) * 256 + usize::from(byte)];
            // HF replaces a character missing from the vocabulary with the unknown token (not
            // fused), or drops it when there is none. CLIP's vocabulary has every byte.
            let id = match (id, self.unk_id) {
                (NONE, Some(unk)) => unk,
                (NONE, None) => continue,
                (id, _) => id,
            };
            let position = symbols.len();
            symbols.push(Symbol {
                id,
                prev: position.checked_sub(1).unwrap_or(NO_SYMBOL),
                next: position + 1,
                removed: false,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = NO_SYMBOL;
        }

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for position in 1..symbols.len() {
            let (left, right) = (symbols[position - 1].id, symbols[position].id);
            if let Some((rank, merged)) = self.merge(merges, left, right) {
                queue.push(Reverse((rank, position - 1, merged)));
            }
        }
        while let Some(Reverse((_, position, merged))) = queue.pop() {
            let symbol = symbols[position];
            if symbol.removed || symbol.next == NO_SYMBOL {
                continue;
            }
            let right = symbols[symbol.next];
            // An entry whose pair has changed since it was queued is stale.
            match self.merge(merges, symbol.id, right.id) {
                Some((_, current)) if current == merged => {}
                _ => continue,
            }
            symbols[position].id = merged;
            symbols[position].next = right.next;
            symbols[symbol.next].removed = true;
            if right.next != NO_SYMBOL {
                symbols[right.next].prev = position;
            }
            let current = symbols[position];
            if current.prev != NO_SYMBOL {
                let previous = symbols[current.prev];
                if let Some((rank, merged)) = self.merge(merges, previous.id, current.id) {
                    queue.push(Reverse((rank, current.prev, merged)));
                }
            }
            if current.next != NO_SYMBOL {
                let next = symbols[current.next];
                if let Some((rank, merged)) = self.merge(merges, current.id, next.id) {
                    queue.push(Reverse((rank, position, merged)));
                }
            }
        }
        out.extend(
            symbols
                .iter()
                .filter(|symbol| !symbol.removed)
                .map(|symbol| symbol.id),
        );
    }

    /// WordPiece of one word: greedy longest match from the left, later pieces with the
    /// continuing prefix; the whole word becomes the unknown token when any position has no
    /// match or the word is longer than `max_chars` characters.
    pub(super) fn wordpiece_word(
        &self,
        word: &str,
        continuing_prefix: &str,
        max_chars: usize,
        key: &mut Vec<u8>,
        out: &mut Vec<u32>,
    ) {
        // from_bytes refuses a WordPiece file without an unknown token.
        let unk = self.unk_id.unwrap_or_default();
        if word.chars().count() > max_chars {
            out.push(unk);
            return;
        }
        let first_piece = out.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                key.clear();
                if start > 0 {
                    key.extend_from_slice(continuing_prefix.as_bytes());
                }
                key.extend_from_slice(&word.as_bytes()[start..end]);
                if let Some(id) = self.lookup(key) {
                    found = Some(id);
                    break;
                }
                let last_char = word[start..end]
                    .chars()
                    .next_back()
                    .map_or(1, char::len_utf8);
                end -= last_char;
            }
            let Some(id) = found else {
                out.truncate(first_piece);
                out.push(unk);
                return;
            };
            out.push(id);
            start = end;
        }
    }
}
