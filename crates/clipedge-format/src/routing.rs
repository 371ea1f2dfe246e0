use crate::le::{check_magic, check_version, push_trailer, put_f32s, verify_trailer, Reader};
use crate::FormatError;

const MAGIC: &[u8; 8] = b"CEROUTE\0";
const HEADER_BYTES: usize = 32;
/// Bytes of one [`GroupEntry`] in `routing.bin`.
pub const GROUP_ENTRY_BYTES: usize = 28;

/// Where a routing group's lists and its blob in `groups.bin` are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupEntry {
    /// First fine list id of the group; a group's lists are contiguous.
    pub first_list: u32,
    pub list_count: u32,
    /// Byte offset of the group blob in `groups.bin`.
    pub offset: u64,
    pub length: u32,
    pub crc32: u32,
    /// Largest distance from the group's centroid to one of its fine centroids; 0 for a
    /// one-list group. `<q, centroid> + |q| * radius` bounds the best list score in the group.
    pub radius: f32,
}

/// `routing.bin`: the small table the edge keeps in memory. One top-level
/// centroid per group plus the byte range of the group's blob.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingTable {
    pub dim: usize,
    pub nlist: u32,
    /// `ngroups * dim` floats, row-major.
    pub centroids: Vec<f32>,
    pub groups: Vec<GroupEntry>,
}

impl RoutingTable {
    pub fn ngroups(&self) -> usize {
        self.groups.len()
    }

    /// The group owning `list_id`: groups cover the lists in order, so it is the last group
    /// starting at or before it. `None` when the list is outside the index.
    pub fn group_of_list(&self, list_id: u32) -> Option<usize> {
        if list_id >= self.nlist {
            return None;
        }
        let group = self
            .groups
            .partition_point(|entry| entry.first_list <= list_id)
            .checked_sub(1)?;
        Some(group)
    }

    pub fn centroid(&self, group: usize) -> &[f32] {
        &self.centroids[group * self.dim..(group + 1) * self.dim]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_BYTES + self.centroids.len() * 4 + self.groups.len() * GROUP_ENTRY_BYTES + 4,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&(self.groups.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.nlist.to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        put_f32s(&mut out, &self.centroids);
        for group in &self.groups {
            out.extend_from_slice(&group.first_list.to_le_bytes());
            out.extend_from_slice(&group.list_count.to_le_bytes());
            out.extend_from_slice(&group.offset.to_le_bytes());
            out.extend_from_slice(&group.length.to_le_bytes());
            out.extend_from_slice(&group.crc32.to_le_bytes());
            out.extend_from_slice(&group.radius.to_le_bytes());
        }
        push_trailer(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<RoutingTable, FormatError> {
        let what = "routing.bin";
        let body = verify_trailer(what, bytes)?;
        let mut reader = Reader::new(what, body);
        check_magic(what, reader.take(8)?, MAGIC)?;
        check_version(what, reader.u32()?)?;
        let dim = reader.u32()? as usize;
        let ngroups = reader.u32()? as usize;
        let nlist = reader.u32()?;
        reader.take(8)?;
        let centroid_count = ngroups
            .checked_mul(dim)
            .ok_or_else(|| FormatError::invalid(what, "centroid count overflows"))?;
        let centroids = reader.f32s(centroid_count)?;
        // The entries must all be there before room is made for them: a corrupt count (with
        // dim 0, nothing else bounds it) must not size an allocation.
        let entries_len = ngroups.checked_mul(GROUP_ENTRY_BYTES);
        if entries_len.is_none_or(|len| len > body.len() - reader.position()) {
            return Err(FormatError::truncated(
                what,
                entries_len.unwrap_or(usize::MAX),
                body.len(),
            ));
        }
        let mut groups = Vec::with_capacity(ngroups);
        let mut next_list = 0u32;
        for _ in 0..ngroups {
            let entry = GroupEntry {
                first_list: reader.u32()?,
                list_count: reader.u32()?,
                offset: reader.u64()?,
                length: reader.u32()?,
                crc32: reader.u32()?,
                radius: f32::from_le_bytes(reader.take(4)?.try_into().unwrap()),
            };
            if !(entry.radius.is_finite() && entry.radius >= 0.0) {
                return Err(FormatError::invalid(
                    what,
                    "group radius must be finite and >= 0",
                ));
            }
            // Lists are numbered group by group; anything else is a corrupt table.
            if entry.first_list != next_list || entry.list_count == 0 {
                return Err(FormatError::invalid(
                    what,
                    "groups must cover lists contiguously",
                ));
            }
            next_list = next_list
                .checked_add(entry.list_count)
                .ok_or_else(|| FormatError::invalid(what, "list counts overflow u32"))?;
            groups.push(entry);
        }
        if next_list != nlist {
            return Err(FormatError::invalid(
                what,
                format!("groups cover {next_list} lists, header says {nlist}"),
            ));
        }
        if reader.position() != body.len() {
            return Err(FormatError::invalid(what, "trailing bytes"));
        }
        Ok(RoutingTable {
            dim,
            nlist,
            centroids,
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/routing/`): dim 0 and 2^31 groups in a 58-byte table
    /// made the decoder reserve 64 GiB for the group entries before reading one.
    #[test]
    fn a_huge_group_count_is_refused_before_allocating() {
        let mut bytes = Vec::from(*MAGIC);
        bytes.extend_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&0x8000_0000u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 8 + GROUP_ENTRY_BYTES]);
        push_trailer(&mut bytes);
        let error = RoutingTable::decode(&bytes).unwrap_err();
        assert!(matches!(error, FormatError::Truncated { .. }), "{error}");
    }
}
