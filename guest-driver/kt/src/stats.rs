//! `kt stats`: reads every attribute the driver exposes in sysfs for each
//! bound device (`/sys/bus/virtio/drivers/kerntransport/virtio*/`, plus one
//! level of attribute groups below it, e.g. the driver's `kerntransport/`
//! counters) and prints them as a table, or, with `--format prometheus`,
//! the driver's known counters in the Prometheus text exposition format
//! (metrics `kt_guest_*`, for node-exporter's textfile collector). The
//! table makes no assumption about attribute names beyond skipping the
//! generic device-model entries; the Prometheus output maps the names
//! `kt_sysfs.c` defines (a test keeps the two lists in step).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::cli::{StatsArgs, StatsFormat};
use crate::error::{Error, Result};
use crate::out;
use kt_prom::{Kind, Writer};

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

/// Device-wide sysfs attributes exported to Prometheus: attribute, metric
/// name, type, help.
const DEVICE_METRICS: &[(&str, &str, Kind, &str)] = &[
    (
        "tx_msgs",
        "kt_guest_tx_msgs_total",
        Kind::Counter,
        "DATA messages sent to the host.",
    ),
    (
        "tx_bytes",
        "kt_guest_tx_bytes_total",
        Kind::Counter,
        "DATA payload bytes sent to the host.",
    ),
    (
        "rx_msgs",
        "kt_guest_rx_msgs_total",
        Kind::Counter,
        "DATA messages received and queued for a reader.",
    ),
    (
        "rx_bytes",
        "kt_guest_rx_bytes_total",
        Kind::Counter,
        "DATA payload bytes received and queued for a reader.",
    ),
    (
        "credit_stalls",
        "kt_guest_credit_stalls_total",
        Kind::Counter,
        "Sends that waited (or got EAGAIN) for credit.",
    ),
    (
        "malformed",
        "kt_guest_malformed_total",
        Kind::Counter,
        "Bad input from the device, counted and dropped.",
    ),
    (
        "rx_discarded",
        "kt_guest_rx_discarded_total",
        Kind::Counter,
        "Late input for a closing channel, dropped.",
    ),
    (
        "tx_dropped",
        "kt_guest_tx_dropped_total",
        Kind::Counter,
        "Control messages dropped while the device took no tx buffers.",
    ),
    (
        "tx_pending",
        "kt_guest_tx_pending",
        Kind::Gauge,
        "Messages waiting for room in the tx ring.",
    ),
    (
        "rx_posted",
        "kt_guest_rx_posted",
        Kind::Gauge,
        "rx buffers posted in the rx rings, all pairs together.",
    ),
    (
        "rings_broken",
        "kt_guest_rings_broken_total",
        Kind::Counter,
        "Virtqueues the device broke (the device was reset each time).",
    ),
    (
        "rx_len_clamped",
        "kt_guest_rx_len_clamped_total",
        Kind::Counter,
        "Used rx buffers whose used length exceeded the buffer (not parsed).",
    ),
    (
        "opens_refused",
        "kt_guest_opens_refused_total",
        Kind::Counter,
        "Host OPENs for a valid name answered with OPEN_ERR.",
    ),
    (
        "config_changes",
        "kt_guest_config_changes_total",
        Kind::Counter,
        "Config-change interrupts (ignored, counted).",
    ),
    (
        "resets",
        "kt_guest_resets_total",
        Kind::Counter,
        "Transport resets (RESET events).",
    ),
    (
        "opens_in",
        "kt_guest_opens_in_total",
        Kind::Counter,
        "Host-initiated channels accepted.",
    ),
    (
        "opens_out",
        "kt_guest_opens_out_total",
        Kind::Counter,
        "Guest-initiated channels opened.",
    ),
    (
        "open_channels",
        "kt_guest_open_channels",
        Kind::Gauge,
        "Channels with an id in use (open, opening or closing).",
    ),
    (
        "max_msg_size",
        "kt_guest_max_msg_size_bytes",
        Kind::Gauge,
        "Largest message payload (config space, clamped).",
    ),
    (
        "max_channels",
        "kt_guest_max_channels",
        Kind::Gauge,
        "Channels open at once (config space, clamped).",
    ),
    (
        "rx_buf_size",
        "kt_guest_rx_buf_size_bytes",
        Kind::Gauge,
        "rx buffer size posted (config space, clamped).",
    ),
    (
        "guest_id",
        "kt_guest_guest_id",
        Kind::Gauge,
        "Guest id the host assigned (config space).",
    ),
    (
        "buf_alloc",
        "kt_guest_buf_alloc_bytes",
        Kind::Gauge,
        "Receive window given to each channel.",
    ),
    (
        "wrong_pair",
        "kt_guest_wrong_pair_total",
        Kind::Counter,
        "Channel messages that came on another queue pair than their channel's (dropped).",
    ),
    (
        "queue_pairs",
        "kt_guest_queue_pairs",
        Kind::Gauge,
        "rx/tx queue pairs the driver uses.",
    ),
    (
        "max_queue_pairs",
        "kt_guest_max_queue_pairs",
        Kind::Gauge,
        "Queue pairs the device offers (config space, clamped; 1 without KT_F_MULTIQUEUE).",
    ),
];

