//! Which kinds a process offers: Keel's built-in ones, plus whatever a team
//! adds in its own crate. A binary installs its registry once, before it
//! serves (`keel_api::cli::main_with_kinds`, `keel_worker::cli::main_with_kinds`);
//! one that installs none offers the built-in kinds. The API and the worker
//! of one deployment must be built with the same registry: the API accepts
//! only kinds it knows, and a worker hands back a task of a kind it does not.

use std::sync::OnceLock;

use super::{KINDS, Kind, KindSpec, spec};

/// A set of kinds with unique names.
#[derive(Debug, Clone)]
pub struct Registry {
    kinds: Vec<KindSpec>,
}

impl Registry {
    /// Keel's own kinds ([`KINDS`]).
    pub fn builtin() -> Self {
        Self {
            kinds: KINDS.to_vec(),
        }
    }

    /// No kinds at all: for a deployment that offers only its own.
    pub fn empty() -> Self {
        Self { kinds: Vec::new() }
    }

    /// This registry with `K` added.
    ///
    /// # Panics
    /// A kind of the same name is already registered: two kinds behind one
    /// name would run the wrong handler, so this is a bug to fix at start.
    #[must_use]
    pub fn with<K: Kind>(mut self) -> Self {
        assert!(
            self.find(K::NAME).is_none(),
            "kind {:?} is registered twice",
            K::NAME
        );
        self.kinds.push(spec::<K>());
        self
    }

    /// Every kind, in the order added.
    pub fn kinds(&self) -> &[KindSpec] {
        &self.kinds
    }

    /// The kind called `name`.
    pub fn find(&self, name: &str) -> Option<&KindSpec> {
        self.kinds.iter().find(|k| k.name == name)
    }
}

static INSTALLED: OnceLock<Registry> = OnceLock::new();

/// Makes `registry` this process's kinds. Call it first thing in `main`:
/// once anything has looked a kind up, the registry is fixed.
///
/// # Errors
/// A registry was installed (or used) already; it stays, and `registry` is
/// handed back.
pub fn install(registry: Registry) -> Result<(), Registry> {
    INSTALLED.set(registry)
}

/// This process's kinds: the installed registry, or the built-in one.
pub fn installed() -> &'static Registry {
    INSTALLED.get_or_init(Registry::builtin)
}
