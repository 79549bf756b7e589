//! Where a field of a kernel struct lies in this kernel, read from its BTF
//! (`/sys/kernel/btf/vmlinux`): for the programs' one read of a TCP field (release.rs).
//!
//! NB: aya parses BTF but does not expose struct members, and its parse of the whole kernel
//! BTF costs ~20 MiB of heap; this walks the raw type section once, keeping an offset per
//! type, and frees it all on return.
use std::path::Path;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// The byte offset of `field` in `struct name` of the running kernel, if its BTF says.
pub fn field_offset(name: &str, field: &str) -> Option<u32> {
    let data = std::fs::read(Path::new("/sys/kernel/btf/vmlinux")).ok()?;
    Types::parse(&data)?.field_offset(name, field)
}

/// The type section of one BTF blob, indexed by type id.
struct Types<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Offset of each type (id - 1) in `types`.
    at: Vec<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Types<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        if u16_at(data, 0)? != MAGIC {
            return None;
        }
        let hdr = u32_at(data, 4)? as usize;
        let section = |off: usize, len: usize| -> Option<&'a [u8]> {
            let start = hdr + u32_at(data, off)? as usize;
            data.get(start..start + u32_at(data, len)? as usize)
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut at = Vec::new();
        let mut pos = 0;
        while pos + 12 <= types.len() {
            at.push(u32::try_from(pos).ok()?);
            let info = u32_at(types, pos + 4)?;
            let vlen = (info & 0xffff) as usize;
            pos += 12
                + match (info >> 24) & 0x1f {
                    KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                    KIND_ARRAY => 12,
                    KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                    KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                    _ => 0,
                };
        }
        Some(Self { types, strings, at })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    fn field_offset(&self, name: &str, field: &str) -> Option<u32> {
        let id = (0..self.at.len()).find(|i| {
            let pos = self.at[*i] as usize;
            u32_at(self.types, pos + 4)
                .is_some_and(|info| (info >> 24) & 0x1f == KIND_STRUCT && info & 0xffff != 0)
                && u32_at(self.types, pos).is_some_and(|n| self.name(n) == name.as_bytes())
        })?;
        self.member_bits(id, field.as_bytes(), 0).map(|bits| bits / 8)
    }

    /// The bit offset of `field` in the struct or union at index `i`, looking inside its
    /// anonymous members.
    fn member_bits(&self, i: usize, field: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let pos = *self.at.get(i)? as usize;
        let info = u32_at(self.types, pos + 4)?;
        let bitfields = info >> 31 == 1;
        for m in 0..(info & 0xffff) as usize {
            let at = pos + 12 + 12 * m;
            let (name, ty, off) =
                (u32_at(self.types, at)?, u32_at(self.types, at + 4)?, u32_at(self.types, at + 8)?);
            let bits = if bitfields { off & 0xff_ffff } else { off };
            let member = self.name(name);
            if member == field {
                return Some(bits);
            }
            if member.is_empty() && ty > 0 {
                let inner = ty as usize - 1;
                let kind = (u32_at(self.types, *self.at.get(inner)? as usize + 4)? >> 24) & 0x1f;
                if kind == KIND_STRUCT || kind == KIND_UNION {
                    if let Some(b) = self.member_bits(inner, field, depth + 1) {
                        return Some(bits + b);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_of_the_running_kernels_structs() {
        // sock_common's layout has been the same since 2.6: skc_state at 18, skc_dport (in an
        // anonymous struct inside an anonymous union) at 12.
        assert_eq!(field_offset("sock_common", "skc_state"), Some(18));
        assert_eq!(field_offset("sock_common", "skc_dport"), Some(12));
        let rcv_nxt = field_offset("tcp_sock", "rcv_nxt").expect("tcp_sock.rcv_nxt");
        assert!(rcv_nxt > 1000, "past inet_connection_sock: {rcv_nxt}");
        assert_eq!(field_offset("tcp_sock", "no_such_field"), None);
        assert_eq!(field_offset("no_such_struct", "rcv_nxt"), None);
    }
}
