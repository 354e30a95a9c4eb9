//! The daemon config file (`--config`): one `[[vm]]` section per VM, with
//! the keys of the per-VM flags, and an optional `control` socket. Owns
//! parsing and the checks across VMs (names, guest ids and socket paths
//! unique); each section goes through [`VmSettings::check`], and every
//! problem becomes one line naming the file, the line and the VM.
//!
//! ```toml
//! control = "/run/kt/control.sock"
//! [[vm]]
//! name = "web"                  # 1..=64 of A-Z a-z 0-9 . _ -
//! guest_id = 1                  # unique
//! socket_path = "/run/kt/web.sock"
//! policy = "web-policy.toml"    # relative to this file's directory
//! listen = "/run/kt/web-listen.sock"
//! max_msg_size = 65536          # and max_channels, rx_buf_size,
//!                               # channel_buffer, vm_buffer, handshake_timeout,
//!                               # open_timeout, busy_poll_us,
//!                               # queue_pairs (1..=16), rx_share
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, VmConfig, VmSettings};
use crate::policy::LineNo;

/// Most VMs one file may name.
pub const MAX_VMS: usize = 1024;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfFileError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TOML syntax, unknown keys or wrong types.
    #[error("config file {path}{line}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// `: line N` when known.
        line: LineNo,
        /// The parser's message, one line.
        msg: String,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// A section's values are bad (or its policy file is).
    #[error("config file {path}{line}: vm {vm:?}: {source}")]
    Vm {
        /// The file.
        path: PathBuf,
        /// The section's line.
        line: LineNo,
        /// The section's name (as given).
        vm: String,
        /// What is wrong.
        source: Box<ConfigError>,
    },
    /// Something two sections (or a section and `control`) share.
    #[error("config file {path}{line}: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The later section's line.
        line: LineNo,
        /// What is wrong.
        msg: String,
    },
}

/// A loaded, checked config file.
#[derive(Clone, Debug)]
pub struct ConfFile {
    /// Its control socket, if it names one.
    pub control: Option<PathBuf>,
    /// Its VMs, in file order.
    pub vms: Vec<VmConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    control: Option<PathBuf>,
    #[serde(default)]
    vm: Vec<toml::Spanned<RawVm>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    socket_path: PathBuf,
    policy: PathBuf,
    listen: Option<PathBuf>,
    guest_id: Option<u32>,
    max_msg_size: Option<u32>,
    max_channels: Option<u32>,
    rx_buf_size: Option<u32>,
    channel_buffer: Option<u32>,
    vm_buffer: Option<u32>,
    handshake_timeout: Option<u32>,
    open_timeout: Option<u32>,
    busy_poll_us: Option<u32>,
    queue_pairs: Option<u32>,
    rx_share: Option<u32>,
}

