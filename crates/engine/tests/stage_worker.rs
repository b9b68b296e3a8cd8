//! The stage engine with a tiny random-weight stage: step-level batching, a late joiner, the
//! bounded queue, cancellation by a departed caller, deadlines and previews.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use vidcascade_engine::{
    DiffusionStage, EngineConfig, EngineError, JobEvent, JobHandle, StageEngine, StageJob,
};
use vidcascade_models::ModelRepository;
use vidcascade_spec::StageOverrides;

struct Fixture {
    _dir: tempfile::TempDir,
    base: DiffusionStage,
    text: Tensor,
    unconditional: Tensor,
}

fn fixture() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let repository = ModelRepository::open(vidcascade_test_support::tiny_model(dir.path())?)?;
    let base = DiffusionStage::load(&repository, "base", &Device::Cpu)?;
    let mut texts = repository
        .load_text_encoder(&Device::Cpu)?
        .encode(&["a red circle moving left", ""])?;
    let unconditional = texts.pop().expect("two embeddings");
    let text = texts.pop().expect("two embeddings");
    Ok(Fixture {
        _dir: dir,
        base,
        text,
        unconditional,
    })
}

fn base_engine(f: &Fixture, config: EngineConfig) -> StageEngine {
    StageEngine::start(f.base.clone(), config)
}

fn job(f: &Fixture, seed: u64, steps: usize) -> anyhow::Result<StageJob> {
    let settings = StageOverrides {
        steps: Some(steps),
        ..Default::default()
    }
    .resolve(f.base.manifest(), "sampler")?;
    Ok(StageJob {
        text: f.text.clone(),
        unconditional: f.unconditional.clone(),
        low_res: None,
        known: None,
        seed,
        settings,
        preview_every: 0,
        deadline: None,
        checkpoint_every: 0,
        resume: None,
    })
}

/// Collects a job's events until its terminal one.
fn finish(mut handle: JobHandle) -> Vec<JobEvent> {
    let mut events = Vec::new();
    while let Some(event) = handle.events.blocking_recv() {
        let terminal = matches!(event, JobEvent::Done { .. } | JobEvent::Failed(_));
        events.push(event);
        if terminal {
            break;
        }
    }
    events
}

fn video(events: &[JobEvent]) -> Option<&Tensor> {
    events.iter().find_map(|e| match e {
        JobEvent::Done { video, .. } => Some(video),
        _ => None,
    })
}

#[test]
fn requests_arriving_together_share_network_calls_and_get_their_own_results() -> anyhow::Result<()>
{
    let f = fixture()?;
    let engine = base_engine(
        &f,
        EngineConfig {
            max_batch_size: 4,
            max_queue: 8,
            batch_wait: Duration::from_millis(200),
        },
    );
    let a = engine.submit(job(&f, 1, 5)?)?;
    let b = engine.submit(job(&f, 2, 5)?)?;
    let (ea, eb) = (finish(a), finish(b));
    let stats = engine.stats();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    let samples = stats
        .batched_samples
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (batches, samples),
        (5, 10),
        "two requests, five shared steps"
    );

    // Batching does not change a request's result: compare with running it alone.
    let alone = finish(engine.submit(job(&f, 1, 5)?)?);
    let diff = (video(&ea).expect("done") - video(&alone).expect("done"))?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-4, "batched result differs by {diff}");
    assert_ne!(
        video(&ea).expect("done").flatten_all()?.to_vec1::<f32>()?,
        video(&eb).expect("done").flatten_all()?.to_vec1::<f32>()?
    );
    engine.shutdown();
    Ok(())
}

#[test]
fn a_late_request_joins_the_running_batch_at_a_step_boundary() -> anyhow::Result<()> {
    let f = fixture()?;
    let engine = base_engine(&f, EngineConfig::default());
    let mut long = engine.submit(job(&f, 1, 30)?)?;
    // Wait until the long request has made progress, then submit a short one.
    loop {
        match long.events.blocking_recv() {
            Some(JobEvent::Step { step: 3, .. }) => break,
            Some(_) => continue,
            None => anyhow::bail!("engine stopped"),
        }
    }
    let short = finish(engine.submit(job(&f, 2, 4)?)?);
    assert!(video(&short).is_some());
    // The short request finished while the long one was still running.
    let rest = finish(long);
    let long_steps_after_short: usize = rest
        .iter()
        .filter(|e| matches!(e, JobEvent::Step { .. }))
        .count();
    assert!(
        long_steps_after_short > 4,
        "the short request did not wait for the long one"
    );
    let stats = engine.stats();
    assert!(
        stats
            .batched_samples
            .load(std::sync::atomic::Ordering::Relaxed)
            > stats.batches.load(std::sync::atomic::Ordering::Relaxed),
        "some network calls carried both requests"
    );
    engine.shutdown();
    Ok(())
}

