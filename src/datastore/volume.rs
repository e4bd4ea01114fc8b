//! The data volume: checks, format only when blank, mount with an fstab entry (also at agent start), online grow, unmount, file-system stats.

use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::process::Command;

use crate::config::VolumeSettings;
use crate::datastore::{Error, Result};

/// Types a device may hold that are file systems the agent mounts; anything else blkid names
/// (swap, LVM, RAID, LUKS, a partition table) means the device is in use and is left alone.
const MOUNTABLE: &[&str] = &["ext2", "ext3", "ext4", "xfs"];

/// How long mount, umount, blkid, findmnt and the grow tools may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The volume `prepare` set up, kept in the agent's state: Redis's data lives on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub device: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub uuid: Option<String>,
}

/// A checked block device.
#[derive(Debug, Clone)]
pub struct Device {
    pub path: String,
    /// `major:minor`, as findmnt reports it.
    pub majmin: (u64, u64),
}

/// What `blkid -p` finds on a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub fstype: Option<String>,
    pub uuid: Option<String>,
    pub pttype: Option<String>,
}

/// One line of `findmnt -rn -o MAJ:MIN,SOURCE,TARGET,FSTYPE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub majmin: (u64, u64),
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// What `prepare` will do with its volume, decided before anything changes.
#[derive(Debug)]
pub struct Plan {
    device: Device,
    mount_point: PathBuf,
    /// None: blank, to be formatted with `[volume] fstype`.
    existing: Option<Probe>,
    mounted_here: bool,
}

impl Plan {
    /// Whether the device is still to be mounted (Redis must not run from the mount point meanwhile).
    pub fn mounts(&self) -> bool {
        !self.mounted_here
    }
}

/// What the start-up mount of the data volume (`Volumes::mount_at_boot`) found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMount {
    /// No `[volume] device_path`.
    Off,
    /// The device does not exist: no volume attached.
    NoDevice,
    /// The device holds no file system: `prepare` formats it.
    Blank,
    /// The device is mounted at the mount point already (fstab, an earlier agent).
    AlreadyMounted,
    /// Mounted now.
    Mounted { fstype: String },
}

/// The guest's volume operations, with the operator's settings and the user Redis runs as.
pub struct Volumes {
    settings: VolumeSettings,
    owner: String,
}

impl Volumes {
    pub fn new(settings: VolumeSettings, owner: &str) -> Volumes {
        Volumes { settings, owner: owner.into() }
    }

