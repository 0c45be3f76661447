//! The command line: a contract other tools drive, so names are stable.

use std::path::PathBuf;

use clap::Parser;
use viommu::intel::VtdConfig;

/// A virtual machine monitor with an emulated IOMMU.
#[derive(Parser, Debug)]
#[command(name = "vmm", version, about)]
pub struct Cli {
    /// Linux bzImage to boot.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Guest RAM, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs (1-254).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_cpus)]
    pub cpus: u8,
    /// A virtio-blk disk: path=FILE[,readonly=on][,iommu=on]. Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub disk: Vec<DiskConfig>,
    /// An extra device: dma-test[,iommu=on]. dma-test is a test endpoint for
    /// this project's tests, not a device for real guests: it DMAs on
    /// command, reading or writing any address the guest writes into its
    /// registers, so tests can watch what the IOMMU does with it.
    /// Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_device)]
    pub device: Vec<DeviceConfig>,
    /// A PCI device passed through with VFIO: PATH[,iommu=on] where PATH is
    /// its VFIO cdev (/dev/vfio/devices/vfioN) or its sysfs directory; the
    /// device must be bound to vfio-pci. iommu=on puts it behind the vIOMMU.
    /// Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_vfio)]
    pub vfio: Vec<VfioConfig>,
    /// An emulated IOMMU: intel[,scalable=on|off][,first-stage=on|off]
    /// [,caching-mode=on|off][,intremap=on|off][,aw-bits=39|48|57][,pasid-bits=N]
    /// [,nested=auto|on|off][,offer-nesting=on|off]
    #[arg(long, value_name = "SPEC", value_parser = parse_viommu)]
    pub viommu: Option<ViommuConfig>,
    /// Print device and IOMMU counters to stderr when the VMM exits.
    #[arg(long)]
    pub counters: bool,
}

/// How passthrough devices behind the vIOMMU get their translations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Nesting {
    /// Nested hardware page tables where the host offers them, else shadow.
    #[default]
    Auto,
    /// Nested page tables or a one-line error.
    On,
    /// Always shadow (caching mode).
    Off,
}

/// `--viommu`: the model's configuration plus what only the VMM decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViommuConfig {
    pub vtd: VtdConfig,
    pub nested: Nesting,
    /// first-stage= and caching-mode= as given (None: default), because a
    /// passthrough device on a host without nesting changes the defaults
    /// but must not silently override an explicit choice.
    pub first_stage_given: Option<bool>,
    pub caching_mode_given: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioConfig {
    pub path: PathBuf,
    pub iommu: bool,
    /// Test-only: replaces the PASID width the host IOMMU reports for the
    /// device (x-pasid-width=N), to check the synthesized PASID capability
    /// with devices that have none. Never needed in production.
    pub test_pasid_width: Option<u8>,
}

/// Parses `PATH[,iommu=on|off][,x-pasid-width=N]`.
pub fn parse_vfio(s: &str) -> Result<VfioConfig, String> {
    let mut parts = s.split(',');
    let path = match parts.next() {
        Some(p) if !p.is_empty() && !p.contains('=') => PathBuf::from(p),
        Some(p) if p.starts_with("path=") && p.len() > 5 => PathBuf::from(&p[5..]),
        _ => return Err("vfio spec needs a device path first (PATH[,iommu=on])".into()),
    };
    let mut c = VfioConfig {
        path,
        iommu: false,
        test_pasid_width: None,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("iommu", v)) => c.iommu = parse_on_off("iommu", v)?,
            Some(("x-pasid-width", v)) => {
                let n: u8 = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= 20)
                    .ok_or_else(|| format!("x-pasid-width={v}: expected 0-20"))?;
                c.test_pasid_width = Some(n);
            }
            _ => return Err(format!("unknown vfio option '{part}'")),
        }
    }
    Ok(c)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
    pub iommu: bool,
}

/// Smallest and largest guest RAM accepted.
const MIN_MEMORY: u64 = 64 << 20;
const MAX_MEMORY: u64 = 1 << 40;

/// Parses `512M`, `2G`, `1048576K` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "'{s}' is not a size like 512M or 2G (unknown suffix; use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 512M or 2G"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))?;
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        return Err(format!("memory size '{s}' must be between 64M and 1T"));
    }
    if bytes % 4096 != 0 {
        return Err(format!("memory size '{s}' is not a multiple of 4 KiB"));
    }
    Ok(bytes)
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=254).contains(&n) => Ok(n as u8),
        _ => Err(format!("'{s}' is not a CPU count between 1 and 254")),
    }
}

