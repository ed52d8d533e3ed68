//! The rollouts of a running proxy: which route has one, where each stands,
//! and the weights they put in force.
//!
//! Everything here is synchronous and runs under the app's reload lock on a
//! blocking thread (a reload, a tick from `spawn_blocking`, an admin command
//! from `spawn_blocking`), so reloads, ticks, commands and their state-file
//! writes happen one at a time, in order, and never on the control runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::evidence;
use super::machine::{Command, Observation, Phase, Rollout, Verdict};
use super::notify::{Evidence, Outbox};
use super::store;
use crate::analysis::Kind;
use crate::analysis::evidence::Counts;
use crate::analysis::prometheus::{Fetched, Wanted};
use crate::config::{Config, PromSource, RolloutSpec};
use crate::metrics::Metrics;
use crate::routing::RoutingTable;

/// The rollouts of every route that has a `[routes.rollout]`.
#[derive(Default)]
pub struct Rollouts {
    inner: Mutex<Inner>,
    /// Transition events for the routes' webhooks.
    pub notify: Outbox,
    /// Prometheus' answers, delivered by the poller, taken by the next
    /// tick: this lock is never held across I/O, unlike `inner`.
    mailbox: Mutex<Vec<(Wanted, Result<Fetched, String>)>>,
    /// What the rollouts with `analysis.source` want fetched, as of the
    /// last tick.
    wants: Mutex<Vec<Want>>,
}

/// A rollout's step as the poller needs it: route, step start, lag, hold
/// (seconds) and the next boundary to judge.
type Want = (String, f64, f64, f64, u64);

#[derive(Default)]
struct Inner {
    dir: PathBuf,
    routes: BTreeMap<String, Entry>,
    /// What `/admin/state` shows: refreshed by [`Rollouts::show`] once the
    /// weights of a transition are in force, never before.
    shown: BTreeMap<String, Value>,
}

struct Entry {
    plan: RolloutSpec,
    /// `None` when the state file could not be used: see `problem`.
    rollout: Option<Rollout>,
    problem: Option<String>,
    /// The step's evidence starts from these counters (per backend of the
    /// route), taken at this step start and this instant.
    base: Option<(f64, std::time::Instant, Vec<Counts>)>,
    /// The last verdict, as its label.
    verdict: &'static str,
    /// The last verdict's evidence, for the events of commands.
    evidence: Option<Evidence>,
    /// The route's weights in the file.
    file: Vec<(String, u32)>,
    /// `analysis.source`: the step's evidence is every replica's, from
    /// Prometheus, and steps end on boundaries every replica computes alike.
    prom: Option<PromSource>,
    /// (step start, k): the step's next boundary to judge.
    boundary: (f64, u64),
    /// Prometheus' last answer for the step (its start) up to now.
    live: Option<(f64, Result<Fetched, String>)>,
    /// Prometheus' answer for a boundary (step start, k).
    at_boundary: Option<(f64, u64, Result<Fetched, String>)>,
}

/// What a tick or command changed, for the caller to publish.
#[derive(Debug, Default)]
pub struct Changed {
    /// The weights in force changed: build and publish a new table.
    pub weights: bool,
    /// States to write once the new table is published: those that took
    /// weight away from a canary (a rollback must not wait for a disk).
    /// Steps forward were written before, so a crash never moves users back.
    pub pending: Vec<(String, Rollout)>,
}