    /// A mount point from an RPC: absolute, plain, and inside `[volume] allowed_mount_roots`.
    pub fn mount_point(&self, raw: &str) -> Result<PathBuf> {
        let refuse = |why: &str| Err(Error::Refused(format!("mount_point '{}' {why}; nothing was changed", raw.escape_debug())));
        if raw.is_empty() || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return refuse("must be a non-empty path without spaces or control characters");
        }
        let path = Path::new(raw);
        if !path.is_absolute() {
            return refuse("is not an absolute path");
        }
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return refuse("must not contain '.' or '..'");
        }
        let path: PathBuf = path.components().collect();
        let roots = &self.settings.allowed_mount_roots;
        let allowed = |p: &Path| roots.iter().any(|r| p.starts_with(r) || p.starts_with(canonical_prefix(r)));
        // Symbolic links on the way must not lead outside the roots either.
        if !allowed(&path) || !allowed(&canonical_prefix(&path)) {
            let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            return refuse(&format!("is outside the allowed mount roots ({}; [volume] allowed_mount_roots)", list.join(", ")));
        }
        if path.exists() && !path.is_dir() {
            return refuse("exists and is not a directory");
        }
        Ok(path)
    }

    /// Checks `prepare`'s volume; changes nothing. A device already mounted at the mount point
    /// (a retried prepare) is accepted as it is.
    pub async fn plan(&self, device: &str, mount_point: &str) -> Result<Plan> {
        let mount_point = self.mount_point(mount_point)?;
        let device = block_device(device)?;
        let mounts = mounts().await?;
        if let Some(m) = mounted_at(&mounts, &mount_point) {
            if m.majmin == device.majmin {
                let existing = probe(&device).await?;
                return Ok(Plan { device, mount_point, existing, mounted_here: true });
            }
        }
        self.check_free(&device, &mount_point, &mounts)?;
        let existing = probe(&device).await?;
        if let Some(p) = &existing {
            mountable(&device, p)?;
        }
        Ok(Plan { device, mount_point, existing, mounted_here: false })
    }

    /// Formats a blank device, moves what the mount point held onto it, mounts it, records it in
    /// fstab and gives it to Redis's user. Returns what to keep in the agent's state.
    pub async fn apply(&self, plan: Plan) -> Result<VolumeRecord> {
        let Plan { device, mount_point, existing, mounted_here } = plan;
        let formatted = existing.is_none();
        let found = match existing {
            Some(p) => p,
            None => {
                self.format(&device).await?;
                let p = probe(&device).await?.unwrap_or_default();
                if p.fstype.as_deref() != Some(self.settings.fstype.as_str()) {
                    return Err(Error::Service(format!("mkfs ran, yet blkid finds no {} file system on {}", self.settings.fstype, device.path)));
                }
                p
            }
        };
        let fstype = found.fstype.clone().unwrap_or_else(|| self.settings.fstype.clone());
        if !mounted_here {
            if formatted && dir_has_entries(&mount_point) {
                self.migrate(&device, &fstype, &mount_point).await?;
            }
            self.mount_now(&device, &fstype, &mount_point).await?;
        }
        self.write_fstab(&device, found.uuid.as_deref(), &fstype, &mount_point)?;
        self.give_to_owner(&mount_point)?;
        tracing::info!(device = %device.path, mount_point = %mount_point.display(), %fstype, formatted, "volume ready");
        Ok(VolumeRecord { device: device.path, mount_point, fstype, uuid: found.uuid })
    }

    /// The checked device and mount point, and whether that device is already mounted there
    /// (when not, both must be free).
    async fn locate(&self, device: &str, mount_point: &str) -> Result<(Device, PathBuf, bool)> {
        let mount_point = self.mount_point(mount_point)?;
        let device = block_device(device)?;
        let mounts = mounts().await?;
        let here = mounted_at(&mounts, &mount_point).is_some_and(|m| m.majmin == device.majmin);
        if !here {
            self.check_free(&device, &mount_point, &mounts)?;
        }
        Ok((device, mount_point, here))
    }

    /// `mount_volume`: mounts a device that holds a file system (never formats).
    pub async fn mount(&self, device: &str, mount_point: &str, write_to_fstab: bool) -> Result<()> {
        let (device, mount_point, here) = self.locate(device, mount_point).await?;
        let found = probe(&device).await?.ok_or_else(|| {
            Error::Refused(format!("{} holds no file system; mount_volume never formats (prepare does); nothing was changed", device.path))
        })?;
        let fstype = mountable(&device, &found)?;
        if !here {
            self.mount_now(&device, &fstype, &mount_point).await?;
        }
        if write_to_fstab {
            self.write_fstab(&device, found.uuid.as_deref(), &fstype, &mount_point)?;
        }
        Ok(())
    }

    /// At agent start, before the state file (kept on the volume) is read: mounts `[volume]
    /// device_path` at `mount_point`, as Trove's guest does: a rebuilt server gets its volume back
    /// unmounted. With `mount_volume`'s checks (a device mounted nowhere and not held, a mount
    /// point inside the allowed roots with nothing mounted on it, a file system the agent mounts);
    /// never formats: a blank device is left to `prepare`. The mount is recorded in fstab.
    pub async fn mount_at_boot(&self) -> Result<BootMount> {
        let (device, mount_point) = (self.settings.device_path.as_str(), self.settings.mount_point.as_str());
        if device.is_empty() {
            return Ok(BootMount::Off);
        }
        if matches!(std::fs::metadata(device), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            return Ok(BootMount::NoDevice);
        }
        let (device, mount_point, here) = self.locate(device, mount_point).await?;
        if here {
            return Ok(BootMount::AlreadyMounted);
        }
        let Some(found) = probe(&device).await? else { return Ok(BootMount::Blank) };
        let fstype = mountable(&device, &found)?;
        self.mount_now(&device, &fstype, &mount_point).await?;
        // Mounted: the state can be read. What follows only helps the next boot and Redis's user.
        if let Err(error) = self.write_fstab(&device, found.uuid.as_deref(), &fstype, &mount_point) {
            tracing::warn!(%error, "the data volume is mounted, but not recorded in fstab");
        }
        if let Err(error) = self.give_to_owner(&mount_point) {
            tracing::warn!(%error, "the data volume is mounted, but its root was not given to redis's user");
        }
        Ok(BootMount::Mounted { fstype })
    }

    /// Why Redis's data is not where a rebuild expects it: the start-up volume (`[volume]
    /// device_path`) exists and holds a file system, yet is not mounted at its mount point (the
    /// start-up mount failed). None when none is configured or attached, it is blank, or it is there.
    pub async fn boot_volume_missing(&self) -> Result<Option<String>> {
        let (raw, mount_point) = (self.settings.device_path.as_str(), Path::new(&self.settings.mount_point));
        if raw.is_empty() || matches!(std::fs::metadata(raw), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            return Ok(None);
        }
        let device = block_device(raw)?;
        if mounted_at(&mounts().await?, mount_point).is_some_and(|m| m.majmin == device.majmin) || probe(&device).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(format!(
            "the data volume {raw} holds a file system but is not mounted at {} (the agent mounts it when it starts; see its log): redis is not started on the directory beneath it; nothing was changed",
            mount_point.display()
        )))
    }

    /// `unmount_volume`: unmounts the mount point (nothing to do when nothing is mounted there).
    /// With `device`, what is mounted there must be that device.
    pub async fn unmount(&self, device: Option<&str>, mount_point: &str) -> Result<()> {
        let mount_point = self.mount_point(mount_point)?;
        let device = device.map(block_device).transpose()?;
        let mounts = mounts().await?;
        let Some(m) = mounted_at(&mounts, &mount_point) else { return Ok(()) };
        if let Some(d) = device.filter(|d| d.majmin != m.majmin) {
            return Err(Error::Refused(format!(
                "{} is mounted at {}, not {}; nothing was changed",
                m.source,
                mount_point.display(),
                d.path
            )));
        }
        umount(&mount_point).await
    }

    /// `resize_fs`: grows the file system to the device's size, online when it is mounted at
    /// `mount_point` (resize2fs for ext, xfs_growfs for xfs).
    pub async fn resize(&self, device: &str, mount_point: &str) -> Result<()> {
        let (device, mount_point, here) = self.locate(device, mount_point).await?;
        let found = probe(&device).await?.ok_or_else(|| Error::Refused(format!("{} holds no file system to resize; nothing was changed", device.path)))?;
        let fstype = mountable(&device, &found)?;
        if fstype == "xfs" {
            if here {
                return run("xfs_growfs", &[os(&mount_point)], TOOL_TIMEOUT).await.map(drop);
            }
            // xfs grows only while mounted.
            let tmp = TempMount::new(&mount_point)?;
            self.mount_now(&device, &fstype, tmp.path()).await?;
            let grown = run("xfs_growfs", &[os(tmp.path())], TOOL_TIMEOUT).await;
            let unmounted = umount(tmp.path()).await;
            return grown.and(unmounted);
        }
        if !here {
            e2fsck(&device).await?;
        }
        let grown = run("resize2fs", &[device.path.as_str().into()], Duration::from_secs(self.settings.format_timeout.max(120))).await;
        match grown {
            // The kernel's online resize needs CAP_SYS_RESOURCE (containers often lack it).
            Err(Error::Service(m)) if here && m.contains("Permission denied") => Err(Error::Service(format!(
                "{m}; growing a mounted file system needs CAP_SYS_RESOURCE: give the agent that capability, or resize offline (stop_db, unmount_volume, resize_fs, mount_volume)"
            ))),
            other => other.map(drop),
        }
    }

    /// Whether `record`'s file system is the one mounted at its mount point.
    pub async fn is_mounted(&self, record: &VolumeRecord) -> Result<bool> {
        let mounts = mounts().await?;
        let Some(m) = mounted_at(&mounts, &record.mount_point) else { return Ok(false) };
        match (&record.uuid, std::fs::metadata(&record.device)) {
            (_, Ok(meta)) if majmin(meta.rdev()) == m.majmin => Ok(true),
            (Some(uuid), _) => Ok(probe_path(&m.source).await.ok().flatten().and_then(|p| p.uuid).as_deref() == Some(uuid.as_str())),
            (None, _) => Ok(false),
        }
    }

    /// Refuses a device mounted anywhere, a mount point holding another mount, or a device held
    /// by the kernel (device mapper, RAID, another exclusive opener).
    fn check_free(&self, device: &Device, mount_point: &Path, mounts: &[Mount]) -> Result<()> {
        if let Some(m) = mounts.iter().find(|m| m.majmin == device.majmin) {
            return Err(Error::Refused(format!("{} is in use: mounted at {}; nothing was changed", device.path, m.target.display())));
        }
        if let Some(m) = mounted_at(mounts, mount_point) {
            return Err(Error::Refused(format!("{} already has {} mounted on it; nothing was changed", mount_point.display(), m.source)));
        }
        // The kernel refuses an exclusive open of a device that is mounted or held.
        if let Err(e) = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_EXCL).open(&device.path) {
            return Err(Error::Refused(format!("{} is in use ({e}); nothing was changed", device.path)));
        }
        Ok(())
    }

    async fn format(&self, device: &Device) -> Result<()> {
        let fstype = &self.settings.fstype;
        let mut args: Vec<std::ffi::OsString> = vec!["-t".into(), fstype.into()];
        let options = self.settings.format_options.trim();
        // Trove's default "-m 5" (reserved blocks) is an ext option.
        if !(fstype == "xfs" && options == "-m 5") {
            args.extend(options.split_whitespace().map(Into::into));
        }
        args.push(device.path.as_str().into());
        tracing::info!(device = %device.path, %fstype, "formatting a blank volume");
        run("mkfs", &args, Duration::from_secs(self.settings.format_timeout)).await.map(drop)
    }

    async fn mount_now(&self, device: &Device, fstype: &str, mount_point: &Path) -> Result<()> {
        std::fs::create_dir_all(mount_point).map_err(|e| Error::io(mount_point, e))?;
        let args = ["-t".into(), fstype.into(), "-o".into(), self.settings.mount_options.as_str().into(), device.path.as_str().into(), os(mount_point)];
        run("mount", &args, TOOL_TIMEOUT).await.map(drop)
    }

    /// Trove's `migrate_data`: what the mount point already holds is copied onto the new volume.
    async fn migrate(&self, device: &Device, fstype: &str, from: &Path) -> Result<()> {
        let tmp = TempMount::new(from)?;
        self.mount_now(device, fstype, tmp.path()).await?;
        let mut source = from.as_os_str().to_owned();
        source.push("/.");
        let copied = run("cp", &["-a".into(), source, os(tmp.path())], Duration::from_secs(3600)).await;
        let unmounted = umount(tmp.path()).await;
        copied.and(unmounted)?;
        tracing::info!(from = %from.display(), "copied the mount point's files onto the new volume");
        Ok(())
    }

    fn write_fstab(&self, device: &Device, uuid: Option<&str>, fstype: &str, mount_point: &Path) -> Result<()> {
        let path = &self.settings.fstab;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let source = uuid.map(|u| format!("UUID={u}")).unwrap_or_else(|| device.path.clone());
        let Some(next) = fstab_update(&text, &source, &device.path, mount_point, fstype, &self.settings.mount_options) else {
            return Ok(());
        };
        write_atomic(path, next.as_bytes(), 0o644)?;
        tracing::info!(fstab = %path.display(), mount_point = %mount_point.display(), "recorded the volume for reboots");
        Ok(())
    }

    /// The mount point's root goes to the user Redis runs as, when the agent is root and that user exists.
    fn give_to_owner(&self, mount_point: &Path) -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        if let Ok(Some(user)) = nix::unistd::User::from_name(&self.owner) {
            std::os::unix::fs::chown(mount_point, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(|e| Error::io(mount_point, e))?;
        }
        Ok(())
    }
}

