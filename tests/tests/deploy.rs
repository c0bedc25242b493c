//! The deployment artefacts, checked with real tools (no Kubernetes cluster
//! runs here): the Helm chart rendered and linted by Helm's Go SDK
//! (`helm-python-sdk`) for every values file and validated by
//! `kubernetes-validate` against Kubernetes 1.29–1.33 (`deploy/check-chart.py`),
//! and the OCI image built without a daemon from the test binaries and run
//! with `chroot` (`deploy/build-image.sh`, `deploy/check-image.sh`).

use std::path::PathBuf;
use std::process::Command;

use sluice_tests::{bin_dir, workspace_root};

fn python() -> PathBuf {
    let python = PathBuf::from(
        std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "/var/tmp/sluice-venv/bin/python".into()),
    );
    assert!(
        python.exists(),
        "{} is missing: run scripts/python-venv.sh (scripts/test.sh does) and export SLUICE_PYTHON",
        python.display()
    );
    python
}

fn run(command: &mut Command) -> String {
    let out = command.current_dir(workspace_root()).output().expect("spawn");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// Every values file renders, lints and validates; every wrong value in the
/// script's list is refused with a message naming it.
#[test]
fn helm_chart_renders_lints_and_validates_for_every_values_file() {
    let text = run(Command::new(python()).arg("deploy/check-chart.py"));
    let summary = text.lines().rev().find(|l| l.contains(" passed, ")).unwrap_or_default();
    assert!(summary.ends_with(" 0 failed"), "{text}");
    for values in ["default.yaml", "external-etcd.yaml", "keda.yaml", "tls.yaml", "spot.yaml"] {
        assert!(text.contains(&format!("PASS {values} k8s 1.33")), "{values}:\n{text}");
    }
    assert!(text.contains("PASS wrong value refused"), "{text}");
}

/// The image holds the three binaries and their libraries, runs as a
/// non-root user, and each binary starts inside it with nothing from the
/// host (`chroot` into the unpacked root filesystem).
#[test]
fn image_is_self_contained_and_runs_as_non_root() {
    assert!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self"))
            == 0,
        "the image check chroots into the image: run the tests as root (.ci/run does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("sluice.oci.tar");
    run(Command::new("deploy/build-image.sh").arg(bin_dir()).arg(&image));
    assert!(image.metadata().map(|m| m.len()).unwrap_or(0) > 0, "no image archive");
    let text = run(Command::new("deploy/check-image.sh").arg(&image));
    for line in [
        "ok    sluice --version (as 65532:65532)",
        "ok    sluice-scheduler --version",
        "ok    sluice-executor --version",
        "ok    sluice sql through them",
        "image check passed",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
}
