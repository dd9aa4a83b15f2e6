//! The separation engine: builds [`Separator`]s by model name — the built-in DSP separator,
//! or a catalogue model of any family ([`crate::families`]), loaded once onto the device
//! chosen by `SEPARATOR_DEVICE` (with the GPU runtime's tuning settings applied first) and
//! kept.

#[cfg(feature = "mdx")]
use std::collections::HashMap;
use std::sync::Arc;
#[cfg(feature = "mdx")]
use std::sync::Mutex;

#[cfg(feature = "mdx")]
use crate::families::LoadedModel;
use crate::families::RunOptions;
use crate::separation::{SeparateError, Separator, dsp};

/// Builds separators by model name: the built-in DSP separator, or catalogue models, loaded
/// once onto the selected device and kept. Without the `mdx` feature, neural models are
/// refused with [`SeparateError::Unavailable`].
pub struct Engine {
    catalog: Arc<crate::models::Library>,
    #[cfg(feature = "mdx")]
    device: std::sync::OnceLock<Result<crate::mdx::device::SelectedDevice, String>>,
    choice: crate::mdx::device::DeviceChoice,
    tuning: crate::mdx::device::Tuning,
    opts: RunOptions,
    /// Models loaded, by name, with the size and modification time of their files when
    /// loaded: a file replaced in `MODELS_DIR` is loaded again.
    #[cfg(feature = "mdx")]
    loaded: Mutex<HashMap<String, Loaded>>,
}

/// A loaded model and the stamps of the files it was loaded from.
#[cfg(feature = "mdx")]
type Loaded = (FileStamps, Arc<dyn LoadedModel>);

/// Size and modification time of each of a model's files.
#[cfg(feature = "mdx")]
type FileStamps = Vec<Option<(u64, std::time::SystemTime)>>;