/// Trove's `get_filesystem_stats` of the file system holding `path`: block size, total and free
/// blocks, total and used in GB (2 decimals, at least 0.01 when not empty), free in bytes.
pub fn fs_stats(path: &Path) -> Result<Value> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| Error::io(path, format!("file system not found ({e})")))?;
    let unit = st.fragment_size() as u64;
    let total = st.blocks() as u64 * unit;
    let free = st.blocks_free() as u64 * unit;
    Ok(json!({
        "block_size": st.block_size() as u64,
        "total_blocks": st.blocks() as u64,
        "free_blocks": st.blocks_free() as u64,
        "total": to_gb(total),
        "free": free,
        "used": to_gb(total.saturating_sub(free)),
    }))
}

/// Trove's `utils.to_gb`.
pub fn to_gb(bytes: u64) -> f64 {
    if bytes == 0 {
        return 0.0;
    }
    (((bytes as f64 / 1024f64.powi(3)) * 100.0).round() / 100.0).max(0.01)
}

/// An existing block device (symbolic links followed), or a clear refusal.
pub fn block_device(raw: &str) -> Result<Device> {
    let refuse = |why: String| Err(Error::Refused(format!("device_path '{}' {why}; nothing was changed", raw.escape_debug())));
    if raw.is_empty() || !raw.starts_with('/') || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("must be an absolute device path such as /dev/vdb".into());
    }
    match std::fs::metadata(raw) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => refuse("does not exist".into()),
        Err(e) => refuse(format!("cannot be read ({e})")),
        Ok(m) if !m.file_type().is_block_device() => refuse("is not a block device".into()),
        Ok(m) => Ok(Device { path: raw.into(), majmin: majmin(m.rdev()) }),
    }
}