/// The multi-line per-channel attribute.
const CHANNELS_ATTR: &str = "channels";

/// Per-channel counters, in the order of a `channels` line after
/// `id state`: metric name, type, help.
const CHANNEL_METRICS: [(&str, Kind, &str); 7] = [
    (
        "kt_guest_channel_tx_msgs_total",
        Kind::Counter,
        "DATA messages sent on a listed channel.",
    ),
    (
        "kt_guest_channel_tx_bytes_total",
        Kind::Counter,
        "DATA payload bytes sent on a listed channel.",
    ),
    (
        "kt_guest_channel_rx_msgs_total",
        Kind::Counter,
        "DATA messages received on a listed channel.",
    ),
    (
        "kt_guest_channel_rx_bytes_total",
        Kind::Counter,
        "DATA payload bytes received on a listed channel.",
    ),
    (
        "kt_guest_channel_credit_stalls_total",
        Kind::Counter,
        "Sends on a listed channel that waited for credit.",
    ),
    (
        "kt_guest_channel_malformed_total",
        Kind::Counter,
        "Bad input for a listed channel.",
    ),
    (
        "kt_guest_channel_rx_held_bytes",
        Kind::Gauge,
        "Credit bytes held by unread messages on a listed channel.",
    ),
];

/// One line of the `channels` attribute.
#[derive(Debug, PartialEq, Eq)]
struct ChannelLine {
    id: String,
    state: String,
    values: [u64; 7],
    name: String,
}

/// Parses `id state tx_msgs tx_bytes rx_msgs rx_bytes credit_stalls
/// malformed rx_held name` (single spaces; the name may contain spaces or
/// be empty). None for the `...` truncation line or anything else.
fn parse_channel_line(line: &str) -> Option<ChannelLine> {
    let mut f = line.splitn(10, ' ');
    let id = f.next()?.to_string();
    let state = f.next()?.to_string();
    let mut values = [0u64; 7];
    for v in &mut values {
        *v = f.next()?.parse().ok()?;
    }
    Some(ChannelLine {
        id,
        state,
        values,
        name: f.next().unwrap_or("").to_string(),
    })
}

/// The attribute's name without its group directory (`kerntransport/`).
fn base_name(attr: &str) -> &str {
    attr.rsplit('/').next().unwrap_or(attr)
}

