//! The `uvr` command line, driven as a user would: help and version, usage errors and exit
//! codes, `uvr separate` on a directory of mixed inputs (one corrupt), output naming, JSON
//! output, no overwriting, no progress when stderr is not a terminal, `uvr models`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn uvr(args: &[&str], models: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uvr"))
        .args(args)
        .env("MODELS_DIR", models)
        .env_remove("DEFAULT_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_wav(path: &Path, seconds: f32, freq: f32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * 44_100.0) as usize {
        let t = i as f32 / 44_100.0;
        let v = ((2.0 * std::f32::consts::PI * freq * t).sin() * 8000.0) as i16;
        w.write_sample(v).unwrap();
        w.write_sample(v / 2).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn help_and_version_exit_0_and_usage_errors_exit_2() {
    let none = Path::new("/nonexistent");
    let o = uvr(&["--help"], none);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for sub in ["serve", "separate", "models", "healthcheck"] {
        assert!(help.contains(sub), "--help does not list {sub}:\n{help}");
    }
    let o = uvr(&["--version"], none);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
    let o = uvr(&["separate", "--help"], none);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("DEFAULT_MODEL") && help.contains("--overwrite"),
        "{help}"
    );

    for args in [
        &["separate"][..],
        &["separate", "a.wav", "--no-such-flag"],
        &["separate", "a.wav", "--batch", "many"],
        &["no-such-command"],
    ] {
        let o = uvr(args, none);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
}

#[test]
fn bad_inputs_and_models_have_their_own_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let song = tmp.path().join("song.wav");
    write_wav(&song, 0.5, 440.0);
    let s = song.to_str().unwrap();
    let none = Path::new("/nonexistent");
    let code = |args: &[&str]| {
        let o = uvr(args, none);
        (o.status.code(), text(&o))
    };
    let (c, t) = code(&["separate", "/nonexistent/x.wav"]);
    assert_eq!(c, Some(3), "{t}");
    let (c, t) = code(&["separate", s, "--model", "Kim_Vocal_2"]);
    assert_eq!(c, Some(4), "{t}");
    assert!(t.contains("not installed"), "{t}");
    let (c, t) = code(&["separate", s, "--format", "mp4"]);
    assert_eq!(c, Some(2), "{t}");
    let (c, t) = code(&["separate", s, "--stems", "drums"]);
    assert_eq!(c, Some(2), "{t}");
    let (c, t) = code(&["separate", s, "--overlap", "1.5"]);
    assert_eq!(c, Some(2), "{t}");
    assert!(t.contains("MDX_OVERLAP"), "{t}");
}