fn majmin(rdev: u64) -> (u64, u64) {
    (nix::sys::stat::major(rdev) as u64, nix::sys::stat::minor(rdev) as u64)
}

/// The types on a device that are not file systems the agent mounts are refused: in use.
fn mountable(device: &Device, p: &Probe) -> Result<String> {
    match (&p.fstype, &p.pttype) {
        (Some(t), _) if MOUNTABLE.contains(&t.as_str()) => Ok(t.clone()),
        (Some(t), _) => Err(Error::Refused(format!("{} holds '{t}', not a file system the agent mounts; it is left alone and nothing was changed", device.path))),
        (None, Some(pt)) => Err(Error::Refused(format!("{} holds a partition table ({pt}); it is left alone and nothing was changed", device.path))),
        (None, None) => Err(Error::Refused(format!("{} holds something blkid cannot name; it is left alone and nothing was changed", device.path))),
    }
}

/// `blkid -p` (a low-level probe, no cache): None when the device holds nothing blkid knows.
async fn probe(device: &Device) -> Result<Option<Probe>> {
    probe_path(&device.path).await
}

async fn probe_path(path: &str) -> Result<Option<Probe>> {
    let out = output("blkid", &["-p".into(), "-o".into(), "export".into(), path.into()], TOOL_TIMEOUT).await?;
    match out.status.code() {
        Some(0) => Ok(Some(parse_blkid(&String::from_utf8_lossy(&out.stdout)))),
        // blkid's exit status 2: nothing found (a blank device).
        Some(2) => Ok(None),
        _ => Err(failed("blkid -p", &out)),
    }
}