impl Changed {
    /// Writes the pending states (blocking).
    pub fn save_pending(&self, rollouts: &Rollouts) {
        let dir = rollouts.lock().dir.clone();
        for (route, r) in &self.pending {
            save(&dir, route, r);
        }
    }
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Rollouts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the rollouts in line with a config just loaded (at start or
    /// on reload), reading and writing state files. The file always wins:
    /// a route whose `weights` differ from those its rollout started from,
    /// or whose `[routes.rollout]` is gone, ends its rollout and serves the
    /// file's weights from then on.
    pub fn sync(&self, config: &Config, metrics: &Metrics) {
        let mut inner = self.lock();
        inner.dir.clone_from(&config.rollout_state_dir);
        let dir = inner.dir.clone();
        let now = now_unix();
        // Sections removed from the file.
        let gone: Vec<String> = inner
            .routes
            .keys()
            .filter(|name| {
                !config
                    .routes
                    .iter()
                    .any(|r| &r.name == *name && r.rollout.is_some())
            })
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut e) = inner.routes.remove(&name)
                && let Some(r) = &mut e.rollout
                && !r.phase.is_final()
            {
                r.end_by_file(
                    &e.plan,
                    now,
                    "the rollout section was removed from the config file; the file's weights are in force".into(),
                );
                r.owns_weights = false;
                transition_log(
                    &name,
                    r,
                    metrics,
                    &self.notify,
                    &e.plan,
                    e.evidence.as_ref(),
                );
                save(&dir, &name, r);
            }
            forget_metrics(metrics, &name);
        }
        for route in &config.routes {
            let Some(plan) = &route.rollout else { continue };
            let entry = match inner.routes.remove(&route.name) {
                Some(e) if e.rollout.as_ref().is_some_and(|r| r.id == plan.id) => e,
                Some(e) if e.rollout.is_none() && e.problem.is_some() => e,
                _ => self.open(&dir, &route.name, plan, &route.weights, now, metrics),
            };
            let mut entry = Entry {
                plan: plan.clone(),
                file: route.weights.clone(),
                prom: route.analysis.source.clone(),
                ..entry
            };
            if let Some(r) = &mut entry.rollout {
                r.realign(plan);
                if r.owns_weights && r.file_weights != route.weights {
                    r.end_by_file(
                        plan,
                        now,
                        format!(
                            "the config file's weights changed ({} -> {}); the file's weights are in force",
                            describe(&r.file_weights),
                            describe(&route.weights)
                        ),
                    );
                    r.owns_weights = false;
                    transition_log(
                        &route.name,
                        r,
                        metrics,
                        &self.notify,
                        plan,
                        entry.evidence.as_ref(),
                    );
                    save(&dir, &route.name, r);
                }
            }
            record_metrics(metrics, &route.name, entry.rollout.as_ref());
            inner.routes.insert(route.name.clone(), entry);
        }
    }

    /// The entry of a rollout the process has not followed yet: resumed from
    /// its state file, or started.
    fn open(
        &self,
        dir: &Path,
        route: &str,
        plan: &RolloutSpec,
        weights: &[(String, u32)],
        now: f64,
        metrics: &Metrics,
    ) -> Entry {
        let mut entry = Entry {
            plan: plan.clone(),
            rollout: None,
            problem: None,
            base: None,
            verdict: "inconclusive",
            evidence: None,
            file: weights.to_vec(),
            prom: None,
            boundary: (0.0, 1),
            live: None,
            at_boundary: None,
        };
        match store::load(dir, route) {
            Ok(Some(r)) if r.id == plan.id => {
                tracing::info!(route, id = %r.id, state = r.phase.as_str(), canary_weight = r.canary_weight, "rollout resumed from its state file");
                entry.rollout = Some(r);
            }
            Ok(_) => {
                // A `start` in the file is the same for every replica.
                let r = Rollout::start(plan, weights, plan.start.map_or(now, |s| s as f64));
                transition_log(route, &r, metrics, &self.notify, plan, None);
                if let Err(e) = store::save(dir, route, &r) {
                    entry.problem = Some(format!(
                        "{e}; the rollout waits (paused) until it can record its state"
                    ));
                    tracing::error!(route, error = %e, "cannot write the rollout state; the rollout is paused");
                } else {
                    entry.rollout = Some(r);
                }
            }
            Err(e) => {
                tracing::error!(route, error = %e, "rollout state unusable; the rollout is paused and the file's weights are in force until `cutover rollout resume`, which starts it again at its first step");
                entry.problem = Some(e.to_string());
            }
        }
        entry
    }

    /// Replaces the weights of every route whose rollout owns them.
    pub fn apply(&self, config: &mut Config) {
        let inner = self.lock();
        for route in &mut config.routes {
            let Some(e) = inner.routes.get(&route.name) else {
                continue;
            };
            let Some(r) = e.rollout.as_ref().filter(|r| r.owns_weights) else {
                continue;
            };
            route.weights = r.weights(&e.plan, &route.weights);
            if r.phase == Phase::RolledBack {
                // Every user back on the baseline, sticky ones included.
                route.drain = false;
                // A failed shadow step: mirroring off too.
                if e.plan.steps.first() == Some(&0) {
                    route.shadow = None;
                }
            }
        }
    }

    /// One evaluation of every progressing rollout on the evidence since
    /// its step started.
    pub fn tick(&self, table: &RoutingTable, metrics: &Metrics) -> Changed {
        let delivered = std::mem::take(&mut *lock(&self.mailbox));
        let mut inner = self.lock();
        let dir = inner.dir.clone();
        let now = now_unix();
        let mut changed = Changed::default();
        for (w, result) in delivered {
            let Some(e) = inner.routes.get_mut(&w.route) else {
                continue;
            };
            match w.boundary {
                None => e.live = Some((w.step_started_unix, result)),
                Some((k, _)) => e.at_boundary = Some((w.step_started_unix, k, result)),
            }
        }
        for (name, e) in inner.routes.iter_mut() {
            let Some(route) = table.routes.iter().find(|t| &*t.name == name) else {
                continue;
            };
            let Some(started) = e.rollout.as_ref().map(|r| r.step_started_unix) else {
                continue;
            };
            // A `"shadow"` step (weight 0) is judged on the copies.
            let shadow_step = e
                .rollout
                .as_ref()
                .is_some_and(|r| e.plan.steps.get(r.step) == Some(&0));
            if e.base.as_ref().is_none_or(|b| b.0 != started) {
                let now = std::time::Instant::now();
                let snap = if shadow_step {
                    evidence::shadow_snapshot(route)
                } else {
                    evidence::snapshot(route)
                };
                e.base = Some((started, now, snap));
            }
            if e.boundary.0 != started {
                e.boundary = (started, 1);
            }
            if e.rollout
                .as_ref()
                .is_none_or(|r| r.phase != Phase::Progressing)
            {
                continue;
            }
            let o = if e.prom.is_some() && !shadow_step {
                prom_observation(e, route, started, now)
            } else {
                let Some(base) = &e.base else { continue };
                let j = if shadow_step {
                    evidence::judge_shadow(route, &e.plan, &base.2, base.1.elapsed())
                } else {
                    evidence::judge(route, &e.plan, &base.2, base.1.elapsed())
                };
                e.verdict = j.label;
                e.evidence = Some(j.evidence);
                Observation {
                    now_unix: now,
                    verdict: j.verdict,
                    canary_requests: j.canary_requests,
                    baseline_requests: j.baseline_requests,
                    reasons: j.reasons,
                }
            };
            let Some(r) = &mut e.rollout else { continue };
            let before = r.clone();
            if !r.tick(&e.plan, &o) {
                continue;
            }
            transition_log(name, r, metrics, &self.notify, &e.plan, e.evidence.as_ref());
            record_metrics(metrics, name, e.rollout.as_ref());
            changed.weights = true;
            let Some(r) = &mut e.rollout else { continue };
            if r.canary_weight <= before.canary_weight {
                changed.pending.push((name.clone(), r.clone()));
                continue;
            }
            if let Err(err) = store::save(&dir, name, r) {
                // Never move forward without a record of it: a restart
                // would move users back.
                *r = before;
                let _ = r.command(&e.plan, Command::Pause, now);
                r.reason = format!("cannot record the next step: {err}");
                transition_log(name, r, metrics, &self.notify, &e.plan, e.evidence.as_ref());
                tracing::error!(route = %name, error = %err, "cannot write the rollout state");
                changed.pending.push((name.clone(), r.clone()));
                record_metrics(metrics, name, e.rollout.as_ref());
            }
        }
        let wants = inner
            .routes
            .iter()
            .filter_map(|(name, e)| {
                let r = e
                    .rollout
                    .as_ref()
                    .filter(|r| r.phase == Phase::Progressing)?;
                let src = e.prom.as_ref()?;
                let k = if e.boundary.0 == r.step_started_unix {
                    e.boundary.1
                } else {
                    1
                };
                Some((
                    name.clone(),
                    r.step_started_unix,
                    src.lag.as_secs_f64(),
                    e.plan.hold.as_secs_f64(),
                    k,
                ))
            })
            .collect();
        *lock(&self.wants) = wants;
        changed
    }

    /// The windows of evidence the rollouts with `analysis.source` want
    /// from Prometheus at `now`: the step's so far (for `fail` and SRM),
    /// and its next boundary once Prometheus holds it (for `pass`).
    pub fn wanted(&self, now: f64) -> Vec<Wanted> {
        let mut out = Vec::new();
        for (route, started, lag, hold, k) in lock(&self.wants).iter() {
            let from = started + settle(*lag);
            out.push(Wanted {
                route: route.clone(),
                step_started_unix: *started,
                from,
                boundary: None,
            });
            let b = started + *k as f64 * hold;
            if now >= b + lag {
                out.push(Wanted {
                    route: route.clone(),
                    step_started_unix: *started,
                    from,
                    boundary: Some((*k, b)),
                });
            }
        }
        out
    }

    /// Prometheus' answer to a [`Rollouts::wanted`] window, for the next tick.
    pub fn deliver(&self, w: &Wanted, result: Result<Fetched, String>) {
        lock(&self.mailbox).push((w.clone(), result));
    }

    /// A person's command on `route`'s rollout.
    pub fn command(&self, route: &str, c: Command, metrics: &Metrics) -> Result<Changed, String> {
        let mut inner = self.lock();
        let dir = inner.dir.clone();
        let now = now_unix();
        let Some(e) = inner.routes.get_mut(route) else {
            return Err(format!("route \"{route}\" has no rollout"));
        };
        if e.rollout.is_none() && c == Command::Resume {
            // After a corrupt state file, a person chose to start again.
            let r = Rollout::start(&e.plan, &e.file, now);
            e.rollout = Some(r);
            e.problem = None;
        }
        let Some(r) = &mut e.rollout else {
            return Err(format!(
                "{}; `cutover rollout resume` starts the rollout again at its first step",
                e.problem.as_deref().unwrap_or("no state")
            ));
        };
        let before = r.canary_weight;
        r.command(&e.plan, c, now)?;
        transition_log(
            route,
            r,
            metrics,
            &self.notify,
            &e.plan,
            e.evidence.as_ref(),
        );
        let mut changed = Changed {
            weights: true,
            pending: Vec::new(),
        };
        if r.canary_weight <= before {
            changed.pending.push((route.to_owned(), r.clone()));
        } else if let Err(err) = store::save(&dir, route, r) {
            tracing::error!(route, error = %err, "cannot write the rollout state");
        }
        record_metrics(metrics, route, e.rollout.as_ref());
        Ok(changed)
    }

    /// Makes the current states what `/admin/state` shows; called once
    /// their weights are in force.
    pub fn show(&self) {
        let mut inner = self.lock();
        let shown = inner
            .routes
            .iter()
            .map(|(name, e)| (name.clone(), describe_entry(e)))
            .collect();
        inner.shown = shown;
        // Announced once in force, never before.
        self.notify.flush();
    }

    /// The `rollout` object of `/admin/state` for `route`, if it has one.
    pub fn describe(&self, route: &str) -> Option<Value> {
        self.lock().shown.get(route).cloned()
    }

    /// The names of the routes that have a rollout.
    pub fn routes(&self) -> Vec<String> {
        self.lock().shown.keys().cloned().collect()
    }
}

