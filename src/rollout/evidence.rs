//! The verdict a rollout step is judged on: the canary against its baseline
//! on the evidence since the step started, with the A/B verdict of
//! [`crate::analysis`] (anytime-valid error-rate and latency tests and the
//! sample-ratio alarm, under the route's `analysis` settings).
//!
//! The evidence windows are differences of the lock-free counters the
//! request path keeps per (route, backend), read off the request path.

use std::time::Duration;

use crate::analysis::evidence::Counts;
use crate::analysis::{Kind, window};
use crate::config::RolloutSpec;
use crate::routing::table::Route;

use super::machine::Verdict;

/// The counters of every backend of `route` now, aligned with
/// `route.backends`: where a step's evidence starts.
pub fn snapshot(route: &Route) -> Vec<Counts> {
    window::snapshot(route)
}

/// What the step's evidence says.
pub struct Judgement {
    pub verdict: Verdict,
    /// `pass`, `fail` or `inconclusive`, as the analysis reads it.
    pub label: &'static str,
    pub reasons: Vec<String>,
    pub canary_requests: u64,
    pub baseline_requests: u64,
    /// The counts, error rates and latencies, for notifications.
    pub evidence: super::notify::Evidence,
}

/// Judges the canary of `plan` against its baseline on what `route` saw
/// since `start` (a [`snapshot`] taken `elapsed` ago). A sample-ratio alarm
/// makes the comparison biased: it is reported as such, whatever the rest.
pub fn judge(route: &Route, plan: &RolloutSpec, start: &[Counts], elapsed: Duration) -> Judgement {
    let counts: Vec<Counts> = snapshot(route)
        .iter()
        .enumerate()
        .map(|(i, c)| c.since(start.get(i).unwrap_or(&Counts::default())))
        .collect();
    judge_counts(route, plan, &counts, elapsed)
}

/// Judges the canary of `plan` on what every replica of `route` saw, as
/// summed by Prometheus; an error when the answer does not fit the route.
pub fn judge_fetched(
    route: &Route,
    plan: &RolloutSpec,
    fetched: &crate::analysis::prometheus::Fetched,
    elapsed: Duration,
) -> Result<Judgement, String> {
    let subject = window::Subject::of(route, &plan.baseline);
    let names: Vec<&str> = subject.backends.iter().map(|b| b.0.as_str()).collect();
    let counts = fetched.aligned(&names, &subject.edges)?;
    Ok(judge_counts(route, plan, &counts, elapsed))
}

/// Judges the canary of `plan` on `counts` (aligned with `route.backends`).
pub fn judge_counts(
    route: &Route,
    plan: &RolloutSpec,
    counts: &[Counts],
    elapsed: Duration,
) -> Judgement {
    let a = window::judge(route, &plan.baseline, counts, elapsed);
    of_analysis(&a, plan, elapsed)
}

/// Both sides of the route's shadow copies now: where a `"shadow"` step's
/// evidence starts.
pub fn shadow_snapshot(route: &Route) -> Vec<Counts> {
    route
        .shadow
        .as_ref()
        .map(|s| s.evidence.snapshot())
        .unwrap_or_default()
}

/// Judges a `"shadow"` step: the canary's answers to the copies against
/// the primary's on the same requests since `start` (a
/// [`shadow_snapshot`]); no user is on the canary.
pub fn judge_shadow(
    route: &Route,
    plan: &RolloutSpec,
    start: &[Counts],
    elapsed: Duration,
) -> Judgement {
    match crate::shadow::evidence::judge_since(route, start, elapsed) {
        Some(a) => of_analysis(&a, plan, elapsed),
        None => Judgement {
            verdict: Verdict::Inconclusive,
            label: Kind::Inconclusive.as_str(),
            reasons: vec!["the route has no shadow".to_owned()],
            canary_requests: 0,
            baseline_requests: 0,
            evidence: Default::default(),
        },
    }
}

/// The canary's comparison in `a`, as a step's judgement.
fn of_analysis(a: &window::RouteAnalysis, plan: &RolloutSpec, elapsed: Duration) -> Judgement {
    let Some(j) = a.comparisons.iter().find(|j| j.backend == plan.canary) else {
        return Judgement {
            verdict: Verdict::Inconclusive,
            label: Kind::Inconclusive.as_str(),
            reasons: vec![format!("no comparison of {} yet", plan.canary)],
            canary_requests: 0,
            baseline_requests: 0,
            evidence: Default::default(),
        };
    };
    let kind = j.comparison.kind;
    let verdict = match kind {
        Kind::Fail => Verdict::Fail,
        Kind::Pass => Verdict::Pass,
        Kind::Inconclusive if a.srm.alarm => Verdict::SrmAlarm,
        Kind::Inconclusive => Verdict::Inconclusive,
    };
    Judgement {
        verdict,
        label: kind.as_str(),
        reasons: j.comparison.reasons.clone(),
        canary_requests: j.green.requests,
        baseline_requests: j.blue.requests,
        evidence: super::notify::Evidence::of(j, &a.baseline, elapsed.as_secs_f64()),
    }
}
