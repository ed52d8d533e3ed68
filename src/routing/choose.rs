//! Choosing the backend of a route for one request, in this order:
//! 1. a tester override naming a backend of the route (any weight);
//! 2. otherwise the user's bucket (hashed header, sticky cookie, or a random
//!    draw) picks the backend owning it; on a `drain` route a user whose
//!    cookie names a weight-0 backend that is still up stays there;
//! 3. if that backend has no available endpoint, fail over for this request
//!    only: another backend by weight, else any backend that is up. The
//!    user's cookie is not rewritten, so they return when it recovers.

use http::{HeaderMap, HeaderValue};

use super::sticky::CookieValue;
use super::{Bucket, Route};

/// The outcome of [`Route::choose`].
#[derive(Debug)]
pub struct Choice {
    /// Index into `route.backends`; `None` when no backend is up.
    pub backend: Option<usize>,
    /// The request forced its backend with an override.
    pub overridden: bool,
    /// The backend was not the user's own (this index), because that one is
    /// down.
    pub failed_over_from: Option<usize>,
    /// A `Set-Cookie` value to send with the response.
    pub set_cookie: Option<HeaderValue>,
}

impl Route {
    pub fn choose(&self, headers: &HeaderMap, secure: bool) -> Choice {
        if let Some(i) = self.overridden(headers)
            && self.backends[i].backend.has_available()
        {
            return Choice {
                backend: Some(i),
                overridden: true,
                failed_over_from: None,
                set_cookie: None,
            };
        }
        let sticky = self.sticky.as_ref();
        let from_header = sticky.and_then(|s| s.header_bucket(headers));
        let codec = sticky
            .and_then(|s| s.cookie.as_ref())
            .filter(|_| from_header.is_none());
        let cookie: Option<CookieValue<'_>> = codec.and_then(|c| c.read(headers));
        let bucket = from_header
            .or(cookie.map(|c| c.bucket))
            .unwrap_or_else(Bucket::random);

        let mut wanted = self.backend_for(bucket);
        // Soft drain: stay on a weight-0 backend that last served you.
        if self.drain
            && let Some(i) = cookie.and_then(|c| self.backend_index(c.backend?))
            && self.backends[i].weight == 0
            && self.backends[i].backend.has_available()
        {
            wanted = i;
        }
        let (backend, failed_over) = if self.backends[wanted].backend.has_available() {
            (Some(wanted), false)
        } else if self.failover {
            (self.failover_from(wanted), true)
        } else {
            (None, true)
        };

        let set_cookie = codec.and_then(|c| {
            let recorded = cookie.and_then(|v| v.backend);
            let serving = self.drain.then(|| &*self.backends[wanted].backend.name);
            let stale = cookie.is_none() || (!failed_over && recorded != serving);
            stale.then(|| c.set_cookie(bucket, serving, secure))
        });
        Choice {
            backend,
            overridden: false,
            failed_over_from: failed_over.then_some(wanted),
            set_cookie,
        }
    }

    /// The override's backend, if the request names a known one and may.
    fn overridden(&self, headers: &HeaderMap) -> Option<usize> {
        let name = self.overrides.as_ref()?.requested(headers)?;
        let i = self.backend_index(name);
        if i.is_none() {
            tracing::debug!(route = %self.name, backend = name, "override names an unknown backend; ignored");
        }
        i
    }

    /// Another backend that is up: by weight among the weighted ones, else
    /// the first one up at weight 0.
    pub fn failover_from(&self, down: usize) -> Option<usize> {
        let up = |i: &usize| *i != down && self.backends[*i].backend.has_available();
        let total: u64 = (0..self.backends.len())
            .filter(up)
            .map(|i| u64::from(self.backends[i].weight))
            .sum();
        if total > 0 {
            let mut ticket = fastrand::u64(..total);
            for i in (0..self.backends.len()).filter(up) {
                let w = u64::from(self.backends[i].weight);
                if ticket < w {
                    return Some(i);
                }
                ticket -= w;
            }
        }
        (0..self.backends.len()).find(up)
    }
}
