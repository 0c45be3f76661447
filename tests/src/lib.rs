//! The harness that boots real guests for the integration tests.
//!
//! The machines that run these tests cannot run an ordinary guest on their
//! own /dev/kvm, so every guest runs inside an L1 Linux under QEMU TCG with
//! nested SVM (resources/run-l1.sh). Inside L1 the host's files are visible
//! read-only at their usual paths, and one scratch directory per test is
//! shared read-write: disk images live there so the host can check what the
//! guest wrote after the VMM exits.
//!
//! The guest is Debian's stock kernel (resources/guest-kernel.sh) with a
//! busybox initramfs whose init runs a test script from `tests/guest/` and
//! powers off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// One L1 at a time: two TCG machines on two cores only slow each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The `vmm` binary of the same profile as this test (built by the test command).
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VMM_BIN") {
        return PathBuf::from(p);
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target_dir().join(profile).join("vmm");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build --release --bins)",
        p.display()
    );
    p
}

/// Directory of the cached guest kernel (vmlinuz + modules).
pub fn guest_kernel_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("resources/guest-kernel.sh"))
            .output()
            .expect("run resources/guest-kernel.sh");
        assert!(
            out.status.success(),
            "guest-kernel.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            s.lines()
                .last()
                .expect("guest-kernel.sh printed a path")
                .trim(),
        )
    })
    .clone()
}

pub fn guest_kernel() -> PathBuf {
    guest_kernel_dir().join("vmlinuz")
}

/// A fresh scratch directory for one test, shared read-write with L1.
pub fn scratch(name: &str) -> PathBuf {
    let d = target_dir().join("guest-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Builds a busybox initramfs running `tests/guest/<script>` with `modules` loaded.
pub fn initramfs(scratch: &Path, script: &str, modules: &[&str]) -> PathBuf {
    initramfs_with(scratch, script, modules, &[])
}

/// Like [`initramfs`], with extra host files copied in as `(source, destination)`.
pub fn initramfs_with(
    scratch: &Path,
    script: &str,
    modules: &[&str],
    files: &[(PathBuf, &str)],
) -> PathBuf {
    let out = scratch.join(format!("{script}.cpio.gz"));
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("resources/mkinitramfs.sh"));
    for (src, dst) in files {
        cmd.arg("--file").arg(format!("{}={dst}", src.display()));
    }
    let status = cmd
        .arg(&out)
        .arg(repo_root().join("tests/guest").join(script))
        .args(modules)
        .status()
        .expect("run mkinitramfs.sh");
    assert!(status.success(), "mkinitramfs.sh failed for {script}");
    out
}

/// Compiles `tests/guest/<source>` into a static guest binary in `scratch`.
pub fn guest_program(scratch: &Path, source: &str) -> PathBuf {
    let out = scratch.join(source.trim_end_matches(".c"));
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(repo_root().join("tests/guest").join(source))
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed for {source}");
    out
}

/// Creates a zero-filled disk image of `size` bytes.
pub fn disk_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create disk image");
    f.set_len(size).expect("size disk image");
}

/// What one L1 run produced.
pub struct L1Run {
    /// Everything the L1 console printed (the command's stdout and stderr).
    pub output: String,
    /// The command's exit status inside L1 (125: L1 did not report one).
    pub status: i32,
    pub elapsed: Duration,
}

impl L1Run {
    /// The value after `KEY=` on the first line that has it.
    pub fn value(&self, key: &str) -> Option<String> {
        value(self.output.lines(), key)
    }

    /// The numeric value of `key=` in the VMM's `counters: viommu intel` line.
    pub fn counter(&self, key: &str) -> u64 {
        self.output
            .lines()
            .filter(|l| l.contains("counters: viommu intel"))
            .find_map(|l| field(l, key))
            .unwrap_or_else(|| panic!("no counter {key}:\n{}", self.output))
    }

    /// The lines that start with `prefix` (run-l1.sh's `L1-…` evidence).
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.output.lines().any(|l| l.contains(needle))
    }
}

/// Runs `command` inside L1 with `scratch` shared read-write.
pub fn run_in_l1(scratch: &Path, command: &[String]) -> L1Run {
    run_in_l1_opts(scratch, &L1Options::default(), command)
}

/// Directory of the cached L1 kernel built with iommufd, the VFIO device
/// cdev and the kernel's iommufd mock (resources/l1-kernel.sh: built once,
/// then reused from the cache without any network access).
pub fn l1_kernel_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("resources/l1-kernel.sh"))
            .output()
            .expect("run resources/l1-kernel.sh");
        assert!(
            out.status.success(),
            "l1-kernel.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            s.lines()
                .last()
                .expect("l1-kernel.sh printed a path")
                .trim(),
        )
    })
    .clone()
}

