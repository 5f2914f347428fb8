//! The `cgroup_skb` programs: one per direction, each running the parts
//! that are switched on at load time. One program where there were two
//! (names and flows, each with its own) saves a program run, and its
//! context set-up, per packet: on a repeated `sendto()` that was a fifth
//! of the kernel's time for the call.
//!
//! - `residency_egress`: TLS `ClientHello`s (`names::tls_out`), then the
//!   packet's flow (`flows::count_packet`);
//! - `residency_ingress`: the packet's flow, then DNS answers
//!   (`names::dns_in`).
//!
//! Each part is its own function (not inlined), so the verifier walks
//! the DNS parser's paths once rather than once per path of the flows
//! part. Neither program ever drops a packet: both return 1.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::{flows, names};

#[cgroup_skb(egress)]
pub fn residency_egress(ctx: SkBuffContext) -> i32 {
    names::tls_out(&ctx);
    flows::count_packet(&ctx, true);
    1
}

#[cgroup_skb(ingress)]
pub fn residency_ingress(ctx: SkBuffContext) -> i32 {
    flows::count_packet(&ctx, false);
    names::dns_in(&ctx);
    1
}
