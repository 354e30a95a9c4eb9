//! The policy file: which host services a guest may open, and where they
//! listen. Owns parsing and validation; every problem becomes one line that
//! names the file, the line when known, and what is wrong.
//!
//! ```toml
//! [[service]]
//! name = "echo"                 # service name a guest OPENs
//! socket = "/run/kt/echo.sock"  # host SOCK_SEQPACKET socket to connect to
//! max_channels = 8              # optional: open channels at once
//! identify = true               # optional: first message names the VM
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use serde::Deserialize;

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TOML syntax, unknown keys or wrong types.
    #[error("policy file {path}{line}: {msg}")]
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
    /// A semantic problem with one service entry.
    #[error("policy file {path}{line}: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `: line N` when known.
        line: LineNo,
        /// What is wrong.
        msg: String,
    },
}

/// An optional 1-based line number that displays as `: line N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineNo(pub Option<usize>);

impl std::fmt::Display for LineNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, ": line {n}"),
            None => Ok(()),
        }
    }
}

/// One host service a guest may open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Service name (validated like a wire name).
    pub name: String,
    /// Host `SOCK_SEQPACKET` socket the device connects to.
    pub socket: PathBuf,
    /// Channels to this service that may be open at once.
    pub max_channels: Option<u32>,
    /// The device sends `GUEST <guest-id> <vm-name>\n` as the first message
    /// of every channel to this service (SPEC §9).
    pub identify: bool,
}

/// The whole policy: services by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    services: BTreeMap<String, Service>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: toml::Spanned<String>,
    socket: toml::Spanned<PathBuf>,
    max_channels: Option<toml::Spanned<u32>>,
    #[serde(default)]
    identify: bool,
}

fn line_of(text: &str, span: Option<Range<usize>>) -> LineNo {
    LineNo(span.map(|s| {
        let end = s.start.min(text.len());
        text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }))
}

impl Policy {
    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policy::parse(path, &text)
    }

    /// Validates policy `text`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: path.to_owned(),
            line: line_of(text, source.span()),
            msg: source.message().replace('\n', " "),
            source: Box::new(source),
        })?;
        let invalid = |span: Range<usize>, msg: String| PolicyError::Invalid {
            path: path.to_owned(),
            line: line_of(text, Some(span)),
            msg,
        };
        let mut services = BTreeMap::new();
        for s in raw.service {
            let name = s.name.get_ref();
            if let Err(e) = kt_proto::name::validate(name.as_bytes()) {
                return Err(invalid(
                    s.name.span(),
                    format!("invalid service name {name:?}: {e}"),
                ));
            }
            if kt_proto::name::is_device_reserved(name) {
                return Err(invalid(
                    s.name.span(),
                    format!(
                        "service name {name:?}: names starting with {:?} are reserved for \
                         services the device implements itself",
                        kt_proto::consts::DEVICE_NAME_PREFIX
                    ),
                ));
            }
            if services.contains_key(name) {
                return Err(invalid(
                    s.name.span(),
                    format!("duplicate service name {name:?}"),
                ));
            }
            if s.socket.get_ref().as_os_str().is_empty() {
                return Err(invalid(
                    s.socket.span(),
                    format!("service {name:?}: empty socket path"),
                ));
            }
            if let Some(m) = &s.max_channels {
                if *m.get_ref() == 0 {
                    return Err(invalid(
                        m.span(),
                        format!("service {name:?}: max_channels must be at least 1"),
                    ));
                }
            }
            services.insert(
                name.clone(),
                Service {
                    name: name.clone(),
                    socket: s.socket.into_inner(),
                    max_channels: s.max_channels.map(toml::Spanned::into_inner),
                    identify: s.identify,
                },
            );
        }
        Ok(Policy { services })
    }

    /// The service named `name`, if the policy allows it.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// The service names, sorted (byte order).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service is allowed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The policy one VM's device consults, replaceable while it runs: an
/// `OPEN` after [`PolicyCell::replace`] sees the new policy, channels that
/// are open stay open. Each engine (one per queue pair) keeps its own
/// [`PolicyCell::subscribe`] eventfd in its epoll set, so a replacement
/// reaches every engine without polling and no engine consumes another's
/// signal.
#[derive(Debug)]
pub struct PolicyCell {
    current: RwLock<Arc<Policy>>,
    generation: AtomicU64,
    subscribers: Mutex<Vec<Arc<EventFd>>>,
}