fn line_of(text: &str, offset: Option<usize>) -> LineNo {
    LineNo(offset.map(|o| {
        text.as_bytes()[..o.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }))
}

/// Reads and checks the config file at `path` (policy files included).
pub fn load(path: &Path) -> Result<ConfFile, ConfFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Checks config `text`; relative paths are taken from `path`'s directory.
pub fn parse(path: &Path, text: &str) -> Result<ConfFile, ConfFileError> {
    let raw: RawFile = toml::from_str(text).map_err(|source| ConfFileError::Parse {
        path: path.to_owned(),
        line: line_of(text, source.span().map(|s| s.start)),
        msg: source.message().replace('\n', " "),
        source: Box::new(source),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
    let invalid = |line: LineNo, msg: String| ConfFileError::Invalid {
        path: path.to_owned(),
        line,
        msg,
    };
    if raw.vm.len() > MAX_VMS {
        return Err(invalid(
            LineNo(None),
            format!("{} VMs; at most {MAX_VMS}", raw.vm.len()),
        ));
    }
    let control = raw.control.map(resolve);
    let mut vms: Vec<VmConfig> = Vec::with_capacity(raw.vm.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut ids: HashMap<u32, String> = HashMap::new();
    let mut paths: HashMap<PathBuf, String> = HashMap::new();
    if let Some(c) = &control {
        paths.insert(c.clone(), "the control socket".to_owned());
    }
    for spanned in raw.vm {
        let line = line_of(text, Some(spanned.span().start));
        let v = spanned.into_inner();
        let name = v.name.clone();
        let vm = VmSettings {
            name: Some(v.name),
            socket_path: Some(resolve(v.socket_path)),
            policy: Some(resolve(v.policy)),
            listen: v.listen.map(resolve),
            max_msg_size: v.max_msg_size,
            max_channels: v.max_channels,
            rx_buf_size: v.rx_buf_size,
            channel_buffer: v.channel_buffer,
            vm_buffer: v.vm_buffer,
            handshake_timeout: v.handshake_timeout,
            open_timeout: v.open_timeout,
            guest_id: v.guest_id,
            busy_poll_us: v.busy_poll_us,
            queue_pairs: v.queue_pairs,
            rx_share: v.rx_share,
        }
        .check()
        .map_err(|source| ConfFileError::Vm {
            path: path.to_owned(),
            line,
            vm: name.clone(),
            source: Box::new(source),
        })?;
        if names.insert(name.clone(), vms.len()).is_some() {
            return Err(invalid(line, format!("vm {name:?} is named twice")));
        }
        if let Some(other) = ids.insert(vm.device.guest_id, name.clone()) {
            return Err(invalid(
                line,
                format!(
                    "vm {name:?}: guest_id {} is vm {other:?}'s already",
                    vm.device.guest_id
                ),
            ));
        }
        for p in vm.paths() {
            if let Some(other) = paths.insert(p.clone(), format!("vm {name:?}")) {
                return Err(invalid(
                    line,
                    format!("vm {name:?}: socket {} is {other}'s already", p.display()),
                ));
            }
        }
        vms.push(vm);
    }
    Ok(ConfFile { control, vms })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("kt-conf-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("p.toml"),
            "[[service]]\nname = \"echo\"\nsocket = \"/tmp/e\"\n",
        )
        .unwrap();
        Dir(d)
    }

    fn vm(name: &str, id: u32) -> String {
        format!(
            "[[vm]]\nname = \"{name}\"\nguest_id = {id}\nsocket_path = \"/run/{name}.sock\"\n\
             policy = \"p.toml\"\n"
        )
    }

    fn err(d: &Dir, text: &str) -> String {
        parse(&d.0.join("kt.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn reads_several_vms() {
        let d = dir("ok");
        let text = format!(
            "control = \"ctl.sock\"\n{}{}max_msg_size = 4096\nlisten = \"/run/b-l.sock\"\n\
             queue_pairs = 4\n",
            vm("a", 1),
            vm("b", 2)
        );
        let f = parse(&d.0.join("kt.toml"), &text).unwrap();
        assert_eq!(f.control, Some(d.0.join("ctl.sock")));
        assert_eq!(f.vms.len(), 2);
        assert_eq!(f.vms[0].name, "a");
        assert_eq!(f.vms[0].policy_path, d.0.join("p.toml"));
        assert!(f.vms[0].policy.get("echo").is_some());
        assert_eq!(f.vms[1].device.max_msg_size, 4096);
        assert_eq!(f.vms[1].device.guest_id, 2);
        assert_eq!(f.vms[0].device.max_queue_pairs, 1);
        assert_eq!(f.vms[1].device.max_queue_pairs, 4);
        assert_eq!(f.vms[1].listen, Some(PathBuf::from("/run/b-l.sock")));
        assert!(parse(&d.0.join("kt.toml"), "").unwrap().vms.is_empty());
    }

    #[test]
    fn refuses_bad_files_with_the_line() {
        let d = dir("bad");
        let f = d.0.join("kt.toml");
        let f = f.display();
        let cases = [
            (
                format!("{}{}", vm("a", 1), vm("a", 2)),
                format!("config file {f}: line 6: vm \"a\" is named twice"),
            ),
            (
                format!("{}{}", vm("a", 1), vm("b", 1)),
                format!("config file {f}: line 6: vm \"b\": guest_id 1 is vm \"a\"'s already"),
            ),
            (
                format!("{}max_msg_size = 0\n", vm("a", 1)),
                format!(
                    "config file {f}: line 1: vm \"a\": --max-msg-size 0: must be between 1 \
                     and 1048576"
                ),
            ),
            (
                format!("{}queue_pairs = 17\n", vm("a", 1)),
                format!(
                    "config file {f}: line 1: vm \"a\": --queue-pairs 17: must be between 1 \
                     and 16"
                ),
            ),
            (
                vm("bad name", 1),
                format!(
                    "config file {f}: line 1: vm \"bad name\": VM name \"bad name\": use 1 to \
                     64 characters of A-Z a-z 0-9 . _ -"
                ),
            ),
            (
                format!("{}listen = \"/run/a.sock\"\n", vm("a", 1)),
                format!(
                    "config file {f}: line 1: vm \"a\": socket /run/a.sock is vm \"a\"'s already"
                ),
            ),
            (
                format!("control = \"/run/b.sock\"\n{}", vm("b", 1)),
                format!(
                    "config file {f}: line 2: vm \"b\": socket /run/b.sock is the control \
                     socket's already"
                ),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(&d, &text), want, "{text}");
        }
        let e = err(&d, "[[vm]]\nname = \"a\"\nport = 3\n");
        assert!(
            e.starts_with(&format!("config file {f}: line 3: unknown field `port`")),
            "{e}"
        );
        let e = err(&d, &vm("a", 1).replace("p.toml", "missing.toml"));
        assert!(e.contains("vm \"a\": policy file"), "{e}");
        let e = load(&d.0.join("nope.toml")).unwrap_err().to_string();
        assert!(
            e.starts_with("config file ") && e.contains("No such file"),
            "{e}"
        );
    }
}
