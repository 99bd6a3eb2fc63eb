//! The limits both transports apply, built once from `[gateway]` at start: the fast lane and
//! hyper (both above this module) read the same values, so a request meets the same limits
//! whichever path serves it.

use crate::config::GatewaySettings;
use std::time::Duration;

/// Headers parsed per message: hyper's built-in limit, which the lane applies on both sides so
/// both request paths take the same heads (a request with more goes to hyper, which answers
/// 431; a response with more is a 502). Hyper is left at its default: setting it there moves
/// its header slots from the stack to the heap, an allocation per request.
pub const MAX_HEADERS: usize = 100;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (`max_header_bytes`): the lane hands a longer one to hyper, whose
    /// HTTP/1 buffer and h2 header list are bounded by it.
    pub max_header_bytes: usize,
    /// `client_header_timeout`: the longest wait for a request head, and how long a connection
    /// with no request in progress stays open.
    pub header_timeout: Duration,
    /// Connections to upstreams.
    pub upstream: UpstreamLimits,
}

/// Upstream keep-alive (`upstream_*` in `[gateway]`): the lane's pools and hyper's clients.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLimits {
    /// Idle connections kept per upstream.
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        UpstreamLimits {
            max_idle: 1024,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl Limits {
    pub fn new(g: &GatewaySettings) -> Limits {
        Limits {
            max_header_bytes: g.max_header_bytes,
            header_timeout: g.client_header_timeout,
            upstream: UpstreamLimits {
                max_idle: g.upstream_pool_max_idle,
                idle_timeout: g.upstream_idle_timeout,
                connect_timeout: g.upstream_connect_timeout,
            },
        }
    }
}
