//! Host `SOCK_SEQPACKET` sockets: the shared `kt-seqpacket` crate, under
//! the module path the device's code and tests use. Descriptors a host
//! peer passes are closed on receipt and counted there
//! ([`SeqPacket::take_passed_fds_closed`]).

pub use kt_seqpacket::{Recv, SeqListener, SeqPacket, SCM_MAX_FD};
