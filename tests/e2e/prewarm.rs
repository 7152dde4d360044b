//! `ferry prewarm plan` as a user runs it: the binary reads kubectl-shaped node and pod lists,
//! rollout manifests and holdings (the planner's fixtures: a 48-node heterogeneous GPU cluster),
//! prints a table, writes the plan as JSON for `apply`, gives the same plan every time, and
//! refuses bad input with an error naming the file, the object and the field.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p2p_node::prewarm::Plan;

use crate::harness::ferry::FERRY_BIN;
use crate::harness::{run_cmd, run_ok, temp_dir};

const T: Duration = Duration::from_secs(60);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("p2p-node/tests/fixtures/prewarm")
}

fn plan_cmd(extra: &[&str]) -> Command {
    let f = fixtures();
    let mut cmd = Command::new(FERRY_BIN);
    cmd.args(["prewarm", "plan", "--nodes"]).arg(f.join("nodes.json")).arg("--pods").arg(f.join("pods.json"));
    cmd.arg("--holdings").arg(f.join("holdings.json")).arg(f.join("rollouts.yaml")).args(extra);
    cmd
}

#[test]
fn plan_prints_a_table_writes_json_and_is_deterministic() {
    let work = temp_dir("prewarm-plan");
    let out = work.path().join("plan.json");
    let table = run_ok(plan_cmd(&["-o"]).arg(&out), T);
    let plan: Plan = serde_json::from_slice(&std::fs::read(&out).expect("plan file")).expect("the plan parses");
    assert!(!plan.images.is_empty());
    for image in &plan.images {
        assert!(table.contains(&format!("image {}", image.image)), "{} missing from the table:\n{table}", image.image);
        let warm: Vec<_> = image.warm().collect();
        assert!(!warm.is_empty(), "{}: nothing to warm", image.image);
        for node in warm {
            assert!(table.contains(&node.node), "{} is warmed but not in the table:\n{table}", node.node);
            assert!(!image.ineligible.iter().any(|i| i.node == node.node), "{} is both warmed and ineligible", node.node);
        }
    }
    // The JSON on stdout is the same plan as the file, and a second run gives the same bytes.
    let json = run_ok(&mut plan_cmd(&["--output", "json"]), T);
    assert_eq!(json.trim(), std::fs::read_to_string(&out).expect("plan file").trim());
    assert_eq!(run_ok(&mut plan_cmd(&["--output", "json"]), T), json);
    // A policy flag changes the plan: binpack fills the fullest eligible nodes first.
    let binpack = run_ok(&mut plan_cmd(&["--output", "json", "--strategy", "binpack"]), T);
    assert_ne!(binpack, json, "binpack and spread gave the same plan");
}

#[test]
fn bad_input_fails_naming_the_file_object_and_field() {
    let work = temp_dir("prewarm-bad");
    let bad = work.path().join("rollout.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: llm, namespace: ml}\nspec:\n  replicas: 2\n  template:\n    spec:\n      \
         containers:\n      - name: m\n        image: reg/ml/llm:1\n        resources: {limits: {nvidia.com/gpu: lots}}\n",
    )
    .expect("write");
    let f = fixtures();
    let out = run_cmd(Command::new(FERRY_BIN).args(["prewarm", "plan", "--nodes"]).arg(f.join("nodes.json")).arg(&bad), T);
    assert!(!out.success);
    let want = "(Deployment ml/llm): spec.template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"]: \"lots\" is not a quantity";
    assert!(out.stderr.contains(&bad.display().to_string()) && out.stderr.contains(want), "{}", out.stderr);
    let out = run_cmd(Command::new(FERRY_BIN).args(["prewarm", "plan", "--nodes"]).arg(&bad).arg(f.join("rollouts.yaml")), T);
    assert!(!out.success && out.stderr.contains("rollout.yaml"), "a manifest given as the node list: {}", out.stderr);
    let out = run_cmd(&mut plan_cmd(&["--headroom", "0.5"]), T);
    assert!(!out.success && out.stderr.contains("headroom"), "{}", out.stderr);
}
