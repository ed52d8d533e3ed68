//! The rollout state machine of one route, as a pure function: the state, a
//! plan and what was observed since the step started go in, the next state
//! comes out. No clock, no I/O: the controller supplies `now` and the
//! verdict, the store persists the result.
//!
//! ```text
//! progressing(i) --hold passed, min_requests per side, verdict pass--> progressing(i+1)
//! progressing(i) --next step is 100----------------------------------> promoted
//! progressing(i) --verdict fail--> rolled_back (or paused with on_failure = "pause")
//! progressing(i) --SRM alarm-----> paused (the evidence is biased)
//! paused(i)      --resume--------> progressing(i), evidence starts again
//! any active     --promote-------> promoted; --abort--> rolled_back
//! ```
//! Promoted and rolled back are final until the rollout's id changes.

use serde::{Deserialize, Serialize};

use crate::config::{OnFailure, RolloutSpec};

/// Where a rollout stands; also the `state` label and JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Progressing,
    Paused,
    Promoted,
    RolledBack,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

/// The verdict on the canary's evidence since its step started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
    /// Sample-ratio mismatch: the comparison is biased.
    SrmAlarm,
}

/// What the controller observed for one tick.
#[derive(Debug, Clone)]
pub struct Observation {
    pub now_unix: f64,
    pub verdict: Verdict,
    pub canary_requests: u64,
    pub baseline_requests: u64,
    /// The verdict's reasons, for the log and `reason`.
    pub reasons: Vec<String>,
}

/// A person's command (`cutover rollout ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Promote,
    /// Roll back now.
    Abort,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            _ => return None,
        })
    }
}

/// One transition, kept in the state file's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_unix: f64,
    pub to: Phase,
    pub step: usize,
    pub canary_weight: u32,
    pub reason: String,
}

/// The durable state of one route's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub phase: Phase,
    /// Index into the plan's steps.
    pub step: usize,
    /// The canary's weight in force (percent): what "never backwards" keeps.
    pub canary_weight: u32,
    pub step_started_unix: f64,
    pub started_unix: f64,
    pub reason: String,
    /// The route's weights in the file when the rollout started; a reload
    /// with other weights ends the rollout (the file wins).
    pub file_weights: Vec<(String, u32)>,
    /// False once a file edit ended the rollout: the file's weights are in
    /// force, whatever the state.
    #[serde(default = "yes")]
    pub owns_weights: bool,
    /// The last verdict's reasons.
    pub verdict: Vec<String>,
    /// The most recent transitions, oldest first, at most [`HISTORY`].
    pub history: Vec<Event>,
}

fn yes() -> bool {
    true
}

/// Transitions kept in the state file.
pub const HISTORY: usize = 50;

impl Rollout {
    /// A new rollout at its first step.
    pub fn start(plan: &RolloutSpec, file_weights: &[(String, u32)], now_unix: f64) -> Rollout {
        let mut r = Rollout {
            id: plan.id.clone(),
            phase: Phase::Progressing,
            step: 0,
            canary_weight: 0,
            step_started_unix: now_unix,
            started_unix: now_unix,
            reason: String::new(),
            file_weights: file_weights.to_vec(),
            owns_weights: true,
            verdict: Vec::new(),
            history: Vec::new(),
        };
        r.enter_step(plan, 0, now_unix, "rollout started".into());
        r
    }

    /// Applies one tick's observation; true when the state changed.
    pub fn tick(&mut self, plan: &RolloutSpec, o: &Observation) -> bool {
        self.verdict.clone_from(&o.reasons);
        if self.phase != Phase::Progressing {
            return false;
        }
        let evidence = o.reasons.join("; ");
        match o.verdict {
            Verdict::Fail => {
                let reason = format!("verdict fail: {evidence}");
                let to = match plan.on_failure {
                    OnFailure::Rollback => Phase::RolledBack,
                    OnFailure::Pause => Phase::Paused,
                };
                self.go(plan, to, o.now_unix, reason);
                true
            }
            Verdict::SrmAlarm => {
                self.go(
                    plan,
                    Phase::Paused,
                    o.now_unix,
                    format!("sample ratio mismatch, the evidence is biased: {evidence}"),
                );
                true
            }
            Verdict::Pass
                if o.now_unix - self.step_started_unix >= plan.hold.as_secs_f64()
                    && o.canary_requests >= plan.min_requests
                    && o.baseline_requests >= plan.min_requests =>
            {
                let reason = format!(
                    "step {} passed after {:.0}s with {} and {} requests: {evidence}",
                    self.canary_weight,
                    o.now_unix - self.step_started_unix,
                    o.canary_requests,
                    o.baseline_requests
                );
                self.enter_step(plan, self.step + 1, o.now_unix, reason);
                true
            }
            _ => false,
        }
    }