/// `blkid -o export` lines (`KEY=value`).
pub fn parse_blkid(text: &str) -> Probe {
    let mut p = Probe::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else { continue };
        let v = v.replace('\\', "");
        match k {
            "TYPE" => p.fstype = Some(v),
            "UUID" => p.uuid = Some(v),
            "PTTYPE" => p.pttype = Some(v),
            _ => {}
        }
    }
    p
}

async fn mounts() -> Result<Vec<Mount>> {
    let out = run("findmnt", &["-rn".into(), "-o".into(), "MAJ:MIN,SOURCE,TARGET,FSTYPE".into()], TOOL_TIMEOUT).await?;
    Ok(parse_findmnt(&out))
}

/// `findmnt -rn -o MAJ:MIN,SOURCE,TARGET,FSTYPE` (raw output: special characters as `\xHH`).
pub fn parse_findmnt(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (maj, min) = f.next()?.split_once(':')?;
            let majmin = (maj.parse().ok()?, min.parse().ok()?);
            let source = unhex(f.next()?);
            let target = PathBuf::from(unhex(f.next()?));
            let fstype = unhex(f.next().unwrap_or(""));
            Some(Mount { majmin, source, target, fstype })
        })
        .collect()
}

/// The last mount at `path` (the one visible there).
fn mounted_at<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.target == path)
}