/// What an L1 run needs beyond the scratch directory (resources/run-l1.sh).
#[derive(Debug, Clone, Default)]
pub struct L1Options {
    /// The L1 kernel (run-l1.sh's `L1_KERNEL_DIR`), e.g. [`l1_kernel_dir`];
    /// `None` boots Debian's.
    pub kernel_dir: Option<PathBuf>,
    /// run-l1.sh `--nvme IMG`.
    pub nvme: Option<PathBuf>,
    /// run-l1.sh `--nvme-native IMG`.
    pub nvme_native: Option<PathBuf>,
    /// L1's time limit in seconds (default 300; `L1_TIMEOUT` in the
    /// environment overrides both).
    pub timeout: Option<u64>,
    /// L1's vCPUs (run-l1.sh's `L1_SMP`, default 1: two expose the
    /// platform's memory corruption, see resources/README.md).
    pub vcpus: Option<u8>,
}

/// Set to `1` to let a guest run that reset or hung unexpectedly be rerun
/// once instead of failing the test: only for infrastructure trouble in L1
/// that has been shown not to be the VMM's. Every rerun is recorded in
/// [`retry_log`] either way.
pub const ALLOW_RETRY_ENV: &str = "VMM_TEST_ALLOW_RETRY";

/// The file where every rerun and every L1 irregularity of this build's
/// guest runs is recorded, one line each (`resources/test-all.sh` prints it
/// at the end, because libtest hides a passing test's stderr).
pub fn retry_log() -> PathBuf {
    target_dir().join("guest-tests").join("retries.log")
}

/// Appends one record to [`retry_log`] and says it on stderr.
fn record(kind: &str, scratch: &Path, detail: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    let line = format!("{kind} test={test} scratch={} {detail}", scratch.display());
    eprintln!("WARNING: {line}");
    let path = retry_log();
    let _ = std::fs::create_dir_all(path.parent().expect("retry log has a parent"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Why a run did not give the test a usable result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Irregular {
    /// L1 never reached the command (QEMU or L1 kernel trouble before the
    /// VMM ran): rerun automatically, recorded.
    L1NeverStarted,
    /// The command started and L1 gave no status (a hang in L2 or L1).
    Hung,
    /// The guest reset without asking to (VMM exit 3, no reboot marker).
    UnexpectedReset,
}

fn irregular(run: &L1Run) -> Option<Irregular> {
    if run.status == 125 && !run.has_line("L1-CMD-START") {
        Some(Irregular::L1NeverStarted)
    } else if run.status == 125 {
        Some(Irregular::Hung)
    } else if run.status == 3 && !run.has_line("GUEST-REBOOTING") {
        Some(Irregular::UnexpectedReset)
    } else {
        None
    }
}

/// Evidence that an irregular run was the test platform's failure, not the
/// VMM's: only then may [`ALLOW_RETRY_ENV`] rerun it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlatformFault {
    /// L1 itself stopped: its watchdog, a shell loop that prints
    /// `L1-WATCHDOG:` lines 40 s before the time limit, never ran. The VMM
    /// is a process of L1 and cannot keep L1's scheduler from running it;
    /// the one-vCPU L1 freezes this way about once in 30 runs with its vCPU
    /// inside L2 (resources/README.md).
    L1Frozen,
    /// L1 had more than one vCPU: QEMU's multi-threaded TCG under L1's KVM
    /// corrupts memory when L2 exits a lot, with QEMU/KVM as the L2 VMM as
    /// much as with this one (tests/guest/ecam-stress.sh reproduces it).
    MultiVcpuL1,
}

impl PlatformFault {
    fn name(self) -> &'static str {
        match self {
            PlatformFault::L1Frozen => "l1-frozen",
            PlatformFault::MultiVcpuL1 => "multi-vcpu-l1",
        }
    }
}

/// What, if anything, shows that `why` was the platform's doing. A hang
/// with L1 alive or a reset on a one-vCPU L1 has no such evidence: it is
/// the VMM's until shown otherwise.
fn platform_fault(why: Irregular, run: &L1Run, l1_vcpus: u8) -> Option<PlatformFault> {
    if why == Irregular::Hung && !run.has_line("L1-WATCHDOG:") {
        Some(PlatformFault::L1Frozen)
    } else if l1_vcpus > 1 {
        Some(PlatformFault::MultiVcpuL1)
    } else {
        None
    }
}

/// L1's vCPUs for a run with `opts` (the environment's `L1_SMP` wins, as
/// in run-l1.sh).
fn l1_vcpus(opts: &L1Options) -> u8 {
    std::env::var("L1_SMP")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(opts.vcpus)
        .unwrap_or(1)
}

/// What the harness does with an irregular run, and the word for it in
/// [`retry_log`].
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Rerun(String),
    Fail(String),
}

