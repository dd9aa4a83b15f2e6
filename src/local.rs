//! One-off local separation (`uvr separate`), without Redis: every argument is checked
//! before any model loads, inputs (files, directories searched recursively for audio files,
//! http(s) URLs) are separated one after the other with the model loaded once, and each
//! stem is written as `<input stem>_(<Stem>)_<model>.<ext>`, never over an existing file
//! unless asked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Env;
use crate::models::Catalog;
use crate::pipeline::JobError;
use crate::pipeline::process::{Progress, SeparateJob, separate_file};
use crate::task::result::StageResult;

/// File extensions taken from directories.
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "wav", "wave", "flac", "mp3", "ogg", "oga", "opus", "m4a", "mp4", "aac", "aif", "aiff", "caf",
    "mka", "mkv", "webm",
];

/// What to separate, and how.
#[derive(Debug, Clone, Default)]
pub struct LocalJob {
    /// Files, directories or URLs.
    pub inputs: Vec<String>,
    /// Where the stems go.
    pub out_dir: PathBuf,
    /// The model (else `DEFAULT_MODEL`, else the built-in separator).
    pub model: Option<String>,
    /// An ensemble: its models (at least two) and how their outputs are combined.
    pub ensemble: Option<(Vec<String>, crate::separation::ensemble::Algorithm)>,
    /// The stems to write (else all of the model's).
    pub stems: Option<Vec<String>>,
    /// The output format (one of [`crate::audio::encode::FORMATS`]).
    pub format: String,
    /// The bit rate of a lossy format, kbps.
    pub bitrate: Option<u32>,
    /// The stems' sample rate (else 44.1 kHz).
    pub sample_rate: Option<crate::task::OutputRate>,
    /// Whether existing files may be replaced.
    pub overwrite: bool,
}

/// Why `uvr separate` stopped, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A bad argument (exit 2).
    #[error("{0}")]
    Usage(String),
    /// An input that cannot be read, or an output that would be overwritten (exit 3).
    #[error("{0}")]
    Input(String),
    /// The model is not installed or cannot be loaded (exit 4).
    #[error("{0}")]
    Model(String),
    /// No device to run the model on (exit 5).
    #[error("{0}")]
    Device(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl LocalError {
    /// The process exit code: 2 usage, 3 input, 4 model, 5 device, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::Usage(_) => 2,
            LocalError::Input(_) => 3,
            LocalError::Model(_) => 4,
            LocalError::Device(_) => 5,
            LocalError::Other(_) => 1,
        }
    }
}

/// One input's outcome: its summary (stems with their files), or why it failed.
#[derive(Debug)]
pub struct Outcome {
    /// The input as given (a path or URL).
    pub input: String,
    /// The separation summary, or the error.
    pub result: Result<StageResult, JobError>,
}

/// An input, resolved.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Url(u) => u.clone(),
        }
    }

    /// The name outputs are based on: the file name without its extension.
    fn stem(&self) -> String {
        let name = match self {
            Source::File(p) => p.file_stem().map(|s| s.to_string_lossy().to_string()),
            Source::Url(u) => url::Url::parse(u).ok().and_then(|u| {
                let last = u.path_segments()?.next_back()?.to_string();
                Path::new(&last)
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
            }),
        };
        name.filter(|n| !n.is_empty())
            .unwrap_or_else(|| "audio".into())
    }
}

/// Inputs and their output files, checked.
#[derive(Debug)]
pub struct Plan {
    model: String,
    ensemble: Option<(Vec<String>, crate::separation::ensemble::Algorithm)>,
    stems: Vec<String>,
    items: Vec<(Source, Vec<(String, PathBuf)>)>,
}