    /// Applies a person's command; `Err` says why it does not apply.
    pub fn command(&mut self, plan: &RolloutSpec, c: Command, now_unix: f64) -> Result<(), String> {
        if self.phase.is_final() {
            return Err(format!(
                "rollout {} is {}; change its id in the config to start another",
                self.id,
                self.phase.as_str()
            ));
        }
        match (c, self.phase) {
            (Command::Pause, Phase::Progressing) => {
                self.go(plan, Phase::Paused, now_unix, "paused by a person".into())
            }
            (Command::Resume, Phase::Paused) => {
                // The evidence of the step starts again from now.
                self.step_started_unix = now_unix;
                self.go(
                    plan,
                    Phase::Progressing,
                    now_unix,
                    "resumed by a person".into(),
                )
            }
            (Command::Promote, _) => self.go(
                plan,
                Phase::Promoted,
                now_unix,
                "promoted by a person".into(),
            ),
            (Command::Abort, _) => self.go(
                plan,
                Phase::RolledBack,
                now_unix,
                "aborted by a person".into(),
            ),
            (c, p) => return Err(format!("cannot {c:?} a rollout that is {}", p.as_str())),
        }
        Ok(())
    }

    /// Ends the rollout because the file changed under it: the file's
    /// weights are in force from now on.
    pub fn end_by_file(&mut self, plan: &RolloutSpec, now_unix: f64, reason: String) {
        if !self.phase.is_final() {
            self.go(plan, Phase::RolledBack, now_unix, reason);
        }
    }

    /// Moves to step `i`; the last step (100) is promotion.
    fn enter_step(&mut self, plan: &RolloutSpec, i: usize, now_unix: f64, reason: String) {
        let i = i.min(plan.steps.len().saturating_sub(1));
        let weight = plan.steps.get(i).copied().unwrap_or(100);
        self.step = i;
        self.step_started_unix = now_unix;
        if weight >= 100 {
            self.go(plan, Phase::Promoted, now_unix, reason);
        } else {
            self.canary_weight = weight;
            self.go(plan, Phase::Progressing, now_unix, reason);
        }
    }

    fn go(&mut self, plan: &RolloutSpec, to: Phase, now_unix: f64, reason: String) {
        self.phase = to;
        match to {
            Phase::Promoted => {
                self.canary_weight = 100;
                self.step = plan.steps.len().saturating_sub(1);
            }
            Phase::RolledBack => self.canary_weight = 0,
            _ => {}
        }
        self.reason.clone_from(&reason);
        self.history.push(Event {
            at_unix: now_unix,
            to,
            step: self.step,
            canary_weight: self.canary_weight,
            reason,
        });
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }

    /// After a restart or a reload that changed the plan but not the id:
    /// the step whose weight is the first at or above the weight in force,
    /// so users never move back to an earlier step.
    pub fn realign(&mut self, plan: &RolloutSpec) {
        if self.phase.is_final() {
            return;
        }
        let i = plan
            .steps
            .iter()
            .position(|s| *s >= self.canary_weight)
            .unwrap_or(plan.steps.len().saturating_sub(1));
        self.step = i;
        self.canary_weight = self
            .canary_weight
            .max(plan.steps.get(i).copied().unwrap_or(100));
        if self.canary_weight >= 100 {
            self.phase = Phase::Promoted;
        }
    }