fn unhex(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            if let Some(v) = std::str::from_utf8(&b[i + 2..i + 4]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fstab text with one line for `mount_point` (by `source`), replacing lines for the same
/// mount point or device; None when that line is already the only one.
pub fn fstab_update(text: &str, source: &str, device: &str, mount_point: &Path, fstype: &str, options: &str) -> Option<String> {
    let target = mount_point.display().to_string();
    let line = format!("{source}\t{target}\t{fstype}\t{options}\t0\t0");
    let ours = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        !l.trim_start().starts_with('#') && f.len() >= 2 && (f[1] == target || f[0] == source || f[0] == device)
    };
    let matching: Vec<&str> = text.lines().filter(|l| ours(l)).collect();
    if matching.len() == 1 && matching[0].split_whitespace().eq(line.split_whitespace()) {
        return None;
    }
    let mut out: String = text.lines().filter(|l| !ours(l)).map(|l| format!("{l}\n")).collect();
    out.push_str(&line);
    out.push('\n');
    Some(out)
}

/// Whether a directory holds anything.
fn dir_has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// The longest existing prefix of `path`, resolved, with the rest appended.
fn canonical_prefix(path: &Path) -> PathBuf {
    for existing in path.ancestors() {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let rest = path.strip_prefix(existing).unwrap_or(Path::new(""));
            return real.join(rest);
        }
    }
    path.to_path_buf()
}

/// An empty directory for a temporary mount, in the temp directory (removed on drop).
struct TempMount(PathBuf);