fn parse_on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={v}: expected on or off")),
    }
}

/// Parses `path=FILE[,readonly=on][,iommu=on]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut path = None;
    let mut readonly = false;
    let mut iommu = false;
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' in disk spec is not key=value"))?;
        match k {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "readonly" => readonly = parse_on_off(k, v)?,
            "iommu" => iommu = parse_on_off(k, v)?,
            _ => return Err(format!("unknown or empty disk option '{part}'")),
        }
    }
    let path = path.ok_or("disk spec needs path=FILE")?;
    Ok(DiskConfig {
        path,
        readonly,
        iommu,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// The test endpoint of `devices::dma_test`, behind the vIOMMU when
    /// `iommu` is set.
    DmaTest { iommu: bool },
}

/// Parses `dma-test[,iommu=on|off]`.
pub fn parse_device(s: &str) -> Result<DeviceConfig, String> {
    let mut parts = s.split(',');
    match parts.next() {
        Some("dma-test") => {}
        Some(other) => return Err(format!("unknown device '{other}' (supported: dma-test)")),
        None => return Err("empty device spec".into()),
    }
    let mut iommu = false;
    for part in parts {
        match part.split_once('=') {
            Some(("iommu", v)) => iommu = parse_on_off("iommu", v)?,
            _ => return Err(format!("unknown dma-test option '{part}'")),
        }
    }
    Ok(DeviceConfig::DmaTest { iommu })
}

/// Parses `intel[,key=value]...`.
pub fn parse_viommu(s: &str) -> Result<ViommuConfig, String> {
    let mut parts = s.split(',');
    match parts.next() {
        Some("intel") => {}
        Some(other) => return Err(format!("unknown IOMMU model '{other}' (supported: intel)")),
        None => return Err("empty IOMMU spec".into()),
    }
    let mut c = VtdConfig::default();
    let mut first_stage_given = None;
    let mut caching_mode_given = None;
    let mut nested = Nesting::Auto;
    for part in parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' in viommu spec is not key=value"))?;
        match k {
            "scalable" => c.scalable = parse_on_off(k, v)?,
            "first-stage" => {
                c.first_stage = parse_on_off(k, v)?;
                first_stage_given = Some(c.first_stage);
            }
            "caching-mode" => {
                c.caching_mode = parse_on_off(k, v)?;
                caching_mode_given = Some(c.caching_mode);
            }
            "nested" => {
                nested = match v {
                    "auto" => Nesting::Auto,
                    "on" => Nesting::On,
                    "off" => Nesting::Off,
                    _ => return Err(format!("nested={v}: expected auto, on or off")),
                }
            }
            "intremap" => c.intremap = parse_on_off(k, v)?,
            "offer-nesting" => c.offer_nesting = parse_on_off(k, v)?,
            "aw-bits" => {
                c.aw_bits = v
                    .parse()
                    .map_err(|_| format!("aw-bits={v}: expected 39, 48 or 57"))?
            }
            "pasid-bits" => {
                c.pasid_bits = v
                    .parse()
                    .map_err(|_| format!("pasid-bits={v}: expected 0-20"))?
            }
            _ => return Err(format!("unknown viommu option '{k}'")),
        }
    }
    // Legacy mode has no first stage: the default follows scalable, an
    // explicit first-stage=on with scalable=off is a contradiction.
    if !c.scalable && first_stage_given.is_none() {
        c.first_stage = false;
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(ViommuConfig {
        vtd: c,
        nested,
        first_stage_given,
        caching_mode_given,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("131072K"), Ok(128 << 20));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("1M").is_err(), "too small");
        assert!(parse_size("99999999999999G").is_err(), "overflow");
        assert!(parse_size("67108865").is_err(), "not page aligned");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("4"), Ok(4));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("255").is_err());
        assert!(parse_cpus("many").is_err());
    }

    #[test]
    fn disks() {
        assert_eq!(
            parse_disk("path=/a.img,readonly=on,iommu=on"),
            Ok(DiskConfig {
                path: "/a.img".into(),
                readonly: true,
                iommu: true
            })
        );
        assert!(parse_disk("readonly=on").is_err());
        assert!(parse_disk("path=").is_err());
        assert!(parse_disk("path=/a,readonly=yes").is_err());
        assert!(parse_disk("path=/a,bogus=1").is_err());
        assert!(parse_disk("/a.img").is_err());
    }

    #[test]
    fn device_specs() {
        assert_eq!(
            parse_device("dma-test"),
            Ok(DeviceConfig::DmaTest { iommu: false })
        );
        assert_eq!(
            parse_device("dma-test,iommu=on"),
            Ok(DeviceConfig::DmaTest { iommu: true })
        );
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("dma-test,iommu=yes").is_err());
        assert!(parse_device("dma-test,speed=9").is_err());
    }

    #[test]
    fn help_says_dma_test_is_a_test_device() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        for help in [cmd.render_help(), cmd.render_long_help()] {
            let text = help
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(text.contains("dma-test is a test endpoint"), "{text}");
            assert!(text.contains("DMAs on command"), "{text}");
        }
    }

    #[test]
    fn vfio_specs() {
        let c = parse_vfio("/dev/vfio/devices/vfio0").unwrap();
        assert_eq!(c.path, PathBuf::from("/dev/vfio/devices/vfio0"));
        assert!(!c.iommu && c.test_pasid_width.is_none());
        let c = parse_vfio("/sys/bus/pci/devices/0000:00:10.0,iommu=on,x-pasid-width=8").unwrap();
        assert!(c.iommu);
        assert_eq!(c.test_pasid_width, Some(8));
        assert_eq!(
            parse_vfio("path=/dev/x").unwrap().path,
            PathBuf::from("/dev/x")
        );
        assert!(parse_vfio("").is_err());
        assert!(parse_vfio("iommu=on").is_err());
        assert!(parse_vfio("/dev/x,iommu=yes").is_err());
        assert!(parse_vfio("/dev/x,x-pasid-width=21").is_err());
        assert!(parse_vfio("/dev/x,bogus=1").is_err());
    }

    #[test]
    fn viommu_specs() {
        let v = parse_viommu("intel").unwrap();
        assert_eq!(v.nested, Nesting::Auto);
        assert_eq!((v.first_stage_given, v.caching_mode_given), (None, None));
        let c = v.vtd;
        assert_eq!(c, VtdConfig::default());
        assert!(c.scalable && c.first_stage && c.intremap && !c.caching_mode);
        assert_eq!((c.aw_bits, c.pasid_bits), (48, 0));
        let c = parse_viommu("intel,scalable=off").unwrap().vtd;
        assert!(!c.scalable && !c.first_stage);
        let v = parse_viommu("intel,first-stage=on,nested=off").unwrap();
        assert_eq!((v.first_stage_given, v.nested), (Some(true), Nesting::Off));
        assert_eq!(parse_viommu("intel,nested=on").unwrap().nested, Nesting::On);
        assert!(parse_viommu("intel,nested=maybe").is_err());
        // offer-nesting is what the guest sees, nested= what the host does.
        let v = parse_viommu("intel,offer-nesting=on").unwrap();
        assert!(v.vtd.offer_nesting && v.nested == Nesting::Auto);
        assert!(!parse_viommu("intel").unwrap().vtd.offer_nesting);
        let e = parse_viommu("intel,first-stage=off,offer-nesting=on").unwrap_err();
        assert!(e.contains("offer-nesting=on needs"), "{e}");
        assert!(parse_viommu("intel,scalable=off,offer-nesting=on").is_err());
        let c = parse_viommu("intel,caching-mode=on,aw-bits=39,pasid-bits=20")
            .unwrap()
            .vtd;
        assert!(c.caching_mode);
        assert_eq!((c.aw_bits, c.pasid_bits), (39, 20));
        assert!(parse_viommu("intel,scalable=off,first-stage=on").is_err());
        assert!(parse_viommu("intel,scalable=off,pasid-bits=8").is_err());
        assert!(parse_viommu("intel,aw-bits=40").is_err());
        assert!(parse_viommu("intel,pasid-bits=21").is_err());
        assert!(parse_viommu("amd").is_err());
        assert!(parse_viommu("intel,bogus=on").is_err());
        assert!(parse_viommu("intel,intremap=maybe").is_err());
    }

    #[test]
    fn full_command_line() {
        let cli = Cli::try_parse_from([
            "vmm",
            "--kernel",
            "bz",
            "--memory",
            "1G",
            "--cpus",
            "4",
            "--disk",
            "path=d.img",
            "--disk",
            "path=e.img,iommu=on",
        ])
        .unwrap();
        assert_eq!(cli.memory, 1 << 30);
        assert_eq!(cli.cpus, 4);
        assert_eq!(cli.disk.len(), 2);
        assert!(Cli::try_parse_from(["vmm"]).is_err(), "kernel is required");
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "0"]).is_err());
    }
}