fn describe_entry(e: &Entry) -> Value {
    {
        match &e.rollout {
            None => json!({
                "id": e.plan.id,
                "state": "paused",
                "step": null,
                "canary": e.plan.canary,
                "canary_weight": null,
                "steps": e.plan.steps,
                "step_started_unix": null,
                "reason": e.problem,
                "verdict": e.verdict,
                "owns_weights": false,
            }),
            Some(r) => json!({
                "id": r.id,
                "state": r.phase.as_str(),
                "step": r.step,
                "canary": e.plan.canary,
                "baseline": e.plan.baseline,
                "canary_weight": r.canary_weight,
                "steps": e.plan.steps,
                "step_started_unix": r.step_started_unix,
                "hold_seconds": e.plan.hold.as_secs_f64(),
                "min_requests": e.plan.min_requests,
                "reason": r.reason,
                "verdict": e.verdict,
                "verdict_reasons": r.verdict,
                "owns_weights": r.owns_weights,
                "history": r.history,
            }),
        }
    }
}

/// The least time from a step's start to its evidence: every replica
/// decides a step within a poll, a Prometheus answer and a tick of its start
/// (1 s + usually milliseconds + 0.5 s), so what comes before this may
/// still have been served at the previous step's weights.
const SETTLE: f64 = 4.0;

