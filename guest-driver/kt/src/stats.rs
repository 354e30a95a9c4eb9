//! `kt stats`: reads every attribute the driver exposes in sysfs for each
//! bound device (`/sys/bus/virtio/drivers/kerntransport/virtio*/`, plus one
//! level of attribute groups below it, e.g. the driver's `kerntransport/`
//! counters) and prints them as a table. Makes no
//! assumption about attribute names beyond skipping the generic
//! device-model entries.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::cli::StatsArgs;
use crate::error::{Error, Result};
use crate::out;

/// The driver's directory in sysfs.
pub const DEFAULT_ROOT: &str = "/sys/bus/virtio/drivers/kerntransport";

/// Generic device-model entries that are not the driver's counters.
const SKIP: &[&str] = &[
    "uevent",
    "power",
    "subsystem",
    "driver",
    "firmware_node",
    "of_node",
];

/// Attributes of one device: (device, attribute, value).
pub type Row = (String, String, String);

fn read_attr(path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o444 == 0 {
        // Write-only attribute.
        return None;
    }
    match fs::read(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim_end().to_string()),
        Err(e) => Some(format!("(unreadable: {e})")),
    }
}

fn attrs(dir: &Path, prefix: &str, depth: u32, out: &mut Vec<(String, String)>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if SKIP.contains(&name.as_str()) {
            continue;
        }
        let ft = e.file_type()?;
        if ft.is_symlink() {
            continue;
        }
        if ft.is_dir() {
            if depth > 0 {
                attrs(&e.path(), &format!("{prefix}{name}/"), depth - 1, out)?;
            }
        } else if let Some(v) = read_attr(&e.path()) {
            // A multi-line attribute (the per-channel list) gives one row
            // per line under the same name.
            let mut lines = v.lines().peekable();
            if lines.peek().is_none() {
                out.push((format!("{prefix}{name}"), String::new()));
            }
            for line in lines {
                out.push((format!("{prefix}{name}"), line.to_string()));
            }
        }
    }
    Ok(())
}

/// Collects the attributes of every device bound to the driver.
pub fn collect(root: &Path) -> Result<Vec<Row>> {
    let entries = fs::read_dir(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NoDriver {
            path: root.to_path_buf(),
        },
        _ => Error::io(root.display().to_string(), e),
    })?;
    let mut devices: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("virtio"))
        .collect();
    devices.sort();
    if devices.is_empty() {
        return Err(Error::NoBoundDevice {
            path: root.to_path_buf(),
        });
    }
    let mut rows = Vec::new();
    for dev in devices {
        let dir = root.join(&dev);
        let mut list = Vec::new();
        attrs(&dir, "", 1, &mut list).map_err(|e| Error::io(dir.display().to_string(), e))?;
        rows.extend(list.into_iter().map(|(a, v)| (dev.clone(), a, v)));
    }
    Ok(rows)
}

/// `kt stats`.
pub fn run(a: &StatsArgs) -> Result<()> {
    let rows: Vec<Vec<String>> = collect(&a.sysfs)?
        .into_iter()
        .map(|(d, k, v)| vec![d, k, v])
        .collect();
    out::line(format_args!(
        "{}",
        out::table(&["device", "attribute", "value"], &rows).trim_end()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kt-stats-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    #[test]
    fn reads_a_fake_sysfs_tree() {
        let t = tempdir("tree");
        let dev = t.0.join("devices/virtio7");
        fs::create_dir_all(dev.join("stats")).unwrap();
        fs::create_dir_all(dev.join("power")).unwrap();
        fs::write(dev.join("uevent"), "DRIVER=kerntransport\nX=1\n").unwrap();
        fs::write(dev.join("max_msg_size"), "65536\n").unwrap();
        fs::write(dev.join("stats/tx_msgs"), "12\n").unwrap();
        fs::write(
            dev.join("stats/channels"),
            "0x1 open 1\n0x2 open 2 k.echo\n",
        )
        .unwrap();
        fs::write(dev.join("power/control"), "auto\n").unwrap();
        fs::write(dev.join("reset"), "").unwrap();
        fs::set_permissions(dev.join("reset"), fs::Permissions::from_mode(0o200)).unwrap();
        let root = t.0.join("driver");
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&dev, root.join("virtio7")).unwrap();
        fs::write(root.join("bind"), "").unwrap();
        let rows = collect(&root).unwrap();
        assert_eq!(
            rows,
            vec![
                ("virtio7".into(), "max_msg_size".into(), "65536".into()),
                (
                    "virtio7".into(),
                    "stats/channels".into(),
                    "0x1 open 1".into()
                ),
                (
                    "virtio7".into(),
                    "stats/channels".into(),
                    "0x2 open 2 k.echo".into()
                ),
                ("virtio7".into(), "stats/tx_msgs".into(), "12".into()),
            ]
        );
    }

    #[test]
    fn missing_driver_and_no_device() {
        let t = tempdir("empty");
        let e = collect(&t.0.join("nope")).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("no such directory — is kerntransport.ko loaded?"));
        assert!(matches!(collect(&t.0), Err(Error::NoBoundDevice { .. })));
    }
}