fn verdict(why: Irregular, platform: Option<PlatformFault>, allowed: bool) -> Verdict {
    let cause = match why {
        Irregular::L1NeverStarted => return Verdict::Rerun("l1-never-started".into()),
        Irregular::Hung => "hung",
        Irregular::UnexpectedReset => "unexpected-reset",
    };
    match platform {
        Some(p) if allowed => Verdict::Rerun(format!("{cause}:{}", p.name())),
        Some(p) => Verdict::Fail(format!("{cause}:{}", p.name())),
        None => Verdict::Fail(format!("{cause}:vmm-suspect")),
    }
}

/// Runs `command` inside L1 with `scratch` shared read-write, as `opts` says.
///
/// A run that did not give a result is never passed over silently:
/// - L1 never reached the command: rerun once, recorded in [`retry_log`];
/// - the command hung (no status within 300 s; the longest normal run takes
///   about two minutes) or the guest reset on its own: the test **fails**
///   with the cause and the console. With [`ALLOW_RETRY_ENV`] set to `1` it
///   is rerun once instead, recorded, but only where the evidence shows the
///   platform at fault ([`PlatformFault`]): a hang while L1 was alive, or a
///   reset on a one-vCPU L1, fails all the same.
///
/// A run whose L1 hung only after the command reported its status (run-l1.sh
/// stops it) keeps its result and is recorded too.
pub fn run_in_l1_opts(scratch: &Path, opts: &L1Options, command: &[String]) -> L1Run {
    let run = run_in_l1_once(scratch, opts, command);
    if run.has_line("run-l1: WARNING: L1 hung after the command finished") {
        record("l1-hung-after-command", scratch, "result kept");
    }
    let Some(why) = irregular(&run) else {
        return run;
    };
    let first = scratch.join("console-attempt1.log");
    let _ = std::fs::copy(scratch.join("console.log"), &first);
    let last: Vec<&str> = run
        .output
        .lines()
        .rev()
        .filter(|l| !l.starts_with("L1-QEMU-MONITOR:"))
        .take(3)
        .collect();
    let vmm: Vec<&str> = run.output.lines().filter(|l| l.contains("vmm:")).collect();
    let detail = match why {
        Irregular::L1NeverStarted => format!("last={last:?}"),
        Irregular::Hung => {
            // Where L1's vCPUs were at the time limit (run-l1.sh): an L2
            // address means the vCPU was in guest mode.
            let rips = run.lines_starting("L1-QEMU-MONITOR: RIP=");
            format!("last={last:?} l1_rips={rips:?}")
        }
        Irregular::UnexpectedReset => {
            // L1 KVM's last events of the vCPU that shut down (run-l1.sh).
            let kvm = run.lines_starting("L1-KVM-SHUTDOWN:");
            format!("vmm={vmm:?} kvm={kvm:?}")
        }
    };
    let allowed = std::env::var(ALLOW_RETRY_ENV).is_ok_and(|v| v == "1");
    let vcpus = l1_vcpus(opts);
    let platform = platform_fault(why, &run, vcpus);
    let verdict = verdict(why, platform, allowed);
    let kind = match &verdict {
        Verdict::Rerun(k) => format!("rerun:{k}"),
        Verdict::Fail(k) => format!("failed:{k}"),
    };
    record(
        &kind,
        scratch,
        &format!("l1_vcpus={vcpus} console={} {detail}", first.display()),
    );
    if let Verdict::Fail(_) = verdict {
        let what = if why == Irregular::Hung {
            "hung"
        } else {
            "reset unexpectedly"
        };
        let rule = match platform {
            Some(_) => format!("{ALLOW_RETRY_ENV}=1 reruns it once"),
            None => format!("no evidence of a platform fault: fails even with {ALLOW_RETRY_ENV}=1"),
        };
        panic!(
            "the guest run {what} ({kind}); console in {} ({rule}):\n{}",
            first.display(),
            run.output
        );
    }
    let again = run_in_l1_once(scratch, opts, command);
    if let Some(why2) = irregular(&again) {
        record("failed:after-rerun", scratch, &format!("second={why2:?}"));
    }
    again
}

