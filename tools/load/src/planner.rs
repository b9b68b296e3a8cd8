//! Capacity planning: how many replicas each stage needs for an arrival rate and a latency
//! target, predicted by a discrete-event simulation of the cascade with step-level batching.
//!
//! The model, per stage, comes from the per-stage sweep ([`crate::capacity`]): with `b`
//! requests in a batch the stage serves `throughput(b)` requests per second, so one denoising
//! step of the batch takes `b / (throughput(b) * steps)` seconds (linear between the measured
//! batch sizes). Requests arrive as a Poisson process, pass the stages in order, wait in a
//! stage's queue until a replica has room (at most `max_batch` in its batch), join the batch
//! at a step boundary, and leave after their `steps` steps. One queue per stage feeds its
//! replicas (the gateway sends a call to the least busy replica, which this approximates), and
//! the text encoder's few milliseconds are left out.

use std::collections::{BTreeMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::capacity::StageCapacity;

/// One stage of the cascade as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageModel {
    /// The stage's name.
    pub name: String,
    /// Denoising steps per request.
    pub steps: usize,
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Measured requests per second by batch size (at least batch 1).
    pub throughput: BTreeMap<usize, f64>,
}

impl StageModel {
    /// The model of a stage from its measured capacity.
    pub fn from_capacity(
        name: &str,
        steps: usize,
        max_batch: usize,
        capacity: &StageCapacity,
    ) -> Self {
        Self {
            name: name.to_string(),
            steps: steps.max(1),
            max_batch: max_batch.max(1),
            throughput: capacity.max_throughput_per_s.clone(),
        }
    }

    /// Seconds one step of a batch of `b` takes.
    pub fn step_seconds(&self, b: usize) -> f64 {
        // Seconds per request-step at each measured batch size: b / (throughput(b) * steps).
        let per_batch = |batch: usize, rate: f64| batch as f64 / (rate * self.steps as f64);
        let points: Vec<(f64, f64)> = self
            .throughput
            .iter()
            .filter(|(_, rate)| **rate > 0.0)
            .map(|(&batch, &rate)| (batch as f64, per_batch(batch, rate)))
            .collect();
        let b = b as f64;
        match points.iter().position(|&(x, _)| x >= b) {
            Some(0) => points[0].1 * b / points[0].0.max(1.0),
            Some(i) => {
                let ((x0, y0), (x1, y1)) = (points[i - 1], points[i]);
                y0 + (y1 - y0) * (b - x0) / (x1 - x0)
            }
            // Past the largest measured batch: extrapolate its per-request cost.
            None => points.last().map_or(f64::INFINITY, |&(x, y)| y * b / x),
        }
    }

    /// The most requests per second one replica serves (its best batch size).
    pub fn best_rate(&self) -> f64 {
        (1..=self.max_batch)
            .map(|b| b as f64 / (self.step_seconds(b) * self.steps as f64))
            .fold(0.0, f64::max)
    }
}

/// What a simulation predicts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Replicas per stage, in cascade order.
    pub replicas: Vec<(String, usize)>,
    /// End-to-end latency percentiles, seconds.
    pub p50_s: f64,
    /// 90th percentile.
    pub p90_s: f64,
    /// Mean time a request waited in each stage's queue, seconds.
    pub mean_wait_s: Vec<(String, f64)>,
    /// Mean time a request spent in each stage (queue and batch), seconds.
    pub mean_stage_s: Vec<(String, f64)>,
    /// Share of time each stage's replicas were busy.
    pub utilisation: Vec<(String, f64)>,
}

/// Where the replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Each replica on CPUs (or a GPU) of its own, as pods with their own resources: a step
    /// takes its measured time whatever else runs.
    Dedicated,
    /// Every replica on one machine's cores (a development box, `vidcascade serve`): `k` busy
    /// replicas each run at 1/k of the speed they were measured at alone.
    Shared,
}

