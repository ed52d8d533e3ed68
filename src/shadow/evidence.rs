//! The copies as A/B evidence of their own (`"source": "shadow"` in
//! `/admin/analysis`): the shadow backend's status and latency on the
//! copies, against the primary's on the same requests. The pairs are the
//! same requests, so there is no sample-ratio test. Recorded in the copy's
//! task, never on the client's path; judged by the analysis tick with the
//! route's `analysis` settings and window.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::analysis::evidence::{Counts, Evidence};
use crate::analysis::window::{RouteAnalysis, SrmUnit, Subject, judge_counts};
use crate::routing::Route;

/// The two sides of a route's copies, kept across reloads.
pub struct ShadowEvidence {
    /// The client's answers to the requests copied.
    pub primary: Evidence,
    /// The shadow backend's answers to the copies; a copy that got no
    /// answer counts as an error.
    pub shadow: Evidence,
    /// Snapshots of the last `analysis.window`.
    history: Mutex<VecDeque<(Instant, Vec<Counts>)>>,
}

impl ShadowEvidence {
    pub fn new(edges: &[f64]) -> ShadowEvidence {
        ShadowEvidence {
            primary: Evidence::new(edges),
            shadow: Evidence::new(edges),
            history: Mutex::default(),
        }
    }

    /// Both sides now: keep it, and [`judge_since`] judges what follows.
    pub fn snapshot(&self) -> Vec<Counts> {
        vec![self.primary.snapshot(), self.shadow.snapshot()]
    }
}

/// The route's shadow comparison over its sliding window, one tick at
/// `now`; `None` without a shadow.
pub fn tick(route: &Route, now: Instant) -> Option<RouteAnalysis> {
    let shadow = route.shadow.as_ref()?;
    let ev = &shadow.evidence;
    let mut h = ev.history.lock().unwrap_or_else(|p| p.into_inner());
    h.push_back((now, ev.snapshot()));
    let window = route.analysis.window;
    while h.len() > 1
        && h.get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
    {
        h.pop_front();
    }
    let (t0, first) = h.front()?;
    let (_, last) = h.back()?;
    let counts: Vec<Counts> = last.iter().zip(first).map(|(l, f)| l.since(f)).collect();
    Some(judge(route, &counts, now.duration_since(*t0)))
}

/// The verdict on the copies since `start` (a [`ShadowEvidence::snapshot`]):
/// a rollout's shadow step.
pub fn judge_since(route: &Route, start: &[Counts], elapsed: Duration) -> Option<RouteAnalysis> {
    let ev = &route.shadow.as_ref()?.evidence;
    let counts: Vec<Counts> = ev
        .snapshot()
        .iter()
        .zip(start)
        .map(|(l, f)| l.since(f))
        .collect();
    Some(judge(route, &counts, elapsed))
}

fn judge(route: &Route, counts: &[Counts], elapsed: Duration) -> RouteAnalysis {
    let (primary, backend, edges) = match &route.shadow {
        Some(s) => (
            primary_name(route),
            s.spec.backend.clone(),
            s.evidence.primary.edges().to_vec(),
        ),
        None => Default::default(),
    };
    let subject = Subject {
        name: route.name.to_string(),
        backends: vec![(primary.clone(), 1), (backend, 1)],
        baseline: primary,
        unit: SrmUnit::None,
        settings: route.analysis.settings.clone(),
        edges,
    };
    let mut a = judge_counts(&subject, counts, elapsed);
    a.source = "shadow";
    a.srm_unit = "none (the copies are paired with the requests)";
    a
}

/// The backend the copies are compared with: `analysis.baseline`, else
/// the one with the largest weight (the first by name among equals, as
/// for the route's own analysis).
fn primary_name(route: &Route) -> String {
    if let Some(b) = &route.analysis.baseline {
        return b.clone();
    }
    let mut best: Option<&crate::routing::table::RouteBackend> = None;
    for b in route.backends.iter() {
        if best.is_none_or(|x| b.weight > x.weight) {
            best = Some(b);
        }
    }
    best.map(|b| b.backend.name.to_string()).unwrap_or_default()
}