fn run_in_l1_once(scratch: &Path, opts: &L1Options, command: &[String]) -> L1Run {
    let start = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("resources/run-l1.sh"))
        .arg("--disk-scratch")
        .arg(scratch);
    if let Some(dir) = &opts.kernel_dir {
        cmd.env("L1_KERNEL_DIR", dir);
    }
    if let Some(image) = &opts.nvme {
        cmd.arg("--nvme").arg(image);
    }
    if std::env::var_os("L1_TIMEOUT").is_none() {
        cmd.env("L1_TIMEOUT", opts.timeout.unwrap_or(300).to_string());
    }
    if let (Some(n), None) = (opts.vcpus, std::env::var_os("L1_SMP")) {
        cmd.env("L1_SMP", n.to_string());
    }
    if let Some(image) = &opts.nvme_native {
        cmd.arg("--nvme-native").arg(image);
    }
    let out = cmd
        .arg("--")
        .args(command)
        .output()
        .expect("run resources/run-l1.sh");
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    let run = L1Run {
        output,
        status: out.status.code().unwrap_or(-1),
        elapsed: start.elapsed(),
    };
    // Keep the console log next to the disk images for post-mortems.
    let _ = std::fs::write(scratch.join("console.log"), &run.output);
    run
}

/// The VMM command line for a guest.
pub struct VmmArgs {
    pub memory: &'static str,
    pub cpus: u8,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub disks: Vec<String>,
    pub extra: Vec<String>,
}

impl VmmArgs {
    pub fn new(initramfs: PathBuf) -> Self {
        VmmArgs {
            memory: "512M",
            cpus: 1,
            initramfs,
            cmdline: "console=ttyS0 quiet panic=-1".into(),
            disks: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn command(&self) -> Vec<String> {
        let mut c = vec![
            vmm_binary().display().to_string(),
            "--kernel".into(),
            guest_kernel().display().to_string(),
            "--initramfs".into(),
            self.initramfs.display().to_string(),
            "--cmdline".into(),
            self.cmdline.clone(),
            "--memory".into(),
            self.memory.into(),
            "--cpus".into(),
            self.cpus.to_string(),
        ];
        for d in &self.disks {
            c.push("--disk".into());
            c.push(d.clone());
        }
        c.extend(self.extra.iter().cloned());
        c
    }
}

/// The number in the word `key=N` of `line` (the VMM's counters lines, the
/// guests' result lines).
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The text after `KEY=` (up to whitespace; None if there is none) on the
/// first of `lines` that has it, anywhere in the line.
pub fn value<'a>(lines: impl IntoIterator<Item = &'a str>, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    lines.into_iter().find_map(|l| {
        let i = l.find(&pat)?;
        l[i + pat.len()..]
            .split_whitespace()
            .next()
            .map(str::to_string)
    })
}

/// MiB/s from a guest benchmark's "bytes=N seconds=S" line.
pub fn mib_per_s(line: &str) -> Option<f64> {
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    let (bytes, secs) = (field("bytes=")?, field("seconds=")?);
    (secs > 0.0).then(|| bytes / secs / (1 << 20) as f64)
}

/// SHA-256 of the first `len` bytes of `path`, as sha256sum prints it.
pub fn sha256_prefix(path: &Path, len: u64) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {len} '{}' | sha256sum | cut -d' ' -f1",
            path.display()
        ))
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The kbuild directory of the guest kernel's headers
/// (resources/guest-headers.sh), for building guest modules.
pub fn guest_headers_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("resources/guest-headers.sh"))
            .output()
            .expect("run resources/guest-headers.sh");
        assert!(
            out.status.success(),
            "guest-headers.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            s.lines()
                .last()
                .expect("guest-headers.sh printed a path")
                .trim(),
        )
    })
    .clone()
}

/// Builds the out-of-tree guest module in `tests/guest/<dir>` (a Kbuild
/// `Makefile`) from a copy in `scratch/<dir>`; returns its `.ko`. The copy
/// also gives [`guest_program`] the `scratch/<dir>` it needs for sources in
/// `tests/guest/<dir>/`.
pub fn guest_module(scratch: &Path, dir: &str) -> PathBuf {
    let src = repo_root().join("tests/guest").join(dir);
    let build = scratch.join(dir);
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).expect("create module build dir");
    for e in std::fs::read_dir(&src).expect("read module source dir") {
        let e = e.expect("module source entry");
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            std::fs::copy(e.path(), build.join(e.file_name())).expect("copy module source");
        }
    }
    let out = Command::new("make")
        .arg("-C")
        .arg(guest_headers_dir())
        .arg(format!("M={}", build.display()))
        // Test modules need no BTF; without it the host needs no pahole.
        .arg("CONFIG_DEBUG_INFO_BTF_MODULES=")
        .arg("modules")
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "module build of tests/guest/{dir} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kos: Vec<PathBuf> = std::fs::read_dir(&build)
        .expect("read module build dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ko"))
        .collect();
    assert_eq!(kos.len(), 1, "expected one .ko in {}", build.display());
    kos[0].clone()
}

