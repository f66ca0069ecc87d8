//! Schemathesis (`deploy/local/requirements.txt`) fuzzes the running API
//! against its own `/openapi.json` with every check it has, plus the
//! contract's error rule (`schemathesis_hooks.py`): every 4xx and 5xx is
//! problem+json whose `status` is the response's.

use std::{path::Path, time::Duration};

use keel_shared::domain::Role;

use crate::{docs::tools_bin, helpers::spawn_app_with};

/// The whole run's ceiling: it takes about a minute; a hang fails instead of
/// stalling the suite.
const DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_with_all_checks() {
    // Unthrottled: the fuzzer sends thousands of requests, login included.
    let app = spawn_app_with(&["--rate-limit-enabled", "false"]).await;
    // The only superadmin: every operation is open to it, and the contract
    // keeps it (the last superadmin cannot be deleted, demoted or
    // deactivated). What would still end its session, such as a role change
    // to its own role, `before_call` in the hooks turns away from it.
    let fuzzer = app.create_user(Role::Superadmin).await;

    let schemathesis = tools_bin().join("schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run deploy/local/test.sh, or `source deploy/local/services.sh && \
         ensure_python_tools`, or point KEEL_TOOLS_BIN at a directory that has it",
        schemathesis.display()
    );
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api");
    // Its working directory: schemathesis may leave files there.
    let scratch = std::env::temp_dir().join(format!("keel-fuzz-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");

    let output = tokio::process::Command::new(&schemathesis)
        .arg("--config-file")
        .arg(here.join("schemathesis.toml"))
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", "all"])
        // Bounded and reproducible: the same cases on every run.
        .args(["--max-examples", "20", "--seed", "1"])
        // One worker: schemathesis's workers are threads of one interpreter,
        // and Debian's Python 3.11 builds ASTs (which hypothesis does to
        // describe its strategies) with a recursion counter shared by all
        // threads, so two at once can fail with "AST constructor recursion
        // depth mismatch" (CPython gh-106905, fixed in 3.12 only) and turn a
        // passing run red.
        .args(["--generation-database", "none", "--workers", "1"])
        .args(["--request-timeout", "10", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", here.join("schemathesis_hooks.py"))
        .env("KEEL_FUZZ_TOKEN", &fuzzer.token)
        .env("KEEL_FUZZ_USER_ID", fuzzer.user.id.to_string())
        .current_dir(&scratch)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .unwrap_or_else(|_| panic!("schemathesis finishes within {DEADLINE:?}"))
        .expect("schemathesis runs");
    let _ = std::fs::remove_dir_all(&scratch);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Its summary, for the log of a passing run too.
    let summary = stdout.rsplit_once("SUMMARY").map_or(&*stdout, |(_, s)| s);
    println!("{summary}");
}
