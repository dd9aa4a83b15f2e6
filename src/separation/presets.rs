//! Named ensembles (`ENSEMBLE_PRESETS_FILE`): a request's `"preset": "<name>"` stands for the
//! preset's `models` and `ensemble`, so clients ask for "the best vocals" without knowing
//! which models make it up. The file is a JSON object:
//!
//! ```json
//! {"vocals_best": {"models": ["a", "b"], "ensemble": "max_spec"}}
//! ```
//!
//! It is read at start-up and a bad file stops the service with the preset at fault; whether
//! its models are installed is checked per request, like any `models` list (models can be
//! added to `MODELS_DIR` while the service runs).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ensemble::Algorithm;

/// One preset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// The models combined (2-4).
    pub models: Vec<String>,
    /// How: `average`, `max_spec` or `min_spec`.
    pub ensemble: String,
}

/// The presets by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Presets(BTreeMap<String, Preset>);

/// Why a preset in a request cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresetError {
    /// `preset` is not a string.
    NotAString,
    /// No preset has this name.
    Unknown(String),
    /// `preset` came with `model`, `models` or `ensemble`.
    Conflict,
}

impl Presets {
    /// The presets of the JSON file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The presets of a JSON text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let map: BTreeMap<String, Preset> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        for (name, p) in &map {
            if !(2..=super::ensemble::MAX_MODELS).contains(&p.models.len()) {
                return Err(format!(
                    "preset {name:?}: an ensemble has 2 to {} models",
                    super::ensemble::MAX_MODELS
                ));
            }
            p.ensemble
                .parse::<Algorithm>()
                .map_err(|e| format!("preset {name:?}: {e}"))?;
        }
        Ok(Self(map))
    }

    /// `body` with its `preset` replaced by the preset's `models` and `ensemble`; `None` when
    /// it names no preset (nothing to replace).
    pub fn expand(
        &self,
        body: &serde_json::Map<String, Value>,
    ) -> Result<Option<Value>, PresetError> {
        let name = match body.get("preset") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(name)) => name,
            Some(_) => return Err(PresetError::NotAString),
        };
        let preset = self
            .0
            .get(name)
            .ok_or_else(|| PresetError::Unknown(name.clone()))?;
        if ["model", "models", "ensemble"]
            .iter()
            .any(|f| body.get(*f).is_some_and(|v| !v.is_null()))
        {
            return Err(PresetError::Conflict);
        }
        let mut out = body.clone();
        out.remove("preset");
        out.insert("models".into(), Value::from(preset.models.clone()));
        out.insert("ensemble".into(), Value::from(preset.ensemble.clone()));
        Ok(Some(Value::Object(out)))
    }

    /// The names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn presets() -> Presets {
        Presets::parse(r#"{"best": {"models": ["a", "b"], "ensemble": "max_spec"}}"#).unwrap()
    }

    fn map(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_preset_stands_for_its_models_and_ensemble() {
        let out = presets()
            .expand(&map(json!({"audio": "x", "preset": "best", "priority": 4})))
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            json!({"audio": "x", "priority": 4, "models": ["a", "b"], "ensemble": "max_spec"})
        );
        assert_eq!(presets().expand(&map(json!({"audio": "x"}))).unwrap(), None);
        assert_eq!(
            presets().expand(&map(json!({"preset": null}))).unwrap(),
            None
        );
    }

    #[test]
    fn bad_presets_and_bad_uses_are_refused() {
        let p = presets();
        assert_eq!(
            p.expand(&map(json!({"preset": "nope"}))),
            Err(PresetError::Unknown("nope".into()))
        );
        assert_eq!(
            p.expand(&map(json!({"preset": 3}))),
            Err(PresetError::NotAString)
        );
        for field in ["model", "models", "ensemble"] {
            let body = map(json!({"preset": "best", field: "a"}));
            assert_eq!(p.expand(&body), Err(PresetError::Conflict), "{field}");
        }
        for (text, why) in [
            (
                r#"{"x": {"models": ["a"], "ensemble": "average"}}"#,
                "2 to 4 models",
            ),
            (
                r#"{"x": {"models": ["a", "b"], "ensemble": "median"}}"#,
                "preset \"x\"",
            ),
            (r#"{"x": {"models": ["a", "b"]}}"#, "missing field"),
            (
                r#"{"x": {"models": ["a", "b"], "ensemble": "average", "y": 1}}"#,
                "unknown field",
            ),
            ("[]", "invalid type"),
        ] {
            let err = Presets::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
