//! The load tester against real binaries on the tiny random-weight cascade: a payload recorded
//! in process and replayed at one stage alone, open and closed loop, every reported field, the
//! sweep's plot.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use support::cluster::{STAGE_BIN, Service, tiny_model};
use vidcascade_load::payload::{RecordOptions, record};
use vidcascade_load::runner::RunSpec;
use vidcascade_load::schedule::{Arrivals, LoadModel};
use vidcascade_load::target::{Driver, Target};
use vidcascade_load::{measure, plot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_payload_loads_one_stage_alone_and_every_field_is_reported() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let options = RecordOptions {
        prompts: vec![
            "a red circle moving left".into(),
            "a blue square moving up".into(),
        ],
        seed: 3,
        preview_every: 0,
    };
    let payload = tokio::task::spawn_blocking(move || record(&model, &options)).await??;
    let path = dir.path().join("payload.bin");
    payload.save(&path)?;
    let payload = vidcascade_load::payload::Payload::load(&path)?;
    // The SR stage's requests carry the upstream stage's real output as conditioning.
    let tsr = payload.stage("tsr")?;
    assert_eq!(tsr.len(), 2);
    assert!(
        tsr.iter()
            .all(|r| r.conditioning.is_some() && r.text_embedding.is_some())
    );
    assert!(
        payload
            .stage("base")?
            .iter()
            .all(|r| r.conditioning.is_none())
    );

    let model = tiny_model(dir.path())?;
    let args = [
        "--model",
        &model.display().to_string(),
        "--stage",
        "tsr",
        "--max-batch-size",
        "4",
    ]
    .map(String::from);
    let stage = Service::start(STAGE_BIN, "tsr", &args)?;
    let metrics = vec![stage.metrics.context("metrics")?.to_string()];
    let target = Target::Stage("tsr".into());
    let addr = format!("http://{}", stage.grpc);
    let driver = Arc::new(Driver::connect(&target, &addr, &[], 0, Some(&payload), None).await?);

    let open = RunSpec {
        load: LoadModel::Open {
            rate: 20.0,
            arrivals: Arrivals::Poisson,
            seed: 2,
        },
        requests: Some(12),
        duration: None,
        warmup: 1,
        progress: false,
    };
    let (report, result) = measure(driver.clone(), &open, &metrics, "open").await?;
    assert_eq!(
        (report.requests, report.ok, result.outcomes.len()),
        (12, 12, 12)
    );
    assert_eq!(
        (report.target.as_str(), report.load.as_str()),
        ("stage:tsr", "open")
    );
    assert_eq!(
        (report.offered_rate, report.arrivals.as_deref()),
        (Some(20.0), Some("poisson"))
    );
    assert_eq!(report.outcomes.get("OK"), Some(&12));
    let latency = report.latency.context("latency")?;
    assert!(latency.p50 > 0.0 && latency.p50 <= latency.p90 && latency.p99 <= latency.max);
    let first = report.first_progress.context("first progress")?;
    assert!(first.p50 <= latency.p50);
    assert!(report.queued.is_some(), "the stage reports its queue time");
    assert!(report.achieved_rate > 0.0 && report.sent_rate > 0.0 && report.wall_s > 0.0);
    // 12 requests at 20/s into a stage batching up to 4: some calls were batched, none larger
    // than 4, and the stage's metrics were read.
    let mean = report
        .mean_batch_size
        .context("batch sizes from the stage's metrics")?;
    assert!((1.0..=4.0).contains(&mean), "mean batch {mean}");
    assert!(report.batch_sizes.values().sum::<f64>() > 0.0);
    assert!(
        report
            .metrics
            .keys()
            .any(|k| k.starts_with("vidcascade_stage_requests_total"))
    );

    let short = RunSpec {
        load: LoadModel::Open {
            rate: 2000.0,
            arrivals: Arrivals::Constant,
            seed: 0,
        },
        requests: Some(3),
        duration: None,
        warmup: 0,
        progress: false,
    };
    let deadline_driver = Arc::new(
        Driver::connect(
            &target,
            &addr,
            &[],
            0,
            Some(&payload),
            Some(Duration::from_micros(1)),
        )
        .await?,
    );
    let (expired, _) = measure(deadline_driver, &short, &[], "deadline").await?;
    assert_eq!(
        expired.outcomes.get("DEADLINE_EXCEEDED"),
        Some(&3),
        "{:?}",
        expired.outcomes
    );
    assert_eq!((expired.ok, expired.latency), (0, None));

    let mut sweep = Vec::new();
    for concurrency in [1, 2] {
        let closed = RunSpec {
            load: LoadModel::Closed { concurrency },
            requests: Some(4),
            duration: None,
            warmup: 0,
            progress: false,
        };
        let (report, _) = measure(driver.clone(), &closed, &metrics, "closed").await?;
        assert_eq!((report.concurrency, report.ok), (Some(concurrency), 4));
        sweep.push(report);
    }
    let json = dir.path().join("runs.jsonl");
    let csv = dir.path().join("runs.csv");
    for report in &sweep {
        report.append_json(&json)?;
        report.append_csv(&csv)?;
    }
    // Read back as written (floats to within JSON's decimal round trip).
    let back = vidcascade_load::report::read_json_lines(&json)?;
    assert_eq!(back.len(), sweep.len());
    for (read, written) in back.iter().zip(&sweep) {
        assert_eq!(
            (&read.label, read.concurrency, read.ok),
            (&written.label, written.concurrency, written.ok)
        );
        assert_eq!(
            (&read.outcomes, &read.batch_sizes),
            (&written.outcomes, &written.batch_sizes)
        );
        let p50 =
            |r: &vidcascade_load::report::Report| r.latency.map(|l| l.p50).unwrap_or_default();
        assert!((p50(read) - p50(written)).abs() < 1e-12);
    }
    let csv = std::fs::read_to_string(&csv)?;
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("label,target,load,concurrency"));
    let png = dir.path().join("throughput.png");
    plot::throughput_vs_concurrency(&sweep, "tsr", &png)?;
    assert!(std::fs::read(&png)?.starts_with(b"\x89PNG"));
    Ok(())
}
