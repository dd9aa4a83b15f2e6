//! `uvr`: the whole service in one process (`uvr` or `uvr serve`; `UVR_ROLES` picks a
//! subset), `uvr separate` for one-off local separation without Redis, `uvr models` to list
//! the installed models, `uvr api-key` to make a client key, `uvr healthcheck` for container
//! health checks.
//!
//! Exit codes: 0 ok, 2 usage (a bad argument or setting), 3 input, 4 model, 5 device,
//! 1 anything else.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use uvr::config::Env;
use uvr::local::{LocalError, LocalJob, Outcome};
use uvr::service;

/// Separation allocates and frees large tensor buffers all the time: mimalloc reuses their
/// pages instead of faulting them in anew for every operation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "uvr",
    version,
    about = "Self-hosted vocal/stem separation service"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: the roles in UVR_ROLES (api, processor, uploader; all by default),
    /// configured by the environment (see the README). The default command.
    Serve,
    /// Separate local files, directories or URLs into stems, without Redis.
    Separate(SeparateArgs),
    /// List the installed models (MODELS_DIR) with their family, stems and parameters.
    Models {
        /// One JSON object (the API's GET /models).
        #[arg(long)]
        json: bool,
    },
    /// Make a client API key: prints the key (give it to the client; it is stored nowhere)
    /// and the line of API_KEYS_FILE that admits it.
    ApiKey {
        /// The client's name: tasks it submits are owned by it (1-64 of A-Z a-z 0-9 . _ -).
        client: String,
    },
    /// Exit 0 when the API of this host answers /readyz, 1 otherwise (container health
    /// checks).
    Healthcheck {
        /// The API port.
        #[arg(long, env = "API_PORT", default_value_t = 8000)]
        port: u16,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
        /// The path to ask (`/livez` on a processor's or uploader's `METRICS_PORT`).
        #[arg(long, default_value = "/readyz", value_parser = health_path)]
        path: String,
    },
}

#[derive(Debug, Args)]
struct SeparateArgs {
    /// Audio files, directories (searched recursively for audio files) or http(s) URLs.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// Where the stems go, as `<input>_(<Stem>)_<model>.<ext>`.
    #[arg(short, long = "output", default_value = ".", value_name = "DIR")]
    output: PathBuf,
    /// The model (GET /models, `uvr models`); with --ensemble, give it once per model.
    #[arg(short, long, env = "DEFAULT_MODEL")]
    model: Vec<String>,
    /// Combine several models' outputs: average, max_spec or min_spec (UVR's ensembles).
    #[arg(long, value_name = "ALGORITHM", value_parser = ensemble_algorithm)]
    ensemble: Option<uvr::separation::ensemble::Algorithm>,
    /// Only these stems (comma list), e.g. `vocals`.
    #[arg(long, value_delimiter = ',', value_name = "STEM,...")]
    stems: Option<Vec<String>>,
    /// Only this one stem (audio-separator's --single_stem), e.g. `instrumental`.
    #[arg(long, value_name = "STEM", conflicts_with = "stems")]
    single_stem: Option<String>,
    /// Output format: wav (16-bit), wav16, wav24, wav32f, flac (16-bit), flac16, flac24, mp3,
    /// opus (Ogg Opus, 48000 Hz).
    #[arg(long, default_value = "wav")]
    format: String,
    /// Bit rate in kbps: mp3 128, 160, 192, 224, 256 or 320 (the default); opus 64, 96, 128,
    /// 160 (the default), 192 or 256.
    #[arg(long, value_name = "KBPS")]
    bitrate: Option<u32>,
    /// Sample rate of the stems: 44100 (the default), 48000, or source (the input's own);
    /// opus is always 48000.
    #[arg(long, value_name = "HZ", value_parser = sample_rate)]
    sample_rate: Option<uvr::task::OutputRate>,
    /// MDX-Net chunk overlap, 0 <= overlap < 0.99.
    #[arg(long, env = "MDX_OVERLAP")]
    overlap: Option<f32>,
    /// Roformer chunks over each sample (the model's config by default).
    #[arg(long, env = "ROFORMER_NUM_OVERLAP")]
    num_overlap: Option<usize>,
    /// Chunks per forward pass (MDX-Net and Roformer).
    #[arg(long)]
    batch: Option<usize>,
    /// MDX-Net denoise: average f(x) and -f(-x) (twice the work).
    #[arg(long, env = "MDX_DENOISE")]
    denoise: bool,
    /// auto, gpu, gpu:N, software, cpu.
    #[arg(long, env = "SEPARATOR_DEVICE")]
    device: Option<String>,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON summary per input on stdout (nothing else goes there).
    #[arg(long)]
    json: bool,
    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// More logging on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::Separate(args) => separate(args),
        Command::Models { json } => models(json),
        Command::ApiKey { client } => api_key(&client),
        Command::Healthcheck {
            port,
            timeout,
            path,
        } => healthcheck(port, timeout, &path),
    }
}

