//! The eBPF object built by `agent/build.rs` and embedded in the binary, and the copy of it
//! that is loaded: its kernel-function calls set to this kernel's BTF ids.
use aya::Btf;
use aya_obj::btf::BtfKind;
use viking_common::SOCK_DESTROY_CALL;

use super::error::DatapathError;

/// The programs' ELF object; empty when built with AYA_BUILD_SKIP=1.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/viking"));

/// An 8-byte aligned copy of the object (the ELF parser wants aligned headers).
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        Self { words, len: bytes.len() }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// Replaces every aligned 8-byte word equal to `from` with `to`; returns how many.
    fn replace(&mut self, from: u64, to: u64) -> usize {
        let (from, to) =
            (u64::from_ne_bytes(from.to_le_bytes()), u64::from_ne_bytes(to.to_le_bytes()));
        let mut n = 0;
        for w in &mut self.words {
            if *w == from {
                *w = to;
                n += 1;
            }
        }
        n
    }
}

pub struct Patched {
    pub object: Aligned,
    /// `bpf_sock_destroy` exists here (Linux 6.5+) and the socket iterators call it.
    pub can_end_sockets: bool,
}

/// The object to load. The socket iterators call the kernel function `bpf_sock_destroy`
/// through a marker instruction (`SOCK_DESTROY_CALL`, see ebpf/src/stale.rs): its imm becomes
/// the function's BTF id in this kernel. Where the kernel lacks it the marker stays, and the
/// iterators are never loaded.
pub fn patched() -> Result<Patched, DatapathError> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    let mut object = Aligned::new(OBJECT);
    let id = Btf::from_sys_fs()
        .ok()
        .and_then(|btf| btf.id_by_type_name_kind("bpf_sock_destroy", BtfKind::Func).ok());
    let can_end_sockets = match id {
        Some(id) => {
            let call = (SOCK_DESTROY_CALL & 0xffff_ffff) | (u64::from(id) << 32);
            object.replace(SOCK_DESTROY_CALL, call) > 0
        }
        None => false,
    };
    if !can_end_sockets {
        tracing::warn!(
            "this kernel has no bpf_sock_destroy (Linux 6.5+): sockets pinned to a backend \
             that left are not ended"
        );
    }
    Ok(Patched { object, can_end_sockets })
}
