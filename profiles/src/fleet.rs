//! A fleet folder: `base/`, `regions/`, `stores/`; every file under `stores/` is one store.

use std::path::{Path, PathBuf};

use crate::layers::{FsSource, Loader};
use crate::{Invalid, Rendered, render_with};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot list the stores of fleet {dir}: {source}")]
    List {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fleet {dir} has no store files (*.yaml) under stores/")]
    Empty { dir: String },
}

/// One store of a fleet and how its rendering went.
#[derive(Debug)]
pub struct FleetStore {
    /// The store's id: its file name without `.yaml`.
    pub id: String,
    pub path: PathBuf,
    pub result: Result<Rendered, Invalid>,
}

/// The store files of a fleet folder, sorted by name.
pub fn store_files(dir: &Path) -> Result<Vec<PathBuf>, FleetError> {
    let stores = dir.join("stores");
    let list_err = |source| FleetError::List { dir: dir.display().to_string(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&stores).map_err(list_err)? {
        let path = entry.map_err(list_err)?.path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(FleetError::Empty { dir: dir.display().to_string() });
    }
    Ok(files)
}

/// Renders every store of a fleet folder; shared layers are read and merged once.
pub fn render_fleet(dir: &Path) -> Result<Vec<FleetStore>, FleetError> {
    let mut loader = Loader::new(FsSource);
    Ok(store_files(dir)?
        .into_iter()
        .map(|path| {
            let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let result = render_with(&mut loader, &path);
            FleetStore { id, path, result }
        })
        .collect())
}