fn api_key(client: &str) -> ExitCode {
    if !uvr::api::keys::valid_name(client) {
        eprintln!("uvr: client names are 1-64 of A-Z a-z 0-9 . _ -");
        return ExitCode::from(2);
    }
    let (key, line) = uvr::api::keys::generate(client);
    println!("key:  {key}");
    println!("line: {line}");
    eprintln!(
        "Give the key to {client} (Authorization: Bearer <key>); add the line to API_KEYS_FILE. \
         Only the line's digest is kept: a lost key is replaced, not recovered."
    );
    ExitCode::SUCCESS
}

fn serve() -> ExitCode {
    service::main(None)
}

fn catalog(env: &Env) -> Result<uvr::models::Catalog, LocalError> {
    let (dir, default) = uvr::models::location(env);
    uvr::models::Catalog::scan(&dir, default.as_deref())
        .map_err(|e| LocalError::Model(e.to_string()))
}

fn models(json: bool) -> ExitCode {
    let env = Env::from_process();
    let c = match catalog(&env) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    for m in &c.models {
        let default = if m.name == c.default {
            " (default)"
        } else {
            ""
        };
        println!("{}{default}", m.name);
        println!("  family: {}", m.family);
        println!("  stems:  {}", m.stems.join(", "));
        if let Some(p) = m.params.as_object() {
            let p: Vec<String> = p.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  params: {}", p.join(", "));
        }
    }
    ExitCode::SUCCESS
}

/// `--ensemble`: average, max_spec or min_spec.
fn ensemble_algorithm(raw: &str) -> Result<uvr::separation::ensemble::Algorithm, String> {
    raw.parse()
}

/// `--sample-rate`: 44100, 48000 or `source`.
fn sample_rate(raw: &str) -> Result<uvr::task::OutputRate, String> {
    use uvr::task::{OutputRate, SourceRate};
    match raw {
        "source" => Ok(OutputRate::Source(SourceRate::Source)),
        _ => match raw.parse::<u32>() {
            Ok(r) if uvr::audio::encode::SAMPLE_RATES.contains(&r) => Ok(OutputRate::Hz(r)),
            _ => Err("expected 44100, 48000 or source".into()),
        },
    }
}

/// A path for the health check request: absolute, visible ASCII, no spaces.
fn health_path(raw: &str) -> Result<String, String> {
    if raw.starts_with('/') && raw.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(raw.to_string())
    } else {
        Err("expected an absolute path such as /livez".into())
    }
}