/// A directory with two songs (one in a subdirectory) and a corrupt file: the songs are
/// separated and named per input, the corrupt one is reported, the exit code says an input
/// failed; a second run refuses to overwrite; `--overwrite` replaces.
#[test]
fn a_directory_is_separated_file_by_file_without_overwriting() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    std::fs::create_dir_all(inputs.join("sub")).unwrap();
    write_wav(&inputs.join("one.wav"), 0.5, 440.0);
    write_wav(&inputs.join("sub/two.wav"), 0.7, 220.0);
    std::fs::write(inputs.join("broken.wav"), b"RIFF....WAVEnot really").unwrap();
    std::fs::write(inputs.join("notes.txt"), b"not audio").unwrap();
    let out = tmp.path().join("out");
    let args = [
        "separate",
        inputs.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    let o = uvr(&args, Path::new("/nonexistent"));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let failed: Vec<&Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(failed[0]["input"].as_str().unwrap().ends_with("broken.wav"));
    for name in ["one", "two"] {
        let l = lines
            .iter()
            .find(|l| {
                l["input"]
                    .as_str()
                    .is_some_and(|i| i.ends_with(&format!("{name}.wav")))
            })
            .unwrap();
        assert_eq!(l["model"], "dsp-centre");
        for stem in ["Vocals", "Instrumental"] {
            let f = out.join(format!("{name}_({stem})_dsp-centre.wav"));
            assert!(f.is_file(), "{} missing", f.display());
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "only the stems are left behind: {files:?}");
    // Not a terminal: no progress line on stderr.
    assert!(!String::from_utf8_lossy(&o.stderr).contains('\r'));

    let before = std::fs::metadata(out.join("one_(Vocals)_dsp-centre.wav"))
        .unwrap()
        .modified()
        .unwrap();
    let again = uvr(&args, Path::new("/nonexistent"));
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(text(&again).contains("--overwrite"), "{}", text(&again));
    let after = std::fs::metadata(out.join("one_(Vocals)_dsp-centre.wav"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a refused run wrote nothing");

    std::fs::remove_file(inputs.join("broken.wav")).unwrap();
    let o = uvr(
        &[
            "separate",
            inputs.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--overwrite",
            "--stems",
            "vocals",
        ],
        Path::new("/nonexistent"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.lines().count(), 2, "one line per input:\n{stdout}");
    assert!(stdout.contains("one_(Vocals)_dsp-centre.wav"), "{stdout}");
}

#[test]
fn models_lists_the_catalogue() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roformer");
    for ext in ["ckpt", "yaml"] {
        std::fs::copy(
            fixtures.join(format!("mel.{ext}")),
            tmp.path().join(format!("mel-vocals.{ext}")),
        )
        .unwrap();
    }
    let o = uvr(&["models", "--json"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["default"], "dsp-centre");
    let mel = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "mel-vocals")
        .unwrap();
    assert_eq!(mel["family"], "mel-band-roformer");
    assert_eq!(mel["stems"], serde_json::json!(["vocals", "instrumental"]));
    let o = uvr(&["models"], tmp.path());
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.contains("mel-vocals") && listing.contains("mel-band-roformer"),
        "{listing}"
    );
}

/// A bad setting stops the service with one line naming the variable and exit 2, no panic.
#[test]
fn a_configuration_error_is_one_line_and_exit_2() {
    let o = Command::new(env!("CARGO_BIN_EXE_uvr"))
        .env("UVR_ROLES", "api,bogus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("UVR_ROLES") && !err.contains("panicked"),
        "{err}"
    );
}

/// A guessable secret stops each role that uses it, naming the variable and never the
/// value, unless `ALLOW_WEAK_SECRETS=true`; Redis is never reached (the URL points nowhere).
#[test]
fn weak_secrets_stop_the_service_unless_allowed() {
    let strong = [
        ("API_PASSWORD", "correct-horse-battery"),
        ("LINK_SIGNING_KEY", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
        (
            "WEBHOOK_SECRET",
            "whsec_BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY=",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().join("stems").display());
    for (roles, var, weak) in [
        ("api", "API_PASSWORD", "Zq7"),
        ("api", "API_PASSWORD", "elevenchars"),
        (
            "uploader",
            "LINK_SIGNING_KEY",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
        ("uploader", "LINK_SIGNING_KEY", "sixteen-byte-key"),
        ("uploader", "WEBHOOK_SECRET", "short-webhook-secret"),
    ] {
        let run = |allow: bool| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_uvr"));
            cmd.env_clear()
                .env("UVR_ROLES", roles)
                .env("REDIS_URL", "redis://127.0.0.1:1/0")
                .env("MODELS_DIR", "/nonexistent")
                .env("STORAGE_URL", &storage)
                .env("API_PORT", "0")
                .envs(strong)
                .env(var, weak);
            if allow {
                cmd.env("ALLOW_WEAK_SECRETS", "true");
            }
            cmd
        };
        let o = run(false).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{var}={weak}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(var) && err.contains("weak") && !err.contains(weak),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        // Allowed: the settings pass and the process goes on to start (then it is stopped).
        let mut child = run(true)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let exited = child.try_wait().unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            exited.is_none_or(|s| s.code() != Some(2)) && !err.contains("weak"),
            "{var} allowed: {exited:?} {err}"
        );
    }
}

/// `uvr healthcheck` asks this host's `/readyz`: 0 for a 200, 1 for anything else or no
/// answer.
#[test]
fn healthcheck_follows_readyz() {
    use std::io::{Read, Write};
    for (status, code, path) in [
        ("200 OK", 0, None),
        ("503 Service Unavailable", 1, None),
        ("200 OK", 0, Some("/livez")),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = path.unwrap_or("/readyz");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with(&format!("GET {asked} ")));
            // One write: `write!` would send the pieces separately, and the client may hang
            // up as soon as it has the status line (12 bytes), resetting the later pieces.
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let _ = s.write_all(answer.as_bytes());
        });
        let port = port.to_string();
        let mut args = vec!["healthcheck", "--port", &port];
        if let Some(p) = path {
            args.extend(["--path", p]);
        }
        let o = uvr(&args, Path::new("/nonexistent"));
        assert_eq!(o.status.code(), Some(code), "{status}: {}", text(&o));
        server.join().unwrap();
    }
    let o = uvr(
        &["healthcheck", "--path", "livez"],
        Path::new("/nonexistent"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = uvr(
        &["healthcheck", "--port", &port.to_string()],
        Path::new("/nonexistent"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// `--format`, `--bitrate`, `--sample-rate` and `--single-stem` as the API offers them: one
/// FLAC stem at 48 kHz and one MP3 stem at 128 kbps, named with their extensions and readable
/// at their rate; a bit rate for a lossless format or an unknown rate is a usage error before
/// anything is read.
#[test]
fn formats_rates_and_a_single_stem_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let song = tmp.path().join("song.wav");
    write_wav(&song, 1.0, 330.0);
    let out = tmp.path().join("out");
    let (song_s, out_s) = (song.to_str().unwrap(), out.to_str().unwrap());
    for (extra, file, rate) in [
        (
            &[
                "--format",
                "flac",
                "--sample-rate",
                "48000",
                "--single-stem",
                "vocals",
            ][..],
            "song_(Vocals)_dsp-centre.flac",
            48_000,
        ),
        (
            &[
                "--format",
                "mp3",
                "--bitrate",
                "128",
                "--single-stem",
                "instrumental",
            ],
            "song_(Instrumental)_dsp-centre.mp3",
            44_100,
        ),
    ] {
        let mut args = vec!["separate", song_s, "-o", out_s, "--json"];
        args.extend_from_slice(extra);
        let o = uvr(&args, Path::new("/nonexistent"));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["sample_rate"], rate, "{summary}");
        let path = out.join(file);
        let mut reader = uvr::audio::AudioReader::open(&path, 0).unwrap();
        assert_eq!(reader.source_rate(), rate, "{file}");
        let mut frames = 0;
        while let Some(block) = reader.read(8192).unwrap() {
            frames += block.len();
        }
        assert!(frames.abs_diff(44_100) <= 1152, "{file}: {frames} frames");
    }
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "song_(Instrumental)_dsp-centre.mp3",
            "song_(Vocals)_dsp-centre.flac"
        ],
        "one stem each"
    );
    for bad in [
        &["--format", "flac", "--bitrate", "320"][..],
        &["--format", "mp3", "--bitrate", "100"],
        &["--sample-rate", "22050"],
        &["--stems", "vocals", "--single-stem", "vocals"],
    ] {
        let mut args = vec!["separate", song_s, "-o", out_s, "--overwrite"];
        args.extend_from_slice(bad);
        let o = uvr(&args, Path::new("/nonexistent"));
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
}

/// `--ensemble` with several `--model`: each model runs once and the stems they share are
/// combined, named after the ensemble; fewer than two models, or a model given twice, is a
/// usage error before anything loads.
#[test]
fn an_ensemble_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    for ext in ["onnx", "json"] {
        std::fs::copy(
            fixtures.join(format!("small5.{ext}")),
            models.join(format!("small5.{ext}")),
        )
        .unwrap();
    }
    let song = tmp.path().join("song.wav");
    write_wav(&song, 1.0, 330.0);
    let out = tmp.path().join("out");
    let (song_s, out_s) = (song.to_str().unwrap(), out.to_str().unwrap());
    let run = |extra: &[&str]| {
        let mut args = vec!["separate", song_s, "-o", out_s, "--json"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_uvr"))
            .args(&args)
            .env("MODELS_DIR", &models)
            .env("SEPARATOR_DEVICE", "cpu")
            .env_remove("DEFAULT_MODEL")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let o = run(&["--ensemble", "max_spec", "-m", "dsp-centre", "-m", "small5"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["ensemble"], "max_spec", "{summary}");
    assert_eq!(
        summary["models"],
        serde_json::json!(["dsp-centre", "small5"])
    );
    for stem in ["Vocals", "Instrumental"] {
        let f = out.join(format!("song_({stem})_ensemble-max_spec.wav"));
        assert!(f.is_file(), "{}", f.display());
    }
    for bad in [
        &["--ensemble", "average", "-m", "dsp-centre"][..],
        &["--ensemble", "average", "-m", "small5", "-m", "small5"],
        &["--ensemble", "median", "-m", "dsp-centre", "-m", "small5"],
    ] {
        let o = run(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
}
