//! The module import graph of every crate in the workspace: no circles, and
//! no HTTP route module reaching sideways into another.
//!
//! Cargo already refuses circles between crates; inside a crate nothing does.
//! This test reads each crate's sources with `syn`, turns every path that
//! names the crate's own modules (`use crate::…`, `super::…`, and uses of
//! what those imported) into an edge from the file's module to the module the
//! path lands in, and looks for strongly connected components. A module's
//! paths to its own ancestors are not edges: a module and its submodules are
//! one unit (`files/upload.rs` may use what `files.rs` declares). Code under
//! `#[cfg(test)]` is skipped.
//!
//! Run it alone with `cargo nextest run -p keel-shared --test imports`; on a
//! failure it prints each circle and the files whose imports close it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use syn::{Attribute, ItemMod, ItemUse, UseTree, visit::Visit};

/// The crates' source folders, from the workspace root.
const CRATES: &[&str] = &[
    "api/src",
    "shared/src",
    "shared/testing/src",
    "worker/src",
    "scheduler/src",
    "bench/src",
];

/// A module path inside one crate, `routes::files` (the crate root is empty).
type Module = Vec<String>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ is in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, with the module it is.
fn modules_of(dir: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("a readable source folder") {
            let path = entry.expect("a readable entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(dir).expect("below the crate");
                let mut module: Module = relative
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    module.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    module.pop();
                }
                found.insert(module, path);
            }
        }
    }
    found
}

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The paths one file names, made absolute within its crate.
struct FileScan<'a> {
    /// The file's module, plus the inline modules being visited.
    here: Module,
    /// Names brought in by `use`, to what they name.
    imported: HashMap<String, Module>,
    /// Each path that lands in the crate.
    paths: Vec<Module>,
    modules: &'a BTreeMap<Module, PathBuf>,
}

impl FileScan<'_> {
    /// `segments` as written in the current module, made absolute; `None`
    /// when they start outside the crate (another crate, std, a local name).
    fn absolute(&self, segments: &[String]) -> Option<Module> {
        let (first, rest) = segments.split_first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.here.clone(),
            "super" => {
                let mut parent = self.here.clone();
                parent.pop();
                parent
            }
            name => {
                let mut base = self.imported.get(name)?.clone();
                base.extend(rest.iter().cloned());
                return Some(base);
            }
        };
        let mut rest = rest.iter().peekable();
        while rest.peek().is_some_and(|s| *s == "super") {
            base.pop();
            rest.next();
        }
        base.extend(rest.cloned());
        Some(base)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            UseTree::Name(n) => self.import(prefix, &n.ident.to_string(), None),
            UseTree::Rename(r) => {
                self.import(prefix, &r.ident.to_string(), Some(r.rename.to_string()));
            }
            UseTree::Glob(_) => {
                if let Some(target) = self.absolute(prefix) {
                    self.paths.push(target);
                }
            }
            UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }

    fn import(&mut self, prefix: &[String], name: &str, rename: Option<String>) {
        let mut segments = prefix.to_vec();
        if name != "self" {
            segments.push(name.to_owned());
        }
        let Some(target) = self.absolute(&segments) else {
            return;
        };
        let alias = rename.unwrap_or_else(|| {
            if name == "self" {
                prefix.last().cloned().unwrap_or_default()
            } else {
                name.to_owned()
            }
        });
        if self.modules.contains_key(&target) {
            self.imported.insert(alias, target.clone());
        }
        self.paths.push(target);
    }
}

impl<'ast> Visit<'ast> for FileScan<'_> {
    fn visit_item_mod(&mut self, item: &'ast ItemMod) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        self.here.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.here.pop();
    }

    fn visit_item_use(&mut self, item: &'ast ItemUse) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1
            && let Some(target) = self.absolute(&segments)
        {
            self.paths.push(target);
        }
        syn::visit::visit_path(self, path);
    }
}