/// The shared libraries `binary` loads (from ldd), to copy beside it.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The initramfs of a guest that runs the VMM itself (the 7.2 kernel of
/// [`l1_kernel_dir`] as a guest of the VMM): `script` as init, the vmm
/// binary (stripped: the initramfs holds it in RAM) at /bin/vmm with its
/// shared libraries, /bin/vfio-bind, and the innermost guest's kernel and
/// initramfs at /l3/vmlinuz and /l3/initrd.cpio.gz.
pub fn self_hosted_initramfs(scratch: &Path, script: &str, l3_initrd: &Path) -> PathBuf {
    let inner = scratch.join("vmm");
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(vmm_binary())
        .arg(&inner)
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy --strip-all");
    let mut files: Vec<(PathBuf, String)> = vec![
        (inner.clone(), "/bin/vmm".into()),
        (
            repo_root().join("tests/guest/vfio-bind.sh"),
            "/bin/vfio-bind".into(),
        ),
        (guest_kernel(), "/l3/vmlinuz".into()),
        (l3_initrd.to_path_buf(), "/l3/initrd.cpio.gz".into()),
    ];
    for lib in shared_libraries(&inner) {
        let dst = lib.display().to_string();
        files.push((lib, dst));
    }
    let files: Vec<(PathBuf, &str)> = files.iter().map(|(s, d)| (s.clone(), d.as_str())).collect();
    initramfs_with(scratch, script, &[], &files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: i32, lines: &[&str]) -> L1Run {
        L1Run {
            output: lines.join("\n"),
            status,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn an_l1_that_never_started_is_always_rerun() {
        let r = run(125, &["qemu-system-x86_64: something"]);
        let why = irregular(&r).unwrap();
        assert_eq!(why, Irregular::L1NeverStarted);
        assert_eq!(
            verdict(why, platform_fault(why, &r, 1), false),
            Verdict::Rerun("l1-never-started".into())
        );
    }

    #[test]
    fn a_frozen_l1_is_rerun_only_when_allowed() {
        let r = run(
            125,
            &["L1-CMD-START", "L1-QEMU-MONITOR: RIP=ffffffff81000000"],
        );
        let why = irregular(&r).unwrap();
        let p = platform_fault(why, &r, 1);
        assert_eq!(p, Some(PlatformFault::L1Frozen));
        assert_eq!(
            verdict(why, p, true),
            Verdict::Rerun("hung:l1-frozen".into())
        );
        assert_eq!(
            verdict(why, p, false),
            Verdict::Fail("hung:l1-frozen".into())
        );
    }

    #[test]
    fn a_hang_while_l1_ran_fails_even_when_reruns_are_allowed() {
        let r = run(
            125,
            &[
                "L1-CMD-START",
                "L1-WATCHDOG: the command is still running after 260 s",
            ],
        );
        let why = irregular(&r).unwrap();
        let p = platform_fault(why, &r, 1);
        assert_eq!(p, None);
        assert_eq!(
            verdict(why, p, true),
            Verdict::Fail("hung:vmm-suspect".into())
        );
    }

    #[test]
    fn a_reset_fails_on_one_l1_vcpu_and_may_be_rerun_on_two() {
        let r = run(3, &["L1-CMD-START", "vmm: guest reset"]);
        let why = irregular(&r).unwrap();
        assert_eq!(why, Irregular::UnexpectedReset);
        assert_eq!(
            verdict(why, platform_fault(why, &r, 1), true),
            Verdict::Fail("unexpected-reset:vmm-suspect".into())
        );
        assert_eq!(
            verdict(why, platform_fault(why, &r, 2), true),
            Verdict::Rerun("unexpected-reset:multi-vcpu-l1".into())
        );
        assert_eq!(
            irregular(&run(3, &["L1-CMD-START", "GUEST-REBOOTING"])),
            None,
            "an asked-for reboot is regular"
        );
    }
}