impl PolicyCell {
    /// A cell holding `policy` (generation 0), with no subscriber.
    pub fn new(policy: Policy) -> std::io::Result<PolicyCell> {
        Ok(PolicyCell {
            current: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
        })
    }

    /// A new eventfd that becomes readable at each later replacement until
    /// its owner reads it.
    pub fn subscribe(&self) -> std::io::Result<Arc<EventFd>> {
        let fd = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fd.clone());
        Ok(fd)
    }

    /// The policy in force.
    pub fn get(&self) -> Arc<Policy> {
        // A panic elsewhere cannot leave the Arc half-written.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `policy` in force and signals every subscriber; returns
    /// whether it differs from the one it replaced.
    pub fn replace(&self, policy: Policy) -> bool {
        let mut cur = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let differs = **cur != policy;
        *cur = Arc::new(policy);
        drop(cur);
        self.generation.fetch_add(1, Ordering::Release);
        for fd in self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            // The counter cannot overflow from reloads; a failed write
            // only means the subscriber already has an unread signal.
            let _ = fd.write(1);
        }
        differs
    }

    /// How many times the policy was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_swaps_policies_and_signals_once_per_change() {
        let a = parse("[[service]]\nname = \"a\"\nsocket = \"/a\"\n").unwrap();
        let b = parse("[[service]]\nname = \"b\"\nsocket = \"/b\"\n").unwrap();
        let cell = PolicyCell::new(a.clone()).unwrap();
        let (s1, s2) = (cell.subscribe().unwrap(), cell.subscribe().unwrap());
        let held = cell.get();
        assert!(cell.get().get("a").is_some());
        assert!(cell.replace(b));
        // Whoever held the old policy keeps it; new lookups see the new one.
        assert!(held.get("a").is_some());
        assert!(cell.get().get("a").is_none());
        assert!(cell.get().get("b").is_some());
        assert_eq!(cell.generation(), 1);
        assert!(!cell.replace(cell.get().as_ref().clone()));
        assert_eq!(cell.generation(), 2);
        // Each subscriber got both signals; reading one leaves the other.
        assert_eq!(s1.read().unwrap(), 2);
        assert!(s1.read().is_err(), "the signal was consumed");
        assert_eq!(s2.read().unwrap(), 2);
    }

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("p.toml"), text)
    }

    #[test]
    fn parses_services() {
        let p = parse(
            "[[service]]\nname = \"echo\"\nsocket = \"/run/kt/echo.sock\"\n\n\
             [[service]]\nname = \"log\"\nsocket = \"/tmp/l\"\nmax_channels = 2\n",
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p.get("echo").unwrap().socket,
            PathBuf::from("/run/kt/echo.sock")
        );
        assert_eq!(p.get("log").unwrap().max_channels, Some(2));
        assert!(p.get("nope").is_none());
        assert_eq!(p.names().collect::<Vec<_>>(), ["echo", "log"]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_are_one_line_with_file_and_line() {
        let cases = [
            (
                "[[service]]\nname = \"a\"\nsocket = \"/x\"\ncolour = 1\n",
                "p.toml: line 4: unknown field `colour`",
            ),
            (
                "[[service]]\nname = \"a\"\nsocket = \"/x\"\n[[service]]\nname = \"a\"\nsocket = \"/y\"\n",
                "p.toml: line 5: duplicate service name \"a\"",
            ),
            (
                "[[service]]\nname = \"\"\nsocket = \"/x\"\n",
                "p.toml: line 2: invalid service name \"\"",
            ),
            (
                "[[service]]\nname = \"a\"\nsocket = \"/x\"\nmax_channels = 0\n",
                "p.toml: line 4: service \"a\": max_channels must be at least 1",
            ),
            (
                "[[service]]\nname = \"a\"\nsocket = \"/x\"\n[[service]]\nname = \"kt.services\"\nsocket = \"/y\"\n",
                "p.toml: line 5: service name \"kt.services\": names starting with \"kt.\" are \
                 reserved for services the device implements itself",
            ),
            ("[[service]]\nname = \"a\"\n", "p.toml: line 1: missing field `socket`"),
            ("[[service]\n", "p.toml: line 1:"),
            ("[[service]]\nname = 5\nsocket = \"/x\"\n", "p.toml: line 2:"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("policy file {want}")),
                "{e:?} vs {want:?}"
            );
            assert!(!e.contains('\n'), "{e:?}");
        }
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = Policy::load(Path::new("/nonexistent/kt.toml")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("policy file /nonexistent/kt.toml: "));
    }
}