/// The longest module of `modules` that `path` starts with.
fn landing(modules: &BTreeMap<Module, PathBuf>, path: &[String]) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains_key(m))
}

/// One crate's edges: from module to module, with where each is written.
fn graph(dir: &Path) -> BTreeMap<Module, BTreeMap<Module, String>> {
    let modules = modules_of(dir);
    let mut edges: BTreeMap<Module, BTreeMap<Module, String>> = BTreeMap::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(file).expect("a readable source file");
        let syntax = syn::parse_file(&source)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let mut scan = FileScan {
            here: module.clone(),
            imported: HashMap::new(),
            paths: Vec::new(),
            modules: &modules,
        };
        // `use` items first, wherever they stand, so later paths through
        // what they imported resolve.
        for item in &syntax.items {
            if let syn::Item::Use(u) = item {
                scan.visit_item_use(u);
            }
        }
        scan.visit_file(&syntax);
        let from = edges.entry(module.clone()).or_default();
        for path in scan.paths {
            let Some(to) = landing(&modules, &path) else {
                continue;
            };
            // Itself, or one of its ancestors: the same unit.
            if to.len() <= module.len() && module[..to.len()] == to[..] {
                continue;
            }
            from.entry(to).or_insert_with(|| file.display().to_string());
        }
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<Module, BTreeMap<Module, String>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<Module, BTreeMap<Module, String>>,
        index: HashMap<&'a Module, usize>,
        low: HashMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flat_map(|e| e.keys()) {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

#[test]
fn no_crate_has_a_circle_of_module_imports() {
    let root = workspace_root();
    let mut report = Vec::new();
    for krate in CRATES {
        let edges = graph(&root.join(krate));
        for circle in circles(&edges) {
            let members: BTreeSet<&Module> = circle.iter().collect();
            let mut lines = vec![format!(
                "{krate}: {}",
                circle.iter().map(name).collect::<Vec<_>>().join(", ")
            )];
            for from in &circle {
                for (to, at) in &edges[from] {
                    if members.contains(to) {
                        lines.push(format!("    {} -> {}  ({at})", name(from), name(to)));
                    }
                }
            }
            report.push(lines.join("\n"));
        }
    }
    assert!(
        report.is_empty(),
        "circles of module imports:\n{}",
        report.join("\n")
    );
}

#[test]
fn no_route_module_imports_another() {
    let edges = graph(&workspace_root().join("api/src"));
    let sideways: Vec<String> = edges
        .iter()
        .filter(|(from, _)| from.first().is_some_and(|m| m == "routes") && from.len() > 1)
        .flat_map(|(from, to)| {
            to.iter()
                .filter(|(to, _)| {
                    to.first().is_some_and(|m| m == "routes")
                        && to.len() > 1
                        // A parent reaching into its own children is one unit.
                        && !(to.len() > from.len() && to[..from.len()] == from[..])
                })
                .map(move |(to, at)| format!("{} -> {}  ({at})", name(from), name(to)))
        })
        .collect();
    assert!(
        sideways.is_empty(),
        "route modules reaching into others:\n{}",
        sideways.join("\n")
    );
}

#[test]
fn the_reader_sees_the_edges_it_must() {
    // Known edges in today's tree, so a reader that sees nothing cannot pass.
    let edges = graph(&workspace_root().join("api/src"));
    let has = |from: &str, to: &str| {
        let split = |s: &str| s.split("::").map(str::to_owned).collect::<Module>();
        edges
            .get(&split(from))
            .is_some_and(|e| e.contains_key(&split(to)))
    };
    assert!(has("startup", "routes"), "startup builds the router");
    assert!(
        has("cli", "startup"),
        "the command line starts the application"
    );
    let worker = graph(&workspace_root().join("worker/src"));
    assert!(
        worker.values().map(BTreeMap::len).sum::<usize>() > 10,
        "the worker's modules import each other"
    );
}