fn healthcheck(port: u16, timeout: u64, path: &str) -> ExitCode {
    use std::io::Read;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let t = Duration::from_secs(timeout.max(1));
    let ok = std::net::TcpStream::connect_timeout(&addr, t).and_then(|mut s| {
        s.set_read_timeout(Some(t))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    });
    match ok {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("uvr healthcheck: {addr}{path} is not ready");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("uvr healthcheck: {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

fn fail(e: &LocalError) -> ExitCode {
    eprintln!("uvr separate: {e}");
    ExitCode::from(e.exit_code())
}

fn separate(args: SeparateArgs) -> ExitCode {
    // Logs go to stderr, so stdout carries only the result.
    let level = match (args.quiet, args.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "debug",
        _ => "trace",
    };
    uvr::telemetry::init_stderr(level);
    // Flags are settings: they override the environment and go through its checks.
    let mut overrides: Vec<(String, String)> = std::env::vars().collect();
    let mut set = |k: &str, v: String| overrides.push((k.to_string(), v));
    if let Some(o) = args.overlap {
        set("MDX_OVERLAP", o.to_string());
    }
    if let Some(n) = args.num_overlap {
        set("ROFORMER_NUM_OVERLAP", n.to_string());
    }
    if let Some(b) = args.batch {
        set("MDX_BATCH", b.to_string());
        set("ROFORMER_BATCH_SIZE", b.to_string());
    }
    if args.denoise {
        set("MDX_DENOISE", "true".into());
    }
    if let Some(d) = &args.device {
        set("SEPARATOR_DEVICE", d.clone());
    }
    let env = Env::from_pairs(overrides);
    let job = LocalJob {
        inputs: args.inputs,
        out_dir: args.output,
        model: if args.ensemble.is_some() {
            None
        } else {
            args.model.last().cloned()
        },
        ensemble: args.ensemble.map(|a| (args.model.clone(), a)),
        stems: args.single_stem.map(|s| vec![s]).or(args.stems),
        format: args.format.to_lowercase(),
        bitrate: args.bitrate,
        sample_rate: args.sample_rate,
        overwrite: args.overwrite,
    };
    let catalog = match catalog(&env) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(&e),
    };
    let plan = match uvr::local::plan(&job, &catalog) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let total = plan.len();
    let show = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let (json, started) = (args.json, Instant::now());
    let progress = move |i: usize, label: &str, p: &Arc<uvr::pipeline::process::Progress>| {
        if show {
            spawn_progress(i, total, started, label.to_string(), p.clone());
        }
    };
    let mut failed = 0usize;
    let mut report = |o: &Outcome| match &o.result {
        Ok(summary) if json => {
            let mut s = serde_json::to_value(summary).unwrap_or_default();
            s["input"] = serde_json::Value::String(o.input.clone());
            println!("{s}");
        }
        Ok(summary) => {
            let files: Vec<&str> = summary
                .stems
                .values()
                .filter_map(|v| v.file.as_deref())
                .collect();
            // Shown as JSON numbers (`3.0`, not `3`).
            let number = |x: Option<f64>| serde_json::json!(x);
            println!(
                "{} -> {} ({} s of audio, {}x real time)",
                o.input,
                files.join(", "),
                number(summary.duration_seconds),
                number(summary.realtime_factor)
            );
        }
        Err(e) => {
            failed += 1;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"input": o.input, "error": {"code": e.code, "message": e.message}})
                );
            } else {
                eprintln!("uvr separate: {}: {}: {}", o.input, e.code, e.message);
            }
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&LocalError::Other(e.to_string())),
    };
    let result = runtime.block_on(uvr::local::run(
        &env,
        catalog,
        &job,
        plan,
        &progress,
        &mut report,
    ));
    if show {
        eprintln!(
            "done: {total} input(s) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    match result {
        Err(e) => fail(&e),
        Ok(_) if failed > 0 => {
            eprintln!("uvr separate: {failed} of {total} input(s) failed");
            ExitCode::from(3)
        }
        Ok(_) => ExitCode::SUCCESS,
    }
}

/// Seconds as `12 s` or `3 min 05 s`.
fn duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0} s")
    } else {
        format!("{} min {:02.0} s", (s / 60.0) as u64, s % 60.0)
    }
}

/// The progress line on the terminal, redrawn four times a second: this input (percent,
/// audio separated, real-time factor, time left) and the whole run (inputs done, time left).
fn spawn_progress(
    i: usize,
    n: usize,
    run_started: Instant,
    label: String,
    p: Arc<uvr::pipeline::process::Progress>,
) {
    std::thread::spawn(move || {
        let started = Instant::now();
        loop {
            let pct = p.percent.load(Ordering::Relaxed).min(100);
            let elapsed = started.elapsed().as_secs_f64();
            let audio = p.frames.load(Ordering::Relaxed) as f64 / 44_100.0;
            let rtf = if audio > 0.0 {
                format!(", {:.2}x real time", elapsed / audio)
            } else {
                String::new()
            };
            let (eta, all) = if pct > 5 {
                let left = elapsed * f64::from(100 - pct) / f64::from(pct);
                // The run: inputs done plus this one's share, at the pace so far.
                let done = i as f64 + f64::from(pct) / 100.0;
                let run = run_started.elapsed().as_secs_f64();
                let run_left = run * (n as f64 - done) / done;
                (
                    format!("{} left", duration(left)),
                    format!(" | all: {}/{n}, {} left", i, duration(run_left)),
                )
            } else {
                ("…".into(), format!(" | all: {i}/{n}"))
            };
            eprint!(
                "\r\x1b[2K[{}/{n}] {label}: {pct:>3}%, {audio:.1} s of audio in {}{rtf}, {eta}{all}",
                i + 1,
                duration(elapsed)
            );
            let _ = std::io::stderr().flush();
            if pct >= 100 || Arc::strong_count(&p) == 1 {
                eprintln!();
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}