impl TempMount {
    fn new(near: &Path) -> Result<TempMount> {
        let name = format!(".trove-volume-{}-{}", std::process::id(), near.file_name().and_then(|n| n.to_str()).unwrap_or("mnt"));
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(TempMount(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

async fn umount(mount_point: &Path) -> Result<()> {
    run("umount", &[os(mount_point)], TOOL_TIMEOUT).await.map(drop)
}

/// `e2fsck -f -p` before an offline resize2fs; exit 1 (errors corrected) is success.
async fn e2fsck(device: &Device) -> Result<()> {
    let out = output("e2fsck", &["-f".into(), "-p".into(), device.path.as_str().into()], Duration::from_secs(3600)).await?;
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => Err(failed("e2fsck -f -p", &out)),
    }
}

fn os(p: &Path) -> std::ffi::OsString {
    p.as_os_str().to_owned()
}

/// Runs a tool (util-linux's `fsfreeze`, ...); its stdout, or an error naming the command, its
/// status and its stderr.
pub async fn run_tool(program: &str, args: &[std::ffi::OsString], timeout: Duration) -> Result<String> {
    run(program, args, timeout).await
}

/// Runs a tool; its stdout, or an error naming the command, its status and its stderr.
async fn run(program: &str, args: &[std::ffi::OsString], timeout: Duration) -> Result<String> {
    let out = output(program, args, timeout).await?;
    if !out.status.success() {
        let shown: Vec<String> = std::iter::once(program.to_owned()).chain(args.iter().map(|a| a.to_string_lossy().into_owned())).collect();
        return Err(failed(&shown.join(" "), &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn output(program: &str, args: &[std::ffi::OsString], timeout: Duration) -> Result<std::process::Output> {
    let mut cmd = Command::new(program);
    for key in crate::config::agent_env_keys() {
        cmd.env_remove(key);
    }
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => Err(Error::Timeout(format!("{program} did not finish within {timeout:?}"))),
        Ok(Err(e)) => Err(Error::Service(format!("cannot run {program}: {e}"))),
        Ok(Ok(out)) => Ok(out),
    }
}

fn failed(what: &str, out: &std::process::Output) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    Error::Service(format!("{what} failed ({}): {}", out.status, stderr.join(" | ")))
}

/// Writes `path` through a temporary file and a rename, with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".{}.trove-tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("fstab")));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volumes(roots: &[&str]) -> Volumes {
        Volumes::new(
            VolumeSettings {
                fstype: "ext4".into(),
                format_options: "-m 5".into(),
                mount_options: "defaults,noatime".into(),
                format_timeout: 120,
                allowed_mount_roots: roots.iter().map(PathBuf::from).collect(),
                fstab: "/etc/fstab".into(),
                device_path: String::new(),
                mount_point: "/var/lib/redis".into(),
            },
            "redis",
        )
    }

    #[test]
    fn blkid_export_is_parsed() {
        let p = parse_blkid("DEVNAME=/dev/loop0\nUUID=1ba6881a-ec44-444d-8491-b73d0c832000\nSEC_TYPE=ext2\nVERSION=1.0\nBLOCK_SIZE=1024\nTYPE=ext3\nUSAGE=filesystem\n");
        assert_eq!(p.fstype.as_deref(), Some("ext3"));
        assert_eq!(p.uuid.as_deref(), Some("1ba6881a-ec44-444d-8491-b73d0c832000"));
        assert_eq!(p.pttype, None);
        let pt = parse_blkid("DEVNAME=/dev/vdb\nPTUUID=4f2c\nPTTYPE=gpt\n");
        assert_eq!((pt.fstype.as_deref(), pt.pttype.as_deref()), (None, Some("gpt")));
        let swap = parse_blkid("DEVNAME=/dev/vdc\nTYPE=swap\nUSAGE=other\n");
        let dev = Device { path: "/dev/vdc".into(), majmin: (252, 32) };
        assert!(mountable(&dev, &swap).unwrap_err().to_string().contains("'swap'"));
        assert!(mountable(&dev, &pt).unwrap_err().to_string().contains("partition table (gpt)"));
        assert_eq!(mountable(&dev, &p).unwrap(), "ext3");
    }

    #[test]
    fn findmnt_raw_output_is_parsed() {
        let text = "0:32 overlay / overlay\n7:0 /dev/loop0 /var/lib/redis ext3\n7:1 /dev/loop1 /mnt/with\\x20space ext4\n0:5 tmpfs /dev tmpfs\nbroken\n";
        let m = parse_findmnt(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1], Mount { majmin: (7, 0), source: "/dev/loop0".into(), target: "/var/lib/redis".into(), fstype: "ext3".into() });
        assert_eq!(m[2].target, PathBuf::from("/mnt/with space"));
        assert_eq!(mounted_at(&m, Path::new("/var/lib/redis")).map(|m| m.majmin), Some((7, 0)));
        assert!(mounted_at(&m, Path::new("/var/lib")).is_none());
    }

    #[test]
    fn fstab_entry_is_written_once() {
        let base = "# static\nUUID=root / ext4 defaults 0 1\n";
        let mp = Path::new("/var/lib/redis");
        let once = fstab_update(base, "UUID=abc", "/dev/vdb", mp, "ext3", "defaults,noatime").unwrap();
        assert_eq!(once, format!("{base}UUID=abc\t/var/lib/redis\text3\tdefaults,noatime\t0\t0\n"));
        assert_eq!(fstab_update(&once, "UUID=abc", "/dev/vdb", mp, "ext3", "defaults,noatime"), None);
        // A new file system on the same mount point replaces the old line; so does Trove's device-path line.
        let trove = format!("{base}/dev/vdb\t/var/lib/redis\text3\tdefaults,noatime\t0\t0\n");
        let replaced = fstab_update(&trove, "UUID=def", "/dev/vdb", mp, "ext3", "defaults,noatime").unwrap();
        assert_eq!(replaced.matches("/var/lib/redis").count(), 1);
        assert!(replaced.starts_with(base) && replaced.contains("UUID=def"));
        // Comments naming the mount point stay.
        let commented = format!("# /dev/vdb /var/lib/redis\n{once}");
        assert_eq!(fstab_update(&commented, "UUID=abc", "/dev/vdb", mp, "ext3", "defaults,noatime"), None);
    }

    #[test]
    fn mount_points_are_checked() {
        let v = volumes(&["/var/lib/redis", "/mnt"]);
        assert_eq!(v.mount_point("/var/lib/redis").unwrap(), PathBuf::from("/var/lib/redis"));
        assert_eq!(v.mount_point("/mnt/redis/").unwrap(), PathBuf::from("/mnt/redis"));
        for (bad, why) in [
            ("var/lib/redis", "absolute"),
            ("", "non-empty"),
            ("/etc", "outside the allowed mount roots (/var/lib/redis, /mnt"),
            ("/var/lib/redis/../../../etc", "'..'"),
            ("/mntx", "outside"),
            ("/mnt/a b", "spaces"),
            ("/", "outside"),
        ] {
            let e = v.mount_point(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("nothing was changed"), "{bad}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let v = volumes(&[dir.path().to_str().unwrap()]);
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let e = v.mount_point(dir.path().join("link/x").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let e = v.mount_point(dir.path().join("file").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn devices_are_checked() {
        assert!(block_device("/nonexistent/vdz").unwrap_err().to_string().contains("does not exist"));
        assert!(block_device("/etc/hostname").unwrap_err().to_string().contains("not a block device"));
        assert!(block_device("/dev/null").unwrap_err().to_string().contains("not a block device"));
        assert!(block_device("vdb").unwrap_err().to_string().contains("absolute"));
    }

    #[tokio::test]
    async fn boot_mount_without_a_volume_does_nothing() {
        let mut v = volumes(&["/var/lib/redis"]);
        assert_eq!(v.mount_at_boot().await.unwrap(), BootMount::Off);
        v.settings.device_path = "/nonexistent/vdz".into();
        assert_eq!(v.mount_at_boot().await.unwrap(), BootMount::NoDevice);
        v.settings.device_path = "/dev/null".into();
        assert!(v.mount_at_boot().await.unwrap_err().to_string().contains("not a block device"));
        v.settings.device_path = "/nonexistent/vdz".into();
        v.settings.mount_point = "/etc".into();
        assert_eq!(v.mount_at_boot().await.unwrap(), BootMount::NoDevice, "no device: the mount point is not even looked at");
    }

    #[test]
    fn sizes_are_trove_gigabytes() {
        assert_eq!(to_gb(0), 0.0);
        assert_eq!(to_gb(1), 0.01);
        assert_eq!(to_gb(3 * 1024 * 1024 * 1024 / 2), 1.5);
        let s = fs_stats(Path::new("/")).unwrap();
        for k in ["block_size", "total_blocks", "free_blocks", "total", "free", "used"] {
            assert!(s.get(k).is_some(), "{k}");
        }
        assert!(fs_stats(Path::new("/nonexistent/x")).unwrap_err().to_string().contains("file system not found"));
    }
}