/// How long after a step starts its evidence starts: `lag`, and at least
/// [`SETTLE`].
fn settle(lag: f64) -> f64 {
    lag.max(SETTLE)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The observation of a rollout whose evidence comes from Prometheus.
///
/// Replicas agree because they judge the same windows: a step that started
/// at `s` (the same instant on every replica) is judged for `pass` only on
/// `[s + settle, s + k * hold]` at its boundaries `k = 1, 2, ...` in
/// order, each once Prometheus holds it (`lag` after it), and the next step
/// starts at `s + k * hold + lag` everywhere. `fail` and sample-ratio alarms
/// are read on `[s + settle, now]` at every tick and act at once. No answer from
/// Prometheus is `inconclusive`: never a move either way.
fn prom_observation(e: &mut Entry, route: &crate::routing::Route, s: f64, now: f64) -> Observation {
    let lag = e.prom.as_ref().map_or(0.0, |p| p.lag.as_secs_f64());
    let hold = e.plan.hold.as_secs_f64();
    let k = e.boundary.1;
    if let Some((at_s, at_k, Ok(f))) = e.at_boundary.take()
        && at_s == s
        && at_k == k
    {
        let b = s + k as f64 * hold;
        let elapsed = std::time::Duration::from_secs_f64((b - s - settle(lag)).max(0.0));
        if let Ok(j) = evidence::judge_fetched(route, &e.plan, &f, elapsed) {
            // This boundary is judged; the next one is next.
            e.boundary.1 += 1;
            if j.verdict == Verdict::Pass
                && j.canary_requests >= e.plan.min_requests
                && j.baseline_requests >= e.plan.min_requests
            {
                e.verdict = j.label;
                return Observation {
                    now_unix: b + lag,
                    verdict: Verdict::Pass,
                    canary_requests: j.canary_requests,
                    baseline_requests: j.baseline_requests,
                    reasons: j.reasons,
                };
            }
        }
    }
    let unknown = |why: String| {
        (
            Kind::Inconclusive.as_str(),
            Verdict::Inconclusive,
            vec![why],
            0,
            0,
        )
    };
    let (label, verdict, reasons, canary, baseline) = match &e.live {
        Some((ls, Ok(f))) if *ls == s => {
            let elapsed = std::time::Duration::from_secs_f64((now - s - settle(lag)).max(0.0));
            match evidence::judge_fetched(route, &e.plan, f, elapsed) {
                Ok(j) => {
                    // Only a boundary moves a step forward.
                    let v = if j.verdict == Verdict::Pass {
                        Verdict::Inconclusive
                    } else {
                        j.verdict
                    };
                    (
                        j.label,
                        v,
                        j.reasons,
                        j.canary_requests,
                        j.baseline_requests,
                    )
                }
                Err(why) => unknown(why),
            }
        }
        Some((ls, Err(why))) if *ls == s => unknown(format!("prometheus unreachable: {why}")),
        _ => unknown("waiting for an answer from prometheus".into()),
    };
    e.verdict = label;
    Observation {
        now_unix: now,
        verdict,
        canary_requests: canary,
        baseline_requests: baseline,
        reasons,
    }
}

fn save(dir: &Path, route: &str, r: &Rollout) {
    if let Err(e) = store::save(dir, route, r) {
        tracing::error!(route, error = %e, "cannot write the rollout state");
    }
}

/// "blue=100 green=0".
fn describe(weights: &[(String, u32)]) -> String {
    weights
        .iter()
        .map(|(b, w)| format!("{b}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one log line of a transition, with its evidence; its event is
/// staged for the route's webhook.
fn transition_log(
    route: &str,
    r: &Rollout,
    metrics: &Metrics,
    notify: &Outbox,
    plan: &RolloutSpec,
    evidence: Option<&Evidence>,
) {
    notify.stage(route, plan, r, evidence, &metrics.notifications);
    metrics
        .rollout_transitions
        .with_label_values(&[route, r.phase.as_str()])
        .inc();
    tracing::info!(
        route,
        id = %r.id,
        to = r.phase.as_str(),
        step = r.step,
        canary_weight = r.canary_weight,
        reason = %r.reason,
        evidence = %r.verdict.join("; "),
        "rollout transition"
    );
}

fn record_metrics(metrics: &Metrics, route: &str, r: Option<&Rollout>) {
    let phase = r.map_or(Phase::Paused, |r| r.phase);
    for p in Phase::ALL {
        metrics
            .rollout_state
            .with_label_values(&[route, p.as_str()])
            .set(i64::from(p == phase));
    }
    let step = r.map_or(0, |r| r.step as i64);
    metrics.rollout_step.with_label_values(&[route]).set(step);
}

fn forget_metrics(metrics: &Metrics, route: &str) {
    for p in Phase::ALL {
        let _ = metrics
            .rollout_state
            .remove_label_values(&[route, p.as_str()]);
    }
    let _ = metrics.rollout_step.remove_label_values(&[route]);
}