#[cfg(feature = "mdx")]
fn stamps(info: &crate::models::ModelInfo) -> FileStamps {
    info.files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.len(), meta.modified().ok()?))
        })
        .collect()
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("choice", &self.choice)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `catalog`, running MDX-Net models on `choice` with `opts`.
    pub fn new(
        catalog: Arc<crate::models::Library>,
        choice: crate::mdx::device::DeviceChoice,
        opts: crate::mdx::DemixOptions,
    ) -> Self {
        Self {
            catalog,
            #[cfg(feature = "mdx")]
            device: std::sync::OnceLock::new(),
            choice,
            tuning: Default::default(),
            opts: RunOptions {
                mdx: opts,
                roformer: Default::default(),
            },
            #[cfg(feature = "mdx")]
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The same engine with `tuning` applied to the GPU runtime when the device is selected.
    pub fn with_tuning(mut self, tuning: crate::mdx::device::Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// The same engine with Roformer demix overrides.
    pub fn with_roformer(mut self, opts: crate::roformer::RoformerOptions) -> Self {
        self.opts.roformer = opts;
        self
    }

    /// The catalogue the engine serves now.
    pub fn catalog(&self) -> Arc<crate::models::Catalog> {
        self.catalog.current()
    }

    /// The device models run on (selected on first use).
    #[cfg(feature = "mdx")]
    pub fn device(&self) -> Result<&crate::mdx::device::SelectedDevice, SeparateError> {
        self.device
            .get_or_init(|| {
                if self.choice != crate::mdx::device::DeviceChoice::Cpu {
                    log_cache_state(crate::mdx::device::configure(&self.tuning)?);
                }
                let d = crate::mdx::device::select(self.choice);
                match &d {
                    Ok(d) => tracing::info!(device = %d.name, kind = d.kind, "separation device"),
                    Err(e) => tracing::error!(error = %e, "no separation device"),
                }
                d
            })
            .as_ref()
            .map_err(|e| SeparateError::Model(e.clone()))
    }

    /// The device, if one has been selected already (no selection is triggered).
    #[cfg(feature = "mdx")]
    pub fn selected_device(&self) -> Option<&crate::mdx::device::SelectedDevice> {
        self.device.get().and_then(|r| r.as_ref().ok())
    }

    /// The kind ("gpu", "software-gpu", "cpu") and name of the selected device, if one has
    /// been selected already (no selection is triggered; always `None` without `mdx`).
    pub fn device_label(&self) -> Option<(&'static str, &str)> {
        #[cfg(feature = "mdx")]
        {
            self.selected_device().map(|d| (d.kind, d.name.as_str()))
        }
        #[cfg(not(feature = "mdx"))]
        {
            None
        }
    }

    /// A catalogue model (`None` for the built-in separator).
    fn model(&self, name: &str) -> Result<Option<crate::models::ModelInfo>, SeparateError> {
        let catalog = self.catalog.current();
        let info = catalog
            .get(name)
            .ok_or_else(|| SeparateError::Model(format!("model {name:?} is not installed")))?;
        Ok((!info.files.is_empty()).then(|| info.clone()))
    }

    /// Loads and warms up `name` ahead of the first job (a no-op for the built-in separator);
    /// fails as [`build`](Self::build) would.
    pub fn prepare(&self, name: &str) -> Result<(), SeparateError> {
        #[cfg(feature = "mdx")]
        {
            self.load(name).map(drop)
        }
        #[cfg(not(feature = "mdx"))]
        {
            match self.model(name)? {
                None => Ok(()),
                Some(_) => Err(SeparateError::Unavailable(name.to_string())),
            }
        }
    }

    /// Loads (once) and warms up a model of the catalogue.
    #[cfg(feature = "mdx")]
    pub fn load(&self, name: &str) -> Result<Option<Arc<dyn LoadedModel>>, SeparateError> {
        let Some(info) = self.model(name)? else {
            return Ok(None);
        };
        let files = stamps(&info);
        if let Some((at, m)) = lock(&self.loaded).get(name)
            && *at == files
        {
            return Ok(Some(m.clone()));
        }
        let family = crate::families::family(info.family).ok_or_else(|| {
            SeparateError::Model(format!("no engine for the {} family", info.family))
        })?;
        let device = self.device()?;
        let started = std::time::Instant::now();
        let model = family.load(&info, &device.device)?;
        let loaded = started.elapsed();
        let started = std::time::Instant::now();
        model.warm_up(&self.opts);
        let warm = started.elapsed();
        tracing::info!(
            model = name,
            family = info.family,
            geometry = %model.describe(),
            load_seconds = loaded.as_secs_f64(),
            // Kernel compilation and autotuning at the jobs' exact shapes (on a GPU); with a
            // filled SEPARATOR_CACHE_DIR, tuning is skipped.
            warm_up_seconds = warm.as_secs_f64(),
            "model loaded"
        );
        lock(&self.loaded).insert(name.to_string(), (files, model.clone()));
        Ok(Some(model))
    }

    /// A separator for `model`.
    pub fn build(&self, model: &str) -> Result<Box<dyn Separator>, SeparateError> {
        #[cfg(feature = "mdx")]
        if let Some(m) = self.load(model)? {
            return Ok(m.separator(&self.opts));
        }
        #[cfg(not(feature = "mdx"))]
        self.prepare(model)?;
        Ok(Box::new(dsp::CentreExtractor::new(Default::default())))
    }
}

/// Says what the GPU runtime found in `SEPARATOR_CACHE_DIR`.
#[cfg(feature = "mdx")]
fn log_cache_state(state: crate::mdx::device::CacheState) {
    use crate::mdx::device::CacheState;
    match state {
        CacheState::Existing(dir, bytes) => tracing::info!(
            dir = %dir.display(),
            bytes,
            "kernel tuning cache found: tuned shapes are not tuned again"
        ),
        CacheState::Empty(dir) => tracing::info!(
            dir = %dir.display(),
            "kernel tuning cache is empty: the first model load tunes and fills it"
        ),
        CacheState::Disabled => tracing::info!(
            "kernel tuning cache off (SEPARATOR_CACHE_DIR=off): every process tunes anew"
        ),
        CacheState::AlreadyConfigured => {
            tracing::debug!("GPU runtime already configured in this process")
        }
    }
}

#[cfg(feature = "mdx")]
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{BUILTIN_DSP, Catalog, ModelInfo};

    fn engine() -> Engine {
        let catalog = Catalog {
            default: BUILTIN_DSP.into(),
            models: vec![
                ModelInfo::builtin(),
                ModelInfo {
                    name: "neural".into(),
                    family: "mdx-net",
                    files: vec!["/nonexistent/neural.onnx".into()],
                    ..ModelInfo::builtin()
                },
            ],
        };
        Engine::new(
            Arc::new(crate::models::Library::fixed(catalog)),
            crate::mdx::device::DeviceChoice::Cpu,
            Default::default(),
        )
    }

    #[test]
    fn the_builtin_separator_builds_and_unknown_models_are_refused() {
        let e = engine();
        assert_eq!(e.build(BUILTIN_DSP).unwrap().name(), BUILTIN_DSP);
        assert!(e.prepare(BUILTIN_DSP).is_ok());
        assert_eq!(e.build("nope").err().unwrap().code(), "separation_failed");
        assert!(e.device_label().is_none());
    }

    #[cfg(not(feature = "mdx"))]
    #[test]
    fn mdx_models_are_unavailable_without_the_feature() {
        let e = engine();
        let err = e.build("neural").err().unwrap();
        assert_eq!(err.code(), "model_unavailable");
        assert!(err.to_string().contains("MDX-Net"), "{err}");
        assert!(matches!(
            e.prepare("neural"),
            Err(SeparateError::Unavailable(_))
        ));
    }
}
