//! The network sandbox of a docker instance (the pattern of Kubernetes' pause container):
//! a container of its own, `network_mode: none`, running the static `pause` binary built
//! with the agent. The agent plumbs its network namespace (veth, address, routes, MTU) and only
//! then creates the instance's container with `network_mode: container:<sandbox>`, so the
//! instance's first instruction already runs on Viking's network.
//!
//! The sandbox image holds that one file and is imported into dockerd by the agent when it is
//! missing (`viking/pause:<hash of the binary>`): nothing is pulled.

/// The pause binary (agent/pause/pause.rs, built static by agent/build.rs).
pub const PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// The label a sandbox carries: the instance it holds the network of.
pub const LABEL_SANDBOX: &str = "viking.sandbox";

/// The sandbox image's repository; its tag is the binary's hash.
pub const REPOSITORY: &str = "viking/pause";

/// The sandbox image's tag: a hash of the binary, so an agent with another build imports its
/// own.
pub fn tag() -> String {
    let h = PAUSE
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

/// `viking/pause:<tag>`.
pub fn image() -> String {
    format!("{REPOSITORY}:{}", tag())
}

/// The sandbox container's name for instance `name`.
pub fn name(instance: &str) -> String {
    format!("{instance}.sandbox")
}

/// The image's root filesystem as a tar: `/pause`, mode 0755.
pub fn rootfs_tar() -> Vec<u8> {
    let mut h = [0u8; 512];
    let put =
        |h: &mut [u8; 512], at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(&mut h, 0, b"pause");
    put(&mut h, 100, b"0000755\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{:011o}\0", PAUSE.len()).as_bytes());
    put(&mut h, 136, b"00000000000\0");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(PAUSE);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_one_static_executable_in_a_tar() {
        assert_eq!(&PAUSE[..4], b"\x7fELF", "pause is an ELF binary");
        let tar = rootfs_tar();
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[0..5], b"pause");
        assert_eq!(&tar[257..262], b"ustar");
        assert_eq!(&tar[512..512 + PAUSE.len()], PAUSE);
        assert!(image().starts_with("viking/pause:"));
    }
}
