//! The `vidcascade` command line, run as a real process: every output format (decoded back and
//! checked), `info`, and one-line errors for bad arguments, missing models and unwritable outputs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use vidcascade_test_support::{read_gif, read_mp4, read_png_frames};

fn tiny_model() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let root = vidcascade_test_support::tiny_model(dir.path())?;
    Ok((dir, root))
}

fn vidcascade(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_vidcascade"))
        .args(args)
        .env_remove("VIDCASCADE_MODEL")
        .output()?)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// The rest of a child's stdout, kept open so its later prints do not hit a closed pipe.
type OpenStdout = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Starts `vidcascade serve` for `model` on free ports; returns it and the gateway's URL.
fn start_serve(model: &Path) -> anyhow::Result<(Child, String, OpenStdout)> {
    let mut serve = Command::new(env!("CARGO_BIN_EXE_vidcascade"))
        .args(["serve", "--model", path(model), "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "off", "--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = serve
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let Some(line) = lines.next() else {
            let _ = serve.kill();
            anyhow::bail!("serve exited before printing the gateway address");
        };
        if let Some(addr) = line?.strip_prefix("gateway") {
            return Ok((serve, addr.trim().to_string(), lines));
        }
    }
}

/// A failed run: non-zero exit, one `error:` line, no panic or backtrace.
fn assert_clean_failure(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[test]
fn generate_writes_gif_mp4_and_png_frames_that_decode_back() -> anyhow::Result<()> {
    let (dir, model) = tiny_model()?;
    let gif = dir.path().join("out/video.gif");
    let stages = dir.path().join("stages");
    let out = vidcascade(&[
        "generate",
        "a red circle moving left",
        "-o",
        path(&gif),
        "--model",
        path(&model),
        "--scale",
        "2",
        "--save-stages",
        path(&stages),
        "--preview-every",
        "2",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let video = read_gif(&gif)?;
    // The tiny cascade ends at 8 frames of 16x16; --scale 2 doubles the size.
    assert_eq!((video.frames.len(), video.width, video.height), (8, 32, 32));
    for (n, stage, frames, side) in [(1, "base", 4, 16), (2, "tsr", 8, 16), (3, "ssr", 8, 32)] {
        let v = read_gif(&stages.join(format!("{n}-{stage}.gif")))?;
        assert_eq!((v.frames.len(), v.width), (frames, side), "{stage}");
    }
    assert!(dir.path().join("out/video.preview.png").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8 frames, 16x16"), "{stdout}");

    let mp4 = dir.path().join("video.mp4");
    let out = vidcascade(&[
        "generate",
        "blue square moving up",
        "-o",
        path(&mp4),
        "--model",
        path(&model),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let video = read_mp4(&mp4)?;
    assert_eq!((video.frames.len(), video.width, video.height), (8, 64, 64));

    let frames = dir.path().join("frames");
    let out = vidcascade(&[
        "generate",
        "green triangle moving right",
        "-o",
        path(&frames),
        "--model",
        path(&model),
        "--scale",
        "1",
        "--steps",
        "2",
        "--steps",
        "base=3",
        "--guidance",
        "base=2.5",
        "--sampler",
        "ancestral",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let video = read_png_frames(&frames)?;
    assert_eq!((video.frames.len(), video.width, video.height), (8, 16, 16));
    Ok(())
}

#[test]
fn info_lists_every_stage_with_its_shapes() -> anyhow::Result<()> {
    let (_dir, model) = tiny_model()?;
    let out = vidcascade(&["info", "--model", path(&model)])?;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "text-encoder",
        "base",
        "tsr",
        "ssr",
        "4x8x8 @ 2 fps",
        "8x16x16 @ 4 fps",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from {text}");
    }
    Ok(())
}

#[test]
fn bad_arguments_fail_with_one_clear_line() -> anyhow::Result<()> {
    let (dir, model) = tiny_model()?;
    let m = path(&model);
    let missing = dir.path().join("no-such-model");
    assert_clean_failure(
        &vidcascade(&["generate", "red", "--model", path(&missing)])?,
        &format!("no model repository at {}", missing.display()),
    );
    assert_clean_failure(
        &vidcascade(&["generate", "red", "-o", "clip.avi", "--model", m])?,
        "avi",
    );
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder")?;
    let unwritable = blocker.join("out.gif");
    let out = vidcascade(&[
        "generate",
        "red",
        "-o",
        path(&unwritable),
        "--model",
        m,
        "--steps",
        "1",
    ])?;
    assert_clean_failure(&out, &unwritable.display().to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("done in"),
        "the unwritable output was found only after generating: {stderr}"
    );
    assert_clean_failure(
        &vidcascade(&["generate", "red", "--model", m, "--steps", "many"])?,
        "--steps many",
    );
    assert_clean_failure(
        &vidcascade(&["generate", "red", "--model", m, "--steps", "decoder=4"])?,
        "no stage `decoder`; the stages are base, tsr, ssr",
    );
    assert_clean_failure(
        &vidcascade(&["generate", "red", "--model", m, "--guidance", "99"])?,
        "--guidance base=...: ",
    );
    assert_clean_failure(&vidcascade(&["generate", "--model", m])?, "<PROMPT>");
    // `serve` validates like the service binaries: exit 64, naming the setting.
    for (flag, value) in [("--max-batch-size", "0"), ("--max-queue", "0")] {
        let out = vidcascade(&[
            "serve",
            "--model",
            m,
            "--listen",
            "127.0.0.1:0",
            flag,
            value,
        ])?;
        assert_clean_failure(&out, flag);
        assert_eq!(out.status.code(), Some(64), "{flag} {value}");
    }
    let out = vidcascade(&[
        "serve",
        "--model",
        "/nonexistent",
        "--listen",
        "127.0.0.1:0",
    ])?;
    assert_clean_failure(&out, "--model / VIDCASCADE_MODEL");
    assert_eq!(out.status.code(), Some(64));
    Ok(())
}

#[test]
fn serve_and_client_generate_through_the_services_and_stop_on_ctrl_c() -> anyhow::Result<()> {
    let (dir, model) = tiny_model()?;
    let (mut serve, gateway, _stdout) = start_serve(&model)?;
    let gif = dir.path().join("client.gif");
    let stages = dir.path().join("client-stages");
    let out = vidcascade(&[
        "client",
        "a red circle moving left",
        "--addr",
        &gateway,
        "-o",
        path(&gif),
        "--save-stages",
        path(&stages),
        "--preview-every",
        "1",
        "--seed",
        "3",
    ]);
    let info = vidcascade(&["info", "--addr", &gateway]);
    // The same prompt with default flags: the same video through the services as in process.
    let defaults_client = dir.path().join("defaults-client.gif");
    let defaults_embedded = dir.path().join("defaults-embedded.gif");
    let by_client = vidcascade(&[
        "client",
        "a blue square",
        "--addr",
        &gateway,
        "-o",
        path(&defaults_client),
    ]);
    let by_generate = vidcascade(&[
        "generate",
        "a blue square",
        "--model",
        path(&model),
        "-o",
        path(&defaults_embedded),
    ]);
    let bad_steps = vidcascade(&[
        "client",
        "a red circle",
        "--addr",
        &gateway,
        "--steps",
        "base=0",
        "-o",
        path(&dir.path().join("never.gif")),
    ]);
    // Ctrl-C stops every service cleanly.
    let interrupted = Command::new("kill")
        .args(["-INT", &serve.id().to_string()])
        .status()?;
    let status = serve.wait()?;
    let out = out?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        !progress.contains("text-encoder: started"),
        "an empty progress row for the text encoder:\n{progress}"
    );
    assert!(
        progress.contains("base: started (4x8x8 @ 2 fps"),
        "{progress}"
    );
    let video = read_gif(&gif)?;
    assert_eq!((video.frames.len(), video.width, video.height), (8, 64, 64));
    for (n, stage, frames) in [(1, "base", 4), (2, "tsr", 8), (3, "ssr", 8)] {
        let v = read_gif(&stages.join(format!("{n}-{stage}.gif")))?;
        assert_eq!(v.frames.len(), frames, "{stage}");
    }
    assert!(dir.path().join("client.preview.png").exists());
    assert_clean_failure(&bad_steps?, "--steps base=...: ");
    for (out, what) in [(by_client?, "client"), (by_generate?, "generate")] {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(&defaults_client)?,
        std::fs::read(&defaults_embedded)?,
        "client and generate with the same defaults made different videos"
    );
    let info = info?;
    let listing = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    for expected in [
        "base",
        "tsr",
        "ssr",
        "4x8x8 @ 2 fps",
        "prompts <= 16 tokens and 2048 bytes",
    ] {
        assert!(
            listing.contains(expected),
            "`{expected}` not in:\n{listing}"
        );
    }
    assert!(interrupted.success());
    assert!(status.success(), "serve exited with {status}");

    // No gateway: one line that says what to do.
    let out = vidcascade(&[
        "client",
        "a red circle",
        "--addr",
        "http://127.0.0.1:1",
        "-o",
        path(&dir.path().join("x.gif")),
    ])?;
    assert_clean_failure(&out, "vidcascade serve");
    Ok(())
}

#[test]
fn ctrl_c_on_serve_lets_an_in_flight_generation_finish_through_every_stage() -> anyhow::Result<()> {
    let (dir, model) = tiny_model()?;
    let (mut serve, gateway, _stdout) = start_serve(&model)?;
    let gif = dir.path().join("drained.gif");
    let mut client = Command::new(env!("CARGO_BIN_EXE_vidcascade"))
        .args([
            "client",
            "a red circle",
            "--addr",
            &gateway,
            "-o",
            path(&gif),
        ])
        .args(["--steps", "base=400", "--seed", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = client
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut progress = BufReader::new(stderr).lines();
    // Interrupt serve while the base stage is working: the TSR and SSR calls come after.
    let in_flight = progress.any(|line| line.is_ok_and(|l| l.starts_with("base: step")));
    let interrupted = Command::new("kill")
        .args(["-INT", &serve.id().to_string()])
        .status()?;
    let rest: Vec<String> = progress.map_while(Result::ok).collect();
    let client_status = client.wait()?;
    let serve_status = serve.wait()?;
    assert!(in_flight && interrupted.success());
    assert!(client_status.success(), "client failed: {rest:?}");
    assert_eq!(read_gif(&gif)?.frames.len(), 8, "the whole cascade ran");
    assert!(serve_status.success(), "serve exited with {serve_status}");
    Ok(())
}

#[test]
fn a_story_is_one_continuous_video_and_an_init_image_is_checked() -> anyhow::Result<()> {
    let (dir, model) = tiny_model()?;
    let gif = dir.path().join("story.gif");
    let story_file = dir.path().join("story.txt");
    std::fs::write(
        &story_file,
        "# three prompts\na red circle\na blue square\t0.1\na green one\n",
    )?;
    for story in [
        vec!["--story", "a red circle", "a blue square", "a green one"],
        vec!["--story-file", path(&story_file)],
    ] {
        let mut args = vec!["generate", "-o", path(&gif), "--model", path(&model)];
        args.extend(story);
        let out = vidcascade(&args)?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The tiny stages take context frames: 8 frames, then 8 - 4 new ones per continuation.
        assert_eq!(read_gif(&gif)?.frames.len(), 16);
    }
    let not_png = dir.path().join("image.png");
    std::fs::write(&not_png, b"GIF89a")?;
    let prompt_and = |extra: &[&str]| -> anyhow::Result<Output> {
        let mut args = vec![
            "generate",
            "a red circle",
            "-o",
            path(&gif),
            "--model",
            path(&model),
        ];
        args.extend_from_slice(extra);
        vidcascade(&args)
    };
    assert_clean_failure(
        &prompt_and(&["--init-image", path(&not_png)])?,
        "--init-image: is not a readable PNG",
    );
    assert_clean_failure(
        &prompt_and(&["--story", "a blue square"])?,
        "give either PROMPT or --story",
    );
    Ok(())
}
