//! The Prometheus text exposition (0.0.4) of a [`StatsSnapshot`]: metric
//! families (per VM, per queue pair with several, per open channel),
//! labels and help texts. Owns only the rendering; the numbers
//! are the snapshot's.

use kt_prom::{Kind, Writer};

use super::{CountersSnapshot, Opener, StatsSnapshot};

impl StatsSnapshot {
    /// The counters in the Prometheus text exposition format 0.0.4.
    pub fn prometheus(&self) -> String {
        let mut w = Writer::default();
        self.write_prometheus(&mut w);
        w.finish()
    }

    /// Writes the counters into `w`: metric names prefixed `kt_device_`,
    /// every sample labelled `vm` (the VM's name) and `guest` (its guest
    /// id); per-channel samples add `channel` (the id, unique while open),
    /// `service` and `opener`; message and byte counts have
    /// `direction="to_host"|"to_guest"`. Several VMs write into one writer.
    pub fn write_prometheus(&self, w: &mut Writer) {
        let guest = self.guest_id.to_string();
        let g = [("vm", self.vm.as_str()), ("guest", guest.as_str())];
        let bool_gauge = |b: bool| u64::from(b);
        w.family(
            "kt_device_active",
            Kind::Gauge,
            "1 while a guest driver is live on the queues, else 0.",
        );
        w.sample(&g, bool_gauge(self.active));
        let events: [(&'static str, &'static str, u64); 11] = [
            (
                "kt_device_frontends_total",
                "vhost-user frontend (VMM) connections accepted.",
                self.frontends,
            ),
            (
                "kt_device_channels_opened_total",
                "Channels opened, by the guest or by host programs.",
                self.opened,
            ),
            (
                "kt_device_opens_refused_total",
                "OPENs refused (policy, limits, host service down).",
                self.open_refused,
            ),
            (
                "kt_device_resets_total",
                "Transport RESETs sent to the guest.",
                self.resets,
            ),
            (
                "kt_device_host_connects_total",
                "Host program connections on the --listen socket.",
                self.host_connects,
            ),
            (
                "kt_device_passed_fds_closed_total",
                "Descriptors host peers passed (SCM_RIGHTS), closed unused on receipt.",
                self.passed_fds_closed,
            ),
            (
                "kt_device_fd_limit_refusals_total",
                "Host connections refused with ERR 24: the daemon was out of file descriptors.",
                self.fd_limit_refusals,
            ),
            (
                "kt_device_handshake_timeouts_total",
                "Host connections closed with ERR 110: no CONNECT line within --handshake-timeout.",
                self.handshake_timeouts,
            ),
            (
                "kt_device_open_timeouts_total",
                "Host connections failed with ERR 110: the guest did not answer within --open-timeout.",
                self.open_timeouts,
            ),
            (
                "kt_device_guest_listen_ignored_total",
                "Guest LISTEN/UNLISTEN announcements that changed nothing (duplicates).",
                self.listen_ignored,
            ),
            (
                "kt_device_guest_listen_refused_total",
                "Guest LISTEN announcements dropped: the device keeps at most 1024 names.",
                self.listen_refused,
            ),
        ];
        for (name, help, v) in events {
            w.family(name, Kind::Counter, help);
            w.sample(&g, v);
        }
        w.family(
            "kt_device_open_channels",
            Kind::Gauge,
            "Channels currently open.",
        );
        w.sample(&g, self.channels.len() as u64);
        w.family(
            "kt_device_guest_listeners",
            Kind::Gauge,
            "Names the guest's listeners serve, as its driver announced them.",
        );
        w.sample(&g, self.guest_listeners.len() as u64);
        w.family(
            "kt_device_buffered_bytes",
            Kind::Gauge,
            "Guest to host data (credit bytes) held for host sockets that have not taken it.",
        );
        w.sample(&g, self.buffered);
        w.family(
            "kt_device_buffer_granted_bytes",
            Kind::Gauge,
            "Sum of the windows granted to the guest's channels.",
        );
        w.sample(&g, self.buffer_granted);
        w.family(
            "kt_device_vm_buffer_bytes",
            Kind::Gauge,
            "The VM's budget on those windows (--vm-buffer; 0: none).",
        );
        w.sample(&g, self.vm_buffer);
        let d = &self.device;
        w.family(
            "kt_device_messages_total",
            Kind::Counter,
            "Messages carried, all channels.",
        );
        w.sample(&[g[0], g[1], ("direction", "to_host")], d.msgs_to_host);
        w.sample(&[g[0], g[1], ("direction", "to_guest")], d.msgs_to_guest);
        w.family(
            "kt_device_bytes_total",
            Kind::Counter,
            "Payload bytes carried, all channels.",
        );
        w.sample(&[g[0], g[1], ("direction", "to_host")], d.bytes_to_host);
        w.sample(&[g[0], g[1], ("direction", "to_guest")], d.bytes_to_guest);
        w.family(
            "kt_device_credit_stalls_total",
            Kind::Counter,
            "Times host input waited for guest credit, all channels.",
        );
        w.sample(&g, d.credit_stalls);
        w.family(
            "kt_device_malformed_total",
            Kind::Counter,
            "Malformed input (from the guest, or oversized host messages), including unknown channels.",
        );
        w.sample(&g, d.malformed);
        if !self.pairs.is_empty() {
            let names: Vec<String> = (0..self.pairs.len()).map(|p| p.to_string()).collect();
            type PairPick = fn(&CountersSnapshot) -> (u64, u64);
            let families: [(&str, &str, PairPick); 2] = [
                (
                    "kt_device_pair_messages_total",
                    "Messages carried on one queue pair (--queue-pairs above 1), closed channels included.",
                    |c| (c.msgs_to_host, c.msgs_to_guest),
                ),
                (
                    "kt_device_pair_bytes_total",
                    "Payload bytes carried on one queue pair (--queue-pairs above 1), closed channels included.",
                    |c| (c.bytes_to_host, c.bytes_to_guest),
                ),
            ];
            for (name, help, pick) in families {
                w.family(name, Kind::Counter, help);
                for (p, c) in self.pairs.iter().enumerate() {
                    let (to_host, to_guest) = pick(c);
                    let pair = ("pair", names[p].as_str());
                    w.sample(&[g[0], g[1], pair, ("direction", "to_host")], to_host);
                    w.sample(&[g[0], g[1], pair, ("direction", "to_guest")], to_guest);
                }
            }
        }

        let ids: Vec<String> = self
            .channels
            .iter()
            .map(|c| format!("{:#x}", c.id))
            .collect();
        let labels = |i: usize| -> [(&str, &str); 5] {
            let c = &self.channels[i];
            let opener = match c.opener {
                Opener::Guest => "guest",
                Opener::Host => "host",
            };
            [
                g[0],
                g[1],
                ("channel", ids[i].as_str()),
                ("service", c.service.as_str()),
                ("opener", opener),
            ]
        };
        type Pick = fn(&CountersSnapshot) -> u64;
        let per_channel: [(&'static str, &'static str, Option<&'static str>, Pick); 6] = [
            (
                "kt_device_channel_messages_total",
                "Messages carried on an open channel.",
                Some("to_host"),
                |c| c.msgs_to_host,
            ),
            (
                "kt_device_channel_messages_total",
                "",
                Some("to_guest"),
                |c| c.msgs_to_guest,
            ),
            (
                "kt_device_channel_bytes_total",
                "Payload bytes carried on an open channel.",
                Some("to_host"),
                |c| c.bytes_to_host,
            ),
            ("kt_device_channel_bytes_total", "", Some("to_guest"), |c| {
                c.bytes_to_guest
            }),
            (
                "kt_device_channel_credit_stalls_total",
                "Times host input on an open channel waited for guest credit.",
                None,
                |c| c.credit_stalls,
            ),
            (
                "kt_device_channel_malformed_total",
                "Malformed input on an open channel.",
                None,
                |c| c.malformed,
            ),
        ];
        for (name, help, dir, pick) in per_channel {
            if !help.is_empty() {
                w.family(name, Kind::Counter, help);
            }
            for (i, c) in self.channels.iter().enumerate() {
                let base = labels(i);
                match dir {
                    Some(dir) => {
                        let l = [
                            base[0],
                            base[1],
                            base[2],
                            base[3],
                            base[4],
                            ("direction", dir),
                        ];
                        w.sample(&l, pick(&c.counters));
                    }
                    None => w.sample(&base, pick(&c.counters)),
                }
            }
        }
    }
}
