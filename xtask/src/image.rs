//! `cargo xtask image`: the local images, made without pulling anything, as tar streams piped
//! into `docker import`:
//! - `viking/busybox:latest`, the workload image of tests and examples: /bin/busybox (Debian's
//!   busybox-static) and its applet links;
//! - `viking/agent:<version>`, the agent (docs/operations.md "The agent image"): the same
//!   busybox rootfs (a shell for `docker exec`), `/usr/bin/viking`, and the shared libraries
//!   it links (glibc: found by `ldd`, copied at the paths the loader looks in).
//!
//! NB: this file only needs std and anyhow: the integration tests include it as a module
//! (tests/src/docker.rs) to import the same image into the dockerd they start.
use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The image tests and the demo run.
pub const IMAGE: &str = "viking/busybox:latest";
/// Where the static busybox comes from (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked in /bin (busybox picks the applet from argv[0]).
pub const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "env", "sleep", "nc", "httpd", "wget", "ls", "ps", "true", "false",
    "printf", "test", "[", "grep", "sed", "awk", "head", "tail", "wc", "tee", "touch", "mkdir",
    "rm", "cp", "mv", "ln", "date", "hostname", "id", "kill", "seq", "yes", "ip", "ifconfig",
    "netstat", "nslookup", "ping", "timeout", "which", "readlink", "dd", "tr", "cut", "sort",
    "uniq", "xargs", "stat", "uname", "vi",
];

/// A minimal ustar writer: directories, regular files and symbolic links.
struct Tar {
    out: Vec<u8>,
}

impl Tar {
    fn new() -> Self {
        Self { out: Vec::new() }
    }

    fn header(
        &mut self,
        path: &str,
        mode: u32,
        size: usize,
        kind: u8,
        link: &str,
    ) -> anyhow::Result<()> {
        if path.len() > 99 || link.len() > 99 {
            bail!("tar path too long: {path}");
        }
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, bytes: &[u8]| {
            h[at..at + bytes.len()].copy_from_slice(bytes)
        };
        put(&mut h, 0, path.as_bytes());
        put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, b"0000000\0");
        put(&mut h, 116, b"0000000\0");
        put(&mut h, 124, format!("{size:011o}\0").as_bytes());
        put(&mut h, 136, b"00000000000\0");
        h[156] = kind;
        put(&mut h, 157, link.as_bytes());
        put(&mut h, 257, b"ustar\0");
        put(&mut h, 263, b"00");
        put(&mut h, 265, b"root");
        put(&mut h, 297, b"root");
        // The checksum is taken with its own field as spaces.
        put(&mut h, 148, b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        self.out.extend_from_slice(&h);
        Ok(())
    }

    fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        self.header(&format!("{path}/"), mode, 0, b'5', "")
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        self.header(path, mode, data.len(), b'0', "")?;
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.resize(self.out.len() + pad, 0);
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.header(path, 0o777, 0, b'2', target)
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// The image's root filesystem as a tar stream: /bin/busybox, its applets, /usr/bin/env, an
/// /etc/passwd and /etc/group for root and nobody, and the usual empty directories.
pub fn rootfs_tar(busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let mut tar = Tar::new();
    busybox_rootfs(&mut tar, busybox)?;
    Ok(tar.finish())
}

/// The directories of the busybox rootfs (and /tmp).
const ROOT_DIRS: [&str; 11] =
    ["bin", "etc", "usr", "usr/bin", "root", "data", "proc", "sys", "dev", "var", "var/www"];

fn busybox_rootfs(tar: &mut Tar, busybox: &Path) -> anyhow::Result<()> {
    let bin = std::fs::read(busybox).with_context(|| {
        format!("reading {} (apt-get install busybox-static)", busybox.display())
    })?;
    for d in ROOT_DIRS {
        tar.dir(d, 0o755)?;
    }
    tar.dir("tmp", 0o1777)?;
    tar.file("bin/busybox", 0o755, &bin)?;
    for applet in APPLETS {
        tar.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    tar.symlink("usr/bin/env", "../../bin/busybox")?;
    tar.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    tar.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// The agent image's name; its tag is the binary's version.
pub const AGENT_IMAGE: &str = "viking/agent";

/// `viking/agent:<version>`, the version as `viking --version` says it.
pub fn agent_tag(viking: &Path) -> anyhow::Result<String> {
    let out = Command::new(viking)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", viking.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).filter(|_| out.status.success());
    match version {
        Some(v) => Ok(format!("{AGENT_IMAGE}:{v}")),
        None => bail!("{} --version said {text:?}", viking.display()),
    }
}

/// The shared objects `binary` loads (its ELF interpreter included), as `ldd` resolves them.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // NB: a static binary: "not a dynamic executable", nothing to copy.
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

/// The agent image's root filesystem: the busybox rootfs, `/usr/bin/viking` and its shared
/// libraries, and the directories the documented mounts land on.
pub fn agent_rootfs_tar(viking: &Path, busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let mut tar = Tar::new();
    busybox_rootfs(&mut tar, busybox)?;
    let bin = std::fs::read(viking).with_context(|| format!("reading {}", viking.display()))?;
    tar.file("usr/bin/viking", 0o755, &bin)?;
    let mut dirs: std::collections::BTreeSet<String> =
        ROOT_DIRS.iter().chain(&["tmp"]).map(|d| d.to_string()).collect();
    let mut dir = |tar: &mut Tar, path: &str| -> anyhow::Result<()> {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if dirs.insert(at.clone()) {
                tar.dir(&at, 0o755)?;
            }
        }
        Ok(())
    };
    for d in ["var/lib/viking", "run/viking", "sys/fs/bpf", "sys/fs/cgroup", "var/run"] {
        dir(&mut tar, d)?;
    }
    for lib in shared_libraries(viking)? {
        let rel = lib.trim_start_matches('/');
        if let Some((parent, _)) = rel.rsplit_once('/') {
            dir(&mut tar, parent)?;
        }
        let data = std::fs::read(&lib).with_context(|| format!("reading {lib}"))?;
        tar.file(rel, 0o755, &data)?;
    }
    Ok(tar.finish())
}

/// Builds the agent image from `viking` and imports it into the dockerd at `host` as
/// `viking/agent:<version>` and `viking/agent:latest`; returns the versioned tag.
pub fn import_agent(host: Option<&str>, viking: &Path) -> anyhow::Result<String> {
    let tag = agent_tag(viking)?;
    let tar = agent_rootfs_tar(viking, Path::new(BUSYBOX))?;
    let version = tag.rsplit(':').next().unwrap_or_default().to_owned();
    let changes = [
        "ENV PATH=/usr/bin:/bin".to_owned(),
        "ENTRYPOINT [\"/usr/bin/viking\"]".to_owned(),
        "CMD [\"agent\"]".to_owned(),
        format!("LABEL org.opencontainers.image.title=viking-agent org.opencontainers.image.version={version}"),
    ];
    docker_import(host, &tar, &tag, &changes)?;
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.args(["-H", h]);
    }
    let latest = format!("{AGENT_IMAGE}:latest");
    let out = cmd.args(["tag", &tag, &latest]).output().context("running docker tag")?;
    if !out.status.success() {
        bail!("docker tag {tag} {latest}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(tag)
}

/// Builds the rootfs and `docker import`s it as `tag` into the dockerd at `host`
/// (`unix:///path`; `None`: the docker CLI's default).
pub fn import(host: Option<&str>, tag: &str) -> anyhow::Result<()> {
    let tar = rootfs_tar(Path::new(BUSYBOX))?;
    let changes = ["ENV PATH=/bin:/usr/bin".to_owned(), "CMD [\"/bin/sh\"]".to_owned()];
    docker_import(host, &tar, tag, &changes)
}

/// `docker import` of a rootfs tar stream as `tag`, with Dockerfile-like `changes`.
fn docker_import(
    host: Option<&str>,
    tar: &[u8],
    tag: &str,
    changes: &[String],
) -> anyhow::Result<()> {
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.args(["-H", h]);
    }
    cmd.arg("import");
    for c in changes {
        cmd.args(["-c", c]);
    }
    cmd.args(["-", tag]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running docker (apt-get install docker.io)")?;
    // NB: a refused import closes its stdin early; its own words say why.
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(tar));
    let out = child.wait_with_output().context("waiting for docker import")?;
    if let (Some(Err(e)), true) = (written, out.status.success()) {
        bail!("writing the rootfs to docker import: {e}");
    }
    if !out.status.success() {
        bail!(
            "docker import {tag} failed ({}): {} (is dockerd running?)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `cargo xtask image`: the agent image from `viking`, and the workload image.
pub fn run(host: Option<&str>, viking: &Path) -> anyhow::Result<()> {
    let tag = import_agent(host, viking)?;
    println!("image {tag} (and {AGENT_IMAGE}:latest) built from {}", viking.display());
    import(host, IMAGE)?;
    println!("image {IMAGE} built from {BUSYBOX}");
    Ok(())
}