/// One replica's batch in the simulation.
#[derive(Debug, Default, Clone)]
struct Replica {
    /// (request, steps left) in the batch.
    batch: Vec<(usize, usize)>,
    /// Seconds of work (at full speed) left in its current step; `None` when idle.
    left: Option<f64>,
    /// Wall time it was busy.
    busy: f64,
}

/// Simulates `requests` Poisson arrivals at `rate` per second through `stages` with
/// `replicas[k]` replicas each on `host` (seeded).
pub fn simulate(
    stages: &[StageModel],
    replicas: &[usize],
    rate: f64,
    requests: usize,
    seed: u64,
    host: Host,
) -> Prediction {
    let mut sim = Simulation::new(stages, replicas, poisson_arrivals(rate, requests, seed));
    while sim.next_event(host) {}
    sim.prediction(replicas)
}

/// Arrival times of a seeded Poisson process.
fn poisson_arrivals(rate: f64, requests: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0;
    (0..requests)
        .map(|_| {
            t += -(1.0 - rng.random::<f64>()).ln() / rate;
            t
        })
        .collect()
}

/// The state of one simulation run.
struct Simulation<'a> {
    stages: &'a [StageModel],
    arrivals: Vec<f64>,
    pools: Vec<Vec<Replica>>,
    queues: Vec<VecDeque<(usize, f64)>>,
    /// Per stage: total queue wait and total time in the stage.
    waited: Vec<f64>,
    in_stage: Vec<f64>,
    /// Per request: when it entered its current stage, and its end-to-end latency.
    entered: Vec<f64>,
    done: Vec<f64>,
    next_arrival: usize,
    now: f64,
}

impl<'a> Simulation<'a> {
    fn new(stages: &'a [StageModel], replicas: &[usize], arrivals: Vec<f64>) -> Self {
        let requests = arrivals.len();
        Self {
            stages,
            pools: replicas
                .iter()
                .map(|&n| vec![Replica::default(); n.max(1)])
                .collect(),
            queues: vec![VecDeque::new(); stages.len()],
            waited: vec![0.0; stages.len()],
            in_stage: vec![0.0; stages.len()],
            entered: vec![0.0; requests],
            done: vec![f64::NAN; requests],
            arrivals,
            next_arrival: 0,
            now: 0.0,
        }
    }

    /// Runs to the next event (an arrival or a step end); false when nothing is left.
    fn next_event(&mut self, host: Host) -> bool {
        let busy = self
            .pools
            .iter()
            .flatten()
            .filter(|r| r.left.is_some())
            .count();
        let speed = match host {
            Host::Dedicated => 1.0,
            Host::Shared => 1.0 / busy.max(1) as f64,
        };
        let step = self.earliest_step(speed);
        let until_arrival = self.arrivals.get(self.next_arrival).map(|at| at - self.now);
        let dt = match (until_arrival, step) {
            (Some(a), Some((s, _, _))) => a.min(s),
            (Some(a), None) => a,
            (None, Some((s, _, _))) => s,
            (None, None) => return false,
        };
        self.advance(dt, speed);
        match step {
            Some((s, k, r)) if until_arrival.is_none_or(|a| s < a) => self.finish(k, r),
            _ => self.arrive(),
        }
        for k in 0..self.stages.len() {
            let (queue, waited) = (&mut self.queues[k], &mut self.waited[k]);
            admit(&self.stages[k], &mut self.pools[k], queue, waited, self.now);
        }
        true
    }

