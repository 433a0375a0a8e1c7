//! The store-profile engine, shared by every Backroom daemon and by central.
//!
//! It owns the v1 profile format (`spec/store-profile.md`): parsing YAML with positions,
//! layering (`extends:`, merge by name, `remove: true`, `${value}`), the typed model with its
//! validated value types, validation (errors and warnings with file, line and column), the
//! canonical rendering with its revision id, and the operator's diff between two renderings.
//!
//! It does not touch the machine: no networking, VMs or containers here. Daemons take a
//! [`Rendered`] profile and act on the part they own.
//!
//! ```
//! let text = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: demo}\n";
//! let r = backroom_profiles::render_str("demo.yaml", text).unwrap();
//! assert_eq!(r.profile.metadata.name.as_str(), "demo");
//! assert_eq!(r.revision.as_str().len(), 64);
//! ```

mod de;
mod decode;
mod diff;
mod emit;
mod fleet;
mod layers;
mod model;
pub mod naming;
mod pos;
mod render;
mod types;
mod validate;
pub mod yaml;

use std::fmt;
use std::path::Path;

pub use diff::{FieldChange, ItemChange, ItemSummary, ProfileDiff, SectionDiff, diff};
pub use fleet::{FleetError, FleetStore, render_fleet, store_files};
pub use layers::{FsSource, Loader, MemSource, Source, normalize};
pub use model::*;
pub use pos::{Diagnostic, Pos, Severity, sort_diagnostics};
pub use render::RevisionId;
pub use types::*;

/// A merged, substituted, validated profile in canonical form.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The file it was rendered from.
    pub source: String,
    pub profile: Profile,
    pub revision: RevisionId,
    pub warnings: Vec<Diagnostic>,
}

impl Rendered {
    /// The canonical document as YAML (what `centralctl profile render` prints).
    pub fn to_yaml(&self) -> String {
        render::to_yaml(&self.profile)
    }

    /// The canonical document as compact JSON (what the revision id is the hash of).
    pub fn to_json(&self) -> String {
        render::to_json(&self.profile)
    }
}

/// A profile that cannot be used: every error found, and the warnings too.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub diagnostics: Vec<Diagnostic>,
}

impl Invalid {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        match self.errors().next() {
            Some(first) if n == 1 => write!(f, "invalid store profile: {first}"),
            Some(first) => write!(f, "invalid store profile ({n} errors), the first: {first}"),
            None => write!(f, "invalid store profile"),
        }
    }
}

impl std::error::Error for Invalid {}

/// Renders the document at `path` with its layers from the filesystem.
pub fn render_file(path: &Path) -> Result<Rendered, Invalid> {
    render_with(&mut Loader::new(FsSource), path)
}

/// Renders one self-contained document held in memory (`name` is used in positions).
pub fn render_str(name: &str, text: &str) -> Result<Rendered, Invalid> {
    let mut src = MemSource::new();
    src.insert(name, text);
    render_with(&mut Loader::new(src), Path::new(name))
}

/// Renders the document at `path` through `loader` (which caches shared layers).
pub fn render_with<S: Source>(loader: &mut Loader<S>, path: &Path) -> Result<Rendered, Invalid> {
    let fail = |mut diagnostics: Vec<Diagnostic>| {
        sort_diagnostics(&mut diagnostics);
        Invalid { diagnostics }
    };
    let root = loader.load(path).map_err(fail)?;
    let profile = decode::decode(&root).map_err(fail)?;
    let mut diags = validate::validate(&profile, &root);
    sort_diagnostics(&mut diags);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(Invalid { diagnostics: diags });
    }
    let profile = render::canonicalize(profile);
    let revision = render::revision(&profile);
    Ok(Rendered {
        source: normalize(path).display().to_string(),
        profile,
        revision,
        warnings: diags,
    })
}