#[test]
fn a_full_queue_rejects_at_once_while_admitted_requests_finish() -> anyhow::Result<()> {
    let f = fixture()?;
    let engine = base_engine(
        &f,
        EngineConfig {
            max_batch_size: 1,
            max_queue: 1,
            batch_wait: Duration::ZERO,
        },
    );
    let mut running = engine.submit(job(&f, 1, 20)?)?;
    // Make sure the first request is running (not queued) before filling the queue.
    while !matches!(
        running.events.blocking_recv(),
        Some(JobEvent::Admitted { .. })
    ) {}
    let queued = engine.submit(job(&f, 2, 3)?)?;
    let rejected = engine.submit(job(&f, 3, 3)?).expect_err("queue is full");
    assert!(matches!(rejected, EngineError::QueueFull { limit: 1, .. }));
    assert!(
        rejected
            .to_string()
            .contains("queue is full (1 requests waiting)")
    );
    assert!(video(&finish(running)).is_some());
    assert!(video(&finish(queued)).is_some());
    engine.shutdown();
    Ok(())
}

#[test]
fn a_departed_caller_leaves_the_batch_and_the_engine_serves_the_next_request() -> anyhow::Result<()>
{
    let f = fixture()?;
    let engine = base_engine(&f, EngineConfig::default());
    let mut gone = engine.submit(job(&f, 1, 200)?)?;
    while !matches!(
        gone.events.blocking_recv(),
        Some(JobEvent::Step { step: 2, .. })
    ) {}
    drop(gone);
    let stats = engine.stats();
    let started = Instant::now();
    while stats.cancelled.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "cancellation never reached the worker"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        stats.batches.load(std::sync::atomic::Ordering::Relaxed) < 50,
        "it kept computing"
    );
    assert!(video(&finish(engine.submit(job(&f, 2, 3)?)?)).is_some());
    assert_eq!(
        stats
            .pending_steps
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    engine.shutdown();
    Ok(())
}

#[test]
fn deadlines_stop_a_request_and_previews_arrive_on_schedule() -> anyhow::Result<()> {
    let f = fixture()?;
    let engine = base_engine(&f, EngineConfig::default());
    let mut late = job(&f, 1, 500)?;
    late.deadline = Some(Instant::now() + Duration::from_millis(300));
    let events = finish(engine.submit(late)?);
    assert!(
        matches!(events.last(), Some(JobEvent::Failed(EngineError::DeadlineExceeded { completed_steps, .. })) if *completed_steps < 500),
        "{:?}",
        events.last()
    );

    let mut previewed = job(&f, 2, 6)?;
    previewed.preview_every = 4;
    let events = finish(engine.submit(previewed)?);
    let preview_steps: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Step {
                step,
                preview: Some(p),
                ..
            } => {
                assert_eq!(p.dims(), &[3, 4, 8, 8]);
                Some(*step)
            }
            _ => None,
        })
        .collect();
    assert_eq!(preview_steps, vec![4, 6]);
    engine.shutdown();
    Ok(())
}

#[test]
fn one_requests_non_finite_sample_fails_it_alone_and_the_batch_goes_on() -> anyhow::Result<()> {
    let f = fixture()?;
    let engine = base_engine(
        &f,
        EngineConfig {
            batch_wait: Duration::from_millis(500),
            ..EngineConfig::default()
        },
    );
    let alone = video(&finish(engine.submit(job(&f, 4, 3)?)?))
        .cloned()
        .expect("a video");
    let mut poisoned = job(&f, 4, 3)?;
    poisoned.text = (poisoned.text * f64::NAN)?;
    let bad = engine.submit(poisoned)?;
    let good = engine.submit(job(&f, 4, 3)?)?;
    let bad = finish(bad);
    let good = finish(good);
    assert!(
        matches!(
            bad.last(),
            Some(JobEvent::Failed(EngineError::Diffusion { .. }))
        ),
        "{:?}",
        bad.last()
    );
    let together = video(&good).expect("the healthy request finished");
    let diff = (together - &alone)?.abs()?.max_all()?.to_scalar::<f32>()?;
    // Batch size changes the float summation order of the network, nothing else.
    assert!(
        diff < 1e-4,
        "sharing a batch with a failed sample changed the result by {diff}"
    );
    let stats = engine.stats();
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        stats.completed.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        stats
            .batched_samples
            .load(std::sync::atomic::Ordering::Relaxed),
        3 + 2 + 2,
        "the two shared their first step; the healthy one ran on alone"
    );
    engine.shutdown();
    Ok(())
}

#[test]
fn a_queued_request_hears_its_position_as_the_queue_moves() -> anyhow::Result<()> {
    let f = fixture()?;
    let engine = base_engine(
        &f,
        EngineConfig {
            max_batch_size: 1,
            max_queue: 4,
            batch_wait: Duration::ZERO,
        },
    );
    let mut running = engine.submit(job(&f, 1, 30)?)?;
    while !matches!(
        running.events.blocking_recv(),
        Some(JobEvent::Admitted { .. })
    ) {}
    let second = engine.submit(job(&f, 2, 3)?)?;
    let third = engine.submit(job(&f, 3, 3)?)?;
    assert_eq!((second.queue_position, third.queue_position), (0, 1));
    let events = finish(third);
    let positions: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Queued { position } => Some(*position),
            _ => None,
        })
        .collect();
    assert_eq!(
        positions,
        vec![0],
        "moved up once, when the second request joined the batch"
    );
    assert!(video(&events).is_some());
    drop((running, second));
    engine.shutdown();
    Ok(())
}
