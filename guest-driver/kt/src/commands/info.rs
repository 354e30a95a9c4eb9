//! `kt info`: the driver's `KT_IOC_INFO` for an idle file or, with NAME, for
//! a channel connected to that host service (guest only).

use crate::cli::InfoArgs;
use crate::error::{Error, Result};
use crate::ioctl::state_name;
use crate::open::Ctx;
use crate::{guest, out};

/// `kt info`.
pub fn info(ctx: &Ctx, a: &InfoArgs) -> Result<()> {
    if ctx.host.is_some() {
        return Err(Error::Usage(
            "info is guest-side (KT_IOC_INFO on /dev/kerntransport)".into(),
        ));
    }
    let info = match &a.name {
        None => guest::info(&guest::open(&ctx.device)?, &ctx.device)?,
        Some(name) => guest::connected_info(&ctx.device, name)?,
    };
    let rows = vec![
        vec!["max_msg_size".to_string(), info.max_msg_size.to_string()],
        vec!["channel".to_string(), info.channel.to_string()],
        vec![
            "state".to_string(),
            format!("{} ({})", state_name(info.state), info.state),
        ],
        vec!["guest_id".to_string(), info.guest_id.to_string()],
    ];
    out::line(format_args!(
        "{}",
        out::table(&["field", "value"], &rows).trim_end()
    ))
}