    /// The soonest step end at `speed`: (seconds from now, stage, replica).
    fn earliest_step(&self, speed: f64) -> Option<(f64, usize, usize)> {
        self.pools
            .iter()
            .enumerate()
            .flat_map(|(k, pool)| {
                pool.iter()
                    .enumerate()
                    .filter_map(move |(r, rep)| Some((rep.left? / speed, k, r)))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Moves time on by `dt`: every busy replica does `dt * speed` of work.
    fn advance(&mut self, dt: f64, speed: f64) {
        self.now += dt;
        for replica in self.pools.iter_mut().flatten() {
            if let Some(left) = &mut replica.left {
                *left -= dt * speed;
                replica.busy += dt;
            }
        }
    }

    /// Replica `r` of stage `k` ends its step; finished requests go on or are done.
    fn finish(&mut self, k: usize, r: usize) {
        let now = self.now;
        for request in finish_step(&mut self.pools[k][r]) {
            self.in_stage[k] += now - self.entered[request];
            self.entered[request] = now;
            match self.queues.get_mut(k + 1) {
                Some(queue) => queue.push_back((request, now)),
                None => self.done[request] = now - self.arrivals[request],
            }
        }
    }

    /// The next request arrives at the first stage.
    fn arrive(&mut self) {
        self.queues[0].push_back((self.next_arrival, self.now));
        self.entered[self.next_arrival] = self.now;
        self.next_arrival += 1;
    }

    fn prediction(&self, replicas: &[usize]) -> Prediction {
        let mut latencies: Vec<f64> = self
            .done
            .iter()
            .copied()
            .filter(|d| d.is_finite())
            .collect();
        latencies.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            latencies
                .get(((p * latencies.len() as f64).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let per_request = self.arrivals.len().max(1) as f64;
        let named = |values: Vec<f64>| -> Vec<(String, f64)> {
            self.stages
                .iter()
                .map(|s| s.name.clone())
                .zip(values)
                .collect()
        };
        let utilisation = self
            .pools
            .iter()
            .map(|pool| {
                pool.iter().map(|r| r.busy).sum::<f64>() / (pool.len() as f64 * self.now.max(1e-9))
            })
            .collect();
        Prediction {
            replicas: self
                .stages
                .iter()
                .map(|s| s.name.clone())
                .zip(replicas.iter().copied())
                .collect(),
            p50_s: rank(0.5),
            p90_s: rank(0.9),
            mean_wait_s: named(self.waited.iter().map(|w| w / per_request).collect()),
            mean_stage_s: named(self.in_stage.iter().map(|t| t / per_request).collect()),
            utilisation: named(utilisation),
        }
    }
}

/// Ends a replica's step: every request in the batch is one step further; returns the
/// requests that finished the stage.
fn finish_step(replica: &mut Replica) -> Vec<usize> {
    replica.left = None;
    for (_, left) in &mut replica.batch {
        *left -= 1;
    }
    let finished = replica
        .batch
        .iter()
        .filter(|(_, left)| *left == 0)
        .map(|(r, _)| *r)
        .collect();
    replica.batch.retain(|(_, left)| *left > 0);
    finished
}

/// At a step boundary (or an idle replica), fills batches from the queue and starts steps.
fn admit(
    stage: &StageModel,
    pool: &mut [Replica],
    queue: &mut VecDeque<(usize, f64)>,
    waited: &mut f64,
    now: f64,
) {
    for replica in pool.iter_mut().filter(|r| r.left.is_none()) {
        while replica.batch.len() < stage.max_batch {
            let Some((request, since)) = queue.pop_front() else {
                break;
            };
            *waited += now - since;
            replica.batch.push((request, stage.steps));
        }
        if !replica.batch.is_empty() {
            replica.left = Some(stage.step_seconds(replica.batch.len()));
        }
    }
}

/// The fewest replicas per stage that meet `p90_target_s` at `rate`: start where each stage's
/// utilisation is at most 80 %, then add a replica to the stage that costs a request the most
/// beyond its service time alone (queue wait, and slower steps in fuller batches) until the
/// simulated p90 meets the target (or `max_replicas` per stage is reached).
pub fn plan(
    stages: &[StageModel],
    rate: f64,
    p90_target_s: f64,
    max_replicas: usize,
    requests: usize,
    seed: u64,
    host: Host,
) -> Prediction {
    if host == Host::Shared {
        // One machine: another replica adds no cores, only contention. Predict one each.
        return simulate(stages, &vec![1; stages.len()], rate, requests, seed, host);
    }
    let mut replicas: Vec<usize> = stages
        .iter()
        .map(|s| ((rate / (0.8 * s.best_rate())).ceil() as usize).clamp(1, max_replicas))
        .collect();
    loop {
        let prediction = simulate(stages, &replicas, rate, requests, seed, host);
        let excess = |k: usize| {
            let alone = stages[k].step_seconds(1) * stages[k].steps as f64;
            prediction.mean_stage_s[k].1 - alone
        };
        let worst = (0..stages.len())
            .filter(|&k| replicas[k] < max_replicas)
            .max_by(|&a, &b| excess(a).total_cmp(&excess(b)));
        match worst {
            Some(k) if prediction.p90_s > p90_target_s => replicas[k] += 1,
            _ => return prediction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, steps: usize, max_batch: usize, rates: &[(usize, f64)]) -> StageModel {
        StageModel {
            name: name.into(),
            steps,
            max_batch,
            throughput: rates.iter().copied().collect(),
        }
    }

    #[test]
    fn step_times_follow_the_measured_throughput() {
        let s = stage("base", 10, 4, &[(1, 1.0), (4, 2.0)]);
        assert!((s.step_seconds(1) - 0.1).abs() < 1e-12);
        assert!((s.step_seconds(4) - 0.2).abs() < 1e-12);
        assert!((s.step_seconds(2) - (0.1 + 0.1 / 3.0)).abs() < 1e-12);
        assert!((s.best_rate() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn one_request_alone_takes_the_sum_of_the_service_times() {
        let stages = [stage("a", 4, 1, &[(1, 2.0)]), stage("b", 2, 1, &[(1, 1.0)])];
        let p = simulate(&stages, &[1, 1], 1e-6, 1, 1, Host::Dedicated);
        assert!((p.p50_s - 1.5).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn an_m_m_1_like_stage_queues_as_queueing_theory_says() {
        // One step per request, no batching: an M/D/1 queue at utilisation 0.5 waits
        // rho / (2 mu (1 - rho)) = 0.5 s on average (Pollaczek-Khinchine) for a 1 s service.
        let stages = [stage("a", 1, 1, &[(1, 1.0)])];
        let p = simulate(&stages, &[1], 0.5, 40_000, 3, Host::Dedicated);
        assert!((p.mean_wait_s[0].1 - 0.5).abs() < 0.05, "{p:?}");
        assert!((p.utilisation[0].1 - 0.5).abs() < 0.02, "{p:?}");
    }

    #[test]
    fn replicas_on_one_host_share_its_speed() {
        // Two 1 s requests arriving together at two single-step stages' replicas... of the same
        // stage: alone each takes 1 s; sharing the host, both finish at 2 s.
        let stages = [stage("a", 1, 1, &[(1, 1.0)])];
        let dedicated = simulate(&stages, &[2], 1e6, 2, 1, Host::Dedicated);
        let shared = simulate(&stages, &[2], 1e6, 2, 1, Host::Shared);
        assert!((dedicated.p90_s - 1.0).abs() < 1e-3, "{dedicated:?}");
        assert!((shared.p90_s - 2.0).abs() < 1e-3, "{shared:?}");
    }

    #[test]
    fn the_plan_adds_replicas_where_the_queue_is_until_the_target_holds() {
        let stages = [
            stage("fast", 4, 1, &[(1, 10.0)]),
            stage("slow", 4, 1, &[(1, 1.0)]),
        ];
        let p = plan(&stages, 1.5, 2.0, 8, 4000, 5, Host::Dedicated);
        assert_eq!(p.replicas[0].1, 1);
        assert!(p.replicas[1].1 >= 2, "{p:?}");
        assert!(p.p90_s <= 2.0, "{p:?}");
    }
}