    /// The route's weights while this rollout owns them, in the order of
    /// `route_weights`: the canary its weight, the baseline the rest,
    /// every other backend 0.
    pub fn weights(
        &self,
        plan: &RolloutSpec,
        route_weights: &[(String, u32)],
    ) -> Vec<(String, u32)> {
        route_weights
            .iter()
            .map(|(b, _)| {
                let w = if *b == plan.canary {
                    self.canary_weight
                } else if *b == plan.baseline {
                    100 - self.canary_weight.min(100)
                } else {
                    0
                };
                (b.clone(), w)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan(on_failure: OnFailure) -> RolloutSpec {
        RolloutSpec {
            id: "v2".into(),
            canary: "green".into(),
            baseline: "blue".into(),
            steps: vec![1, 10, 50, 100],
            hold: Duration::from_secs(60),
            min_requests: 500,
            on_failure,
            notify: None,
            start: None,
        }
    }

    fn file() -> Vec<(String, u32)> {
        vec![("blue".into(), 100), ("green".into(), 0)]
    }

    fn seen(now: f64, verdict: Verdict, n: u64) -> Observation {
        Observation {
            now_unix: now,
            verdict,
            canary_requests: n,
            baseline_requests: n,
            reasons: vec!["why".into()],
        }
    }

    #[test]
    fn passes_every_step_to_promotion_only_after_hold_and_requests() {
        let p = plan(OnFailure::Rollback);
        let mut r = Rollout::start(&p, &file(), 0.0);
        assert_eq!((r.phase, r.canary_weight), (Phase::Progressing, 1));
        assert_eq!(
            r.weights(&p, &file()),
            vec![("blue".into(), 99), ("green".into(), 1)]
        );
        // Too early, too few requests, inconclusive: no move.
        assert!(!r.tick(&p, &seen(59.0, Verdict::Pass, 1000)));
        assert!(!r.tick(&p, &seen(61.0, Verdict::Pass, 499)));
        assert!(!r.tick(&p, &seen(61.0, Verdict::Inconclusive, 1000)));
        assert!(r.tick(&p, &seen(61.0, Verdict::Pass, 500)));
        assert_eq!(
            (r.step, r.canary_weight, r.step_started_unix),
            (1, 10, 61.0)
        );
        assert!(
            !r.tick(&p, &seen(100.0, Verdict::Pass, 5000)),
            "hold restarts per step"
        );
        assert!(r.tick(&p, &seen(121.0, Verdict::Pass, 500)));
        assert_eq!(r.canary_weight, 50);
        assert!(r.tick(&p, &seen(181.0, Verdict::Pass, 500)));
        assert_eq!(
            (r.phase, r.canary_weight, r.step),
            (Phase::Promoted, 100, 3)
        );
        assert_eq!(
            r.weights(&p, &file()),
            vec![("blue".into(), 0), ("green".into(), 100)]
        );
        assert!(
            !r.tick(&p, &seen(1000.0, Verdict::Fail, 5000)),
            "promoted is final"
        );
        assert_eq!(r.history.len(), 4);
    }

    #[test]
    fn fail_rolls_back_at_once_or_pauses() {
        let p = plan(OnFailure::Rollback);
        let mut r = Rollout::start(&p, &file(), 0.0);
        // A fail needs neither the hold nor min_requests: the verdict
        // already accounts for the evidence it has.
        assert!(r.tick(&p, &seen(1.0, Verdict::Fail, 10)));
        assert_eq!((r.phase, r.canary_weight), (Phase::RolledBack, 0));
        assert!(r.reason.starts_with("verdict fail: why"));
        assert_eq!(
            r.weights(&p, &file()),
            vec![("blue".into(), 100), ("green".into(), 0)]
        );
        assert!(r.command(&p, Command::Resume, 2.0).is_err(), "final");

        let p = plan(OnFailure::Pause);
        let mut r = Rollout::start(&p, &file(), 0.0);
        assert!(r.tick(&p, &seen(1.0, Verdict::Fail, 10)));
        assert_eq!((r.phase, r.canary_weight), (Phase::Paused, 1));
        assert!(
            !r.tick(&p, &seen(500.0, Verdict::Pass, 5000)),
            "paused waits"
        );
        r.command(&p, Command::Resume, 600.0).unwrap();
        assert_eq!((r.phase, r.step_started_unix), (Phase::Progressing, 600.0));
    }

    #[test]
    fn srm_pauses_and_commands_apply() {
        let p = plan(OnFailure::Rollback);
        let mut r = Rollout::start(&p, &file(), 0.0);
        assert!(r.tick(&p, &seen(1.0, Verdict::SrmAlarm, 1000)));
        assert_eq!(r.phase, Phase::Paused);
        assert!(r.command(&p, Command::Pause, 2.0).is_err());
        r.command(&p, Command::Promote, 3.0).unwrap();
        assert_eq!((r.phase, r.canary_weight), (Phase::Promoted, 100));
        let mut r = Rollout::start(&p, &file(), 0.0);
        r.command(&p, Command::Abort, 3.0).unwrap();
        assert_eq!((r.phase, r.canary_weight), (Phase::RolledBack, 0));
        assert_eq!(Command::parse("abort"), Some(Command::Abort));
        assert_eq!(Command::parse("nope"), None);
    }

    #[test]
    fn realign_never_moves_backwards() {
        let p = plan(OnFailure::Rollback);
        let mut r = Rollout::start(&p, &file(), 0.0);
        r.tick(&p, &seen(61.0, Verdict::Pass, 500));
        assert_eq!(r.canary_weight, 10);
        let mut q = p.clone();
        q.steps = vec![5, 20, 100];
        r.realign(&q);
        assert_eq!((r.step, r.canary_weight), (1, 20));
        q.steps = vec![100];
        r.realign(&q);
        assert_eq!(r.phase, Phase::Promoted);
    }

    #[test]
    fn a_plan_of_one_step_is_promoted_at_start_and_history_is_bounded() {
        let mut p = plan(OnFailure::Rollback);
        p.steps = vec![100];
        let r = Rollout::start(&p, &file(), 0.0);
        assert_eq!(r.phase, Phase::Promoted);
        let p = plan(OnFailure::Pause);
        let mut r = Rollout::start(&p, &file(), 0.0);
        for i in 0..200 {
            r.tick(&p, &seen(f64::from(i), Verdict::SrmAlarm, 1));
            let _ = r.command(&p, Command::Resume, f64::from(i));
        }
        assert_eq!(r.history.len(), HISTORY);
    }
}