/// Renders `rows` (from [`collect`]) as a Prometheus text exposition:
/// every sample labelled `device` (the virtio device, e.g. `virtio0`);
/// per-channel samples add `channel` (its hex id) and `name`; one
/// `kt_guest_channel_state` gauge per channel carries its state as a label.
/// Attributes other than the driver's are left out; a driver counter
/// whose value is not a number is an error.
pub fn prometheus(rows: &[Row]) -> Result<String> {
    let mut w = Writer::default();
    for (attr, metric, kind, help) in DEVICE_METRICS {
        w.family(metric, *kind, help);
        for (dev, a, v) in rows.iter().filter(|(_, a, _)| base_name(a) == *attr) {
            let n: u64 = v.trim().parse().map_err(|_| Error::BadAttribute {
                device: dev.clone(),
                attribute: a.clone(),
                value: v.clone(),
            })?;
            w.sample(&[("device", dev)], n);
        }
    }
    let channels: Vec<(&str, ChannelLine)> = rows
        .iter()
        .filter(|(_, a, _)| base_name(a) == CHANNELS_ATTR)
        .filter_map(|(dev, _, v)| Some((dev.as_str(), parse_channel_line(v)?)))
        .collect();
    w.family(
        "kt_guest_channel_state",
        Kind::Gauge,
        "1 for each listed channel, labelled with its state.",
    );
    for (dev, c) in &channels {
        let labels = [
            ("device", *dev),
            ("channel", &c.id),
            ("name", &c.name),
            ("state", &c.state),
        ];
        w.sample(&labels, 1);
    }
    for (i, (metric, kind, help)) in CHANNEL_METRICS.iter().enumerate() {
        w.family(metric, *kind, help);
        for (dev, c) in &channels {
            w.sample(
                &[("device", *dev), ("channel", &c.id), ("name", &c.name)],
                c.values[i],
            );
        }
    }
    Ok(w.finish())
}