impl Plan {
    /// The model every input runs through.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The number of inputs.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// `Lead Vocals` style: each word capitalised (`vocals` -> `Vocals`, `no_reverb` ->
/// `No Reverb`), as audio-separator names its outputs.
fn display_stem(stem: &str) -> String {
    stem.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The output file of `stem` of an input called `input_stem`.
pub fn output_name(input_stem: &str, stem: &str, model: &str, ext: &str) -> String {
    format!("{input_stem}_({})_{model}.{ext}", display_stem(stem))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if crate::families::has_extension(&p, AUDIO_EXTENSIONS) {
            out.push(p);
        }
    }
    Ok(())
}

/// Checks everything that can be checked without loading a model: the format, the model and
/// its stems, every input, and that no output would overwrite a file.
pub fn plan(job: &LocalJob, catalog: &Catalog) -> Result<Plan, LocalError> {
    let format =
        crate::audio::encode::Encoding::parse(Some(&job.format), job.bitrate).map_err(|e| {
            LocalError::Usage(format!("--{}: {}", e.field.replace('_', "-"), e.message))
        })?;
    if let Some(crate::task::OutputRate::Hz(r)) = job.sample_rate
        && !crate::audio::encode::SAMPLE_RATES.contains(&r)
    {
        return Err(LocalError::Usage(format!(
            "--sample-rate {r}: expected one of {:?} or source",
            crate::audio::encode::SAMPLE_RATES
        )));
    }
    format.check_rate(job.sample_rate).map_err(|e| {
        LocalError::Usage(format!("--{}: {}", e.field.replace('_', "-"), e.message))
    })?;
    let model = job.model.clone().unwrap_or_else(|| catalog.default.clone());
    let info = catalog.get(&model).ok_or_else(|| {
        LocalError::Model(format!(
            "model {model:?} is not installed (installed: {})",
            catalog.names().join(", ")
        ))
    })?;
    // An ensemble offers the stems its models share, under a name of its own.
    let (model, available) = match &job.ensemble {
        None => (model, info.stems.clone()),
        Some((models, algorithm)) => {
            if models.len() < 2 || models.len() > crate::actors::intake::MAX_ENSEMBLE {
                return Err(LocalError::Usage(format!(
                    "--ensemble takes 2 to {} --model",
                    crate::actors::intake::MAX_ENSEMBLE
                )));
            }
            let mut shared: Option<Vec<String>> = None;
            for (i, m) in models.iter().enumerate() {
                if models[..i].contains(m) {
                    return Err(LocalError::Usage(format!("--model {m} is given twice")));
                }
                let info = catalog.get(m).ok_or_else(|| {
                    LocalError::Model(format!(
                        "model {m:?} is not installed (installed: {})",
                        catalog.names().join(", ")
                    ))
                })?;
                shared = Some(match shared {
                    None => info.stems.clone(),
                    Some(s) => s.into_iter().filter(|x| info.has_stem(x)).collect(),
                });
            }
            let shared = shared.unwrap_or_default();
            if shared.is_empty() {
                return Err(LocalError::Usage(
                    "these models share no stem name: nothing to combine".into(),
                ));
            }
            (format!("ensemble-{}", algorithm.name()), shared)
        }
    };
    let stems = match &job.stems {
        None => available.clone(),
        Some(wanted) => {
            if wanted.is_empty() {
                return Err(LocalError::Usage("--stems names no stem".into()));
            }
            for s in wanted {
                if !available.contains(s) {
                    return Err(LocalError::Usage(format!(
                        "{model} has no stem {s:?} (it has: {})",
                        available.join(", ")
                    )));
                }
            }
            wanted.clone()
        }
    };
    let mut sources = Vec::new();
    for input in &job.inputs {
        if input.starts_with("http://") || input.starts_with("https://") {
            url::Url::parse(input)
                .map_err(|e| LocalError::Input(format!("{input}: not a URL ({e})")))?;
            sources.push(Source::Url(input.clone()));
            continue;
        }
        let p = PathBuf::from(input);
        if p.is_dir() {
            let mut files = Vec::new();
            walk(&p, &mut files).map_err(|e| LocalError::Input(format!("{input}: {e}")))?;
            if files.is_empty() {
                return Err(LocalError::Input(format!("{input}: no audio files in it")));
            }
            sources.extend(files.into_iter().map(Source::File));
        } else if p.is_file() {
            sources.push(Source::File(p));
        } else {
            return Err(LocalError::Input(format!(
                "{input}: no such file or directory"
            )));
        }
    }
    if sources.is_empty() {
        return Err(LocalError::Usage("no input given".into()));
    }
    let mut items = Vec::new();
    let mut taken: Vec<PathBuf> = Vec::new();
    for source in sources {
        let mut outputs = Vec::new();
        for stem in &stems {
            let path = job.out_dir.join(output_name(
                &source.stem(),
                stem,
                &model,
                format.extension(),
            ));
            if taken.contains(&path) {
                return Err(LocalError::Input(format!(
                    "two inputs would both write {} (rename one, or separate them apart)",
                    path.display()
                )));
            }
            if path.exists() && !job.overwrite {
                return Err(LocalError::Input(format!(
                    "{} exists (--overwrite replaces it)",
                    path.display()
                )));
            }
            taken.push(path.clone());
            outputs.push((stem.clone(), path));
        }
        items.push((source, outputs));
    }
    Ok(Plan {
        model,
        ensemble: job.ensemble.clone(),
        stems,
        items,
    })
}

/// Loads the model of `plan` and separates every input, calling `report` after each with its
/// outcome; an input that fails is reported and the others go on.
pub async fn run(
    env: &Env,
    catalog: Arc<Catalog>,
    job: &LocalJob,
    plan: Plan,
    progress: &dyn Fn(usize, &str, &Arc<Progress>),
    report: &mut dyn FnMut(&Outcome),
) -> Result<Vec<Outcome>, LocalError> {
    let engine = crate::pipeline::engine(
        env,
        Arc::new(crate::models::Library::fixed((*catalog).clone())),
    )
    .map_err(|e| LocalError::Usage(e.to_string()))?;
    let has_weights = catalog
        .get(&plan.model)
        .is_some_and(|m| !m.files.is_empty());
    #[cfg(feature = "mdx")]
    if has_weights {
        engine
            .device()
            .map_err(|e| LocalError::Device(e.to_string()))?;
    }
    let engine = Arc::new(engine);
    let started = std::time::Instant::now();
    {
        let models = match &plan.ensemble {
            Some((models, _)) => models.clone(),
            None => vec![plan.model.clone()],
        };
        for model in models {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || engine.prepare(&model))
                .await
                .map_err(|e| LocalError::Other(e.to_string()))?
                .map_err(|e| LocalError::Model(format!("{}: {e}", e.code())))?;
        }
    }
    // Loading and warming up the model, reported with the first input it served.
    let mut model_seconds = Some((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
    let _ = has_weights;
    std::fs::create_dir_all(&job.out_dir)
        .map_err(|e| LocalError::Input(format!("{}: {e}", job.out_dir.display())))?;
    let mut fetch = crate::config::Shared::from_env(env)
        .and_then(|shared| crate::pipeline::fetch_config(env, &shared))
        .map_err(|e| LocalError::Usage(e.to_string()))?;
    // A local, one-off command: the user's own network is fine.
    fetch.policy.allow_private = true;
    let client = crate::audio::fetch::client(&fetch, None);
    let mut outcomes = Vec::new();
    for (i, (source, outputs)) in plan.items.into_iter().enumerate() {
        let label = source.label();
        let tmp = tempfile::Builder::new()
            .prefix(".uvr-")
            .tempdir_in(&job.out_dir)
            .map_err(|e| LocalError::Other(format!("{}: {e}", job.out_dir.display())))?;
        let path = match &source {
            Source::File(p) => Ok(p.clone()),
            Source::Url(u) => {
                let dest = tmp.path().join("source.audio");
                crate::audio::fetch::download(&client, &fetch, u, &dest)
                    .await
                    .map(|_| dest)
                    .map_err(JobError::from)
            }
        };
        let shown = Arc::new(Progress::default());
        progress(i, &label, &shown);
        let result = match path {
            Err(e) => Err(e),
            Ok(path) => {
                let (engine, model, stems, format, bitrate, sample_rate, ensemble) = (
                    engine.clone(),
                    plan.model.clone(),
                    plan.stems.clone(),
                    job.format.clone(),
                    job.bitrate,
                    job.sample_rate,
                    plan.ensemble.clone(),
                );
                let dir = tmp.path().to_path_buf();
                let shown = shown.clone();
                tokio::task::spawn_blocking(move || {
                    let job = SeparateJob {
                        source: &path,
                        out_dir: &dir,
                        relative_to: &dir,
                        model,
                        output_format: Some(format),
                        bitrate,
                        sample_rate,
                        ensemble,
                        stems: Some(stems),
                        max_seconds: 0,
                        max_output_bytes: 0,
                        engine: &engine,
                    };
                    separate_file(&job, shown)
                })
                .await
                .map_err(|e| LocalError::Other(e.to_string()))?
                .and_then(|summary| place(summary, tmp.path(), &outputs))
                .map(|mut summary| {
                    if let Some(s) = model_seconds.take() {
                        summary.timings.model_seconds = Some(s);
                    }
                    summary
                })
            }
        };
        let outcome = Outcome {
            input: label,
            result,
        };
        report(&outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Moves the stems from the work directory to their final names and points the summary at
/// them.
fn place(
    mut summary: StageResult,
    work: &Path,
    outputs: &[(String, PathBuf)],
) -> Result<StageResult, JobError> {
    for (stem, dest) in outputs {
        let Some(entry) = summary.stems.get_mut(stem) else {
            continue;
        };
        let file = entry.file.clone().unwrap_or_default();
        std::fs::rename(work.join(&file), dest)
            .map_err(|e| JobError::internal(format!("moving {file} to {}: {e}", dest.display())))?;
        entry.file = Some(dest.display().to_string());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_named_as_audio_separator_names_them() {
        assert_eq!(
            output_name("My Song", "vocals", "Kim_Vocal_2", "flac"),
            "My Song_(Vocals)_Kim_Vocal_2.flac"
        );
        assert_eq!(
            output_name("a", "no_reverb", "m", "wav"),
            "a_(No Reverb)_m.wav"
        );
        assert_eq!(
            Source::Url("https://x.example/dir/track%201.mp3?sig=1".into()).stem(),
            "track%201"
        );
        assert_eq!(Source::Url("https://x.example/".into()).stem(), "audio");
    }

    fn catalog() -> Catalog {
        Catalog::scan(Path::new("/nonexistent"), None).unwrap()
    }

    #[test]
    fn arguments_are_checked_before_any_model_loads() {
        let dir = tempfile::tempdir().unwrap();
        let song = dir.path().join("song.wav");
        std::fs::write(&song, b"not even audio").unwrap();
        let job = |f: &dyn Fn(&mut LocalJob)| {
            let mut j = LocalJob {
                inputs: vec![song.display().to_string()],
                out_dir: dir.path().join("out"),
                format: "wav".into(),
                ..Default::default()
            };
            f(&mut j);
            plan(&j, &catalog())
        };
        assert!(job(&|_| {}).is_ok());
        let code = |f: &dyn Fn(&mut LocalJob)| job(f).unwrap_err().exit_code();
        assert_eq!(code(&|j| j.format = "mp4".into()), 2);
        assert_eq!(code(&|j| j.bitrate = Some(320)), 2, "a bit rate for WAV");
        assert_eq!(
            code(&|j| {
                j.format = "mp3".into();
                j.bitrate = Some(100);
            }),
            2
        );
        assert_eq!(
            code(&|j| j.sample_rate = Some(crate::task::OutputRate::Hz(22_050))),
            2
        );
        assert_eq!(
            code(&|j| {
                j.format = "opus".into();
                j.sample_rate = Some(crate::task::OutputRate::Hz(44_100));
            }),
            2,
            "opus is 48 kHz only"
        );
        assert_eq!(code(&|j| j.model = Some("nope".into())), 4);
        assert_eq!(code(&|j| j.stems = Some(vec!["drums".into()])), 2);
        assert_eq!(code(&|j| j.inputs = vec!["/nonexistent/x.wav".into()]), 3);
        assert_eq!(
            code(&|j| j.inputs.push(j.inputs[0].clone())),
            3,
            "the same input twice would write the same files"
        );
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(
            dir.path()
                .join("out")
                .join(output_name("song", "vocals", "dsp-centre", "wav")),
            b"earlier",
        )
        .unwrap();
        assert_eq!(code(&|_| {}), 3, "an existing output is not replaced");
        assert!(job(&|j| j.overwrite = true).is_ok());
    }

    #[test]
    fn directories_give_their_audio_files_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        for f in ["a/one.flac", "a/b/two.MP3", "a/notes.txt", "three.wav"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let mut files = Vec::new();
        walk(dir.path(), &mut files).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["a/b/two.MP3", "a/one.flac", "three.wav"]);
    }
}
