use crate::le::{f32s_from_le, put_f32s, Reader};
use crate::FormatError;

/// Bytes of one [`ListLocation`] in a group blob.
pub const LIST_LOCATION_BYTES: usize = 24;

/// Where one fine list lives: exactly one range GET of `shard` at `offset..offset+length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLocation {
    pub shard: u32,
    pub count: u32,
    pub offset: u64,
    pub length: u32,
    pub crc32: u32,
}

/// A group blob in `groups.bin`: the fine centroids of the group's lists and where each list is.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupBlob {
    pub first_list: u32,
    pub dim: usize,
    /// `lists.len() * dim` floats.
    pub centroids: Vec<f32>,
    pub lists: Vec<ListLocation>,
}

impl GroupBlob {
    pub fn centroid(&self, local: usize) -> &[f32] {
        &self.centroids[local * self.dim..(local + 1) * self.dim]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.centroids.len() * 4 + self.lists.len() * LIST_LOCATION_BYTES);
        put_f32s(&mut out, &self.centroids);
        for list in &self.lists {
            out.extend_from_slice(&list.shard.to_le_bytes());
            out.extend_from_slice(&list.count.to_le_bytes());
            out.extend_from_slice(&list.offset.to_le_bytes());
            out.extend_from_slice(&list.length.to_le_bytes());
            out.extend_from_slice(&list.crc32.to_le_bytes());
        }
        out
    }

    /// Decodes a group blob whose CRC-32 the routing table recorded.
    pub fn decode(
        bytes: &[u8],
        first_list: u32,
        list_count: usize,
        dim: usize,
        expected_crc32: u32,
    ) -> Result<GroupBlob, FormatError> {
        let what = format!(
            "group blob of lists {first_list}..{}",
            u64::from(first_list).saturating_add(list_count as u64)
        );
        FormatError::verify(&what, bytes, expected_crc32)?;
        // Checked: the count and dimension come from the routing table, which may be corrupt.
        let expected_len = dim
            .checked_mul(4)
            .and_then(|centroid| centroid.checked_add(LIST_LOCATION_BYTES))
            .and_then(|entry| entry.checked_mul(list_count));
        if expected_len != Some(bytes.len()) {
            return Err(FormatError::invalid(
                &what,
                format!(
                    "length {} does not hold {list_count} lists of dimension {dim}",
                    bytes.len()
                ),
            ));
        }
        let (centroid_bytes, location_bytes) = bytes.split_at(list_count * dim * 4);
        let mut reader = Reader::new(&what, location_bytes);
        let mut lists = Vec::with_capacity(list_count);
        for _ in 0..list_count {
            lists.push(ListLocation {
                shard: reader.u32()?,
                count: reader.u32()?,
                offset: reader.u64()?,
                length: reader.u32()?,
                crc32: reader.u32()?,
            });
        }
        Ok(GroupBlob {
            first_list,
            dim,
            centroids: f32s_from_le(centroid_bytes),
            lists,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/group_blob/`): a list count and dimension whose
    /// blob length overflows usize panicked instead of being refused.
    #[test]
    fn an_overflowing_shape_is_refused() {
        let bytes = [0u8; LIST_LOCATION_BYTES];
        let crc = crate::checksum(&bytes);
        for (list_count, dim) in [(usize::MAX, 1), (2, usize::MAX / 4), (usize::MAX / 16, 3)] {
            let error = GroupBlob::decode(&bytes, u32::MAX, list_count, dim, crc).unwrap_err();
            assert!(error.to_string().contains("does not hold"), "{error}");
        }
        assert!(GroupBlob::decode(&bytes, 0, 1, 0, crc).is_ok());
    }
}