/// `kt stats`.
pub fn run(a: &StatsArgs) -> Result<()> {
    if a.format == StatsFormat::Prometheus {
        let text = prometheus(&collect(&a.sysfs)?)?;
        return out::line(format_args!("{}", text.trim_end()));
    }
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

    /// A fake driver tree shaped like the real one: attributes in the
    /// `kerntransport/` group, generic ones at the top.
    fn fake_driver(t: &TempDir) -> PathBuf {
        let root = t.0.join("driver");
        fs::create_dir_all(&root).unwrap();
        for (dev, tx, chans) in [
            ("virtio3", "12", "0x1 open 1 10 2 20 0 0 0 echo\n0x40000002 closing 0 0 5 50 1 2 64 we\"ird\\ name\n0x3 connecting 0 0 0 0 0 0 0 \n...\n"),
            ("virtio4", "0", ""),
        ] {
            let dev_dir = t.0.join("devices").join(dev);
            let g = dev_dir.join("kerntransport");
            fs::create_dir_all(&g).unwrap();
            fs::write(dev_dir.join("vendor"), "0x554d4551\n").unwrap();
            fs::write(dev_dir.join("features"), "0101000\n").unwrap();
            for (a, _, _, _) in DEVICE_METRICS {
                fs::write(g.join(a), "0\n").unwrap();
            }
            fs::write(g.join("tx_msgs"), format!("{tx}\n")).unwrap();
            fs::write(g.join("guest_id"), "7\n").unwrap();
            fs::write(g.join("channels"), chans).unwrap();
            std::os::unix::fs::symlink(&dev_dir, root.join(dev)).unwrap();
        }
        root
    }

    #[test]
    fn prometheus_from_a_fake_sysfs_tree() {
        let t = tempdir("prom");
        let root = fake_driver(&t);
        let text = prometheus(&collect(&root).unwrap()).unwrap();
        let ex = kt_prom::check::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            ex.families.keys().all(|f| f.starts_with("kt_guest_")),
            "{text}"
        );
        // Every device-wide metric, once per device; nothing generic.
        for (_, metric, kind, _) in DEVICE_METRICS {
            let want = if *kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(ex.families[*metric].kind, want, "{metric}");
            assert_eq!(ex.samples.iter().filter(|s| s.name == *metric).count(), 2);
        }
        assert!(
            !text.contains("vendor") && !text.contains("features"),
            "{text}"
        );
        let v3 = ("device", "virtio3");
        assert_eq!(ex.value("kt_guest_tx_msgs_total", &[v3]), Some(12.0));
        assert_eq!(
            ex.value("kt_guest_tx_msgs_total", &[("device", "virtio4")]),
            Some(0.0)
        );
        assert_eq!(ex.value("kt_guest_guest_id", &[v3]), Some(7.0));
        // Channels: three parsed lines, the "..." line skipped; the odd name
        // comes back intact from its escaped form.
        let echo = [v3, ("channel", "0x1"), ("name", "echo")];
        assert_eq!(
            ex.value("kt_guest_channel_tx_bytes_total", &echo),
            Some(10.0)
        );
        assert_eq!(
            ex.value("kt_guest_channel_rx_bytes_total", &echo),
            Some(20.0)
        );
        let odd = [v3, ("channel", "0x40000002"), ("name", "we\"ird\\ name")];
        assert_eq!(ex.value("kt_guest_channel_rx_msgs_total", &odd), Some(5.0));
        assert_eq!(
            ex.value("kt_guest_channel_credit_stalls_total", &odd),
            Some(1.0)
        );
        assert_eq!(
            ex.value("kt_guest_channel_malformed_total", &odd),
            Some(2.0)
        );
        assert_eq!(ex.value("kt_guest_channel_rx_held_bytes", &odd), Some(64.0));
        assert!(text.contains(r#"name="we\"ird\\ name""#), "{text}");
        let unnamed = [
            v3,
            ("channel", "0x3"),
            ("name", ""),
            ("state", "connecting"),
        ];
        assert_eq!(ex.value("kt_guest_channel_state", &unnamed), Some(1.0));
        assert_eq!(
            ex.samples
                .iter()
                .filter(|s| s.name == "kt_guest_channel_state")
                .count(),
            3
        );
    }

    #[test]
    fn prometheus_refuses_a_non_numeric_counter() {
        let t = tempdir("prom-bad");
        let root = fake_driver(&t);
        fs::write(t.0.join("devices/virtio4/kerntransport/rx_bytes"), "lots\n").unwrap();
        let e = prometheus(&collect(&root).unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "virtio4/kerntransport/rx_bytes: \"lots\" is not a number"
        );
    }

    #[test]
    fn channel_lines() {
        let c = parse_channel_line("0x2 open 1 2 3 4 5 6 7 a b  c").unwrap();
        assert_eq!((c.id.as_str(), c.state.as_str()), ("0x2", "open"));
        assert_eq!(c.values, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(c.name, "a b  c");
        assert_eq!(
            parse_channel_line("0x2 open 1 2 3 4 5 6 7").unwrap().name,
            ""
        );
        assert_eq!(parse_channel_line("..."), None);
        assert_eq!(parse_channel_line("0x2 open 1 2 x 4 5 6 7 n"), None);
    }

    /// The Prometheus mapping covers exactly the attributes the driver
    /// defines (`kt_attrs[]` in kt_sysfs.c), so a new counter cannot be
    /// forgotten silently.
    #[test]
    fn every_driver_attribute_is_mapped() {
        let src = include_str!("../../kt_sysfs.c");
        let list = src
            .split("static struct attribute *kt_attrs[] = {")
            .nth(1)
            .and_then(|s| s.split("NULL").next())
            .expect("kt_attrs[] in kt_sysfs.c");
        let mut driver: Vec<&str> = list
            .split(',')
            .filter_map(|e| e.trim().strip_prefix("&dev_attr_")?.strip_suffix(".attr"))
            .collect();
        driver.sort_unstable();
        let mut mapped: Vec<&str> = DEVICE_METRICS.iter().map(|m| m.0).collect();
        mapped.push(CHANNELS_ATTR);
        mapped.sort_unstable();
        assert_eq!(driver, mapped);
        // And the channels line has the fields CHANNEL_METRICS expects.
        assert!(src.contains("\"%#x %s %llu %llu %llu %llu %llu %llu %u %s\\n\""));
    }
}
