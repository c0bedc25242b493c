use super::*;

const CHURN: &str = include_str!("../../../jobs/churn.yaml");

#[test]
fn the_shipped_churn_spec_is_valid() {
    let spec = JobSpec::parse(CHURN, "churn.yaml").expect("valid");
    assert_eq!(spec.features.len(), 8);
    assert_eq!(spec.event_sources(), vec!["transactions", "events", "tickets"]);
    let cols = spec.output_columns();
    assert_eq!(cols[0], "user_id");
    assert!(cols.contains(&"days_since_last_login".to_string()));
    assert!(!cols.contains(&"last_login_ts".to_string()), "output: false hides it");
}

fn err(text: &str) -> String {
    JobSpec::parse(text, "bad.yaml").expect_err("invalid").to_string()
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let msg = err("name: x\nsources: [\n");
    assert!(msg.starts_with("bad.yaml: line "), "{msg}");
}

#[test]
fn unknown_function_names_the_field_and_line() {
    let text = CHURN.replace("function: sum", "function: median");
    let msg = err(&text);
    assert!(msg.contains("bad.yaml") && msg.contains("median") && msg.contains("line"), "{msg}");
    assert!(msg.contains("`sum`, `count`"), "lists the choices: {msg}");
}

#[test]
fn unknown_source_and_duplicates_name_the_field() {
    let msg = err(&CHURN
        .replace("source: tickets\n    function: count", "source: ticketz\n    function: count"));
    assert!(
        msg.contains("features[6] (ticket_count_90d).source") && msg.contains("ticketz"),
        "{msg}"
    );
    let msg = err(&CHURN.replace("name: txn_count_7d", "name: total_spend_30d"));
    assert!(msg.contains("duplicate column name"), "{msg}");
}

#[test]
fn availability_is_only_for_additive_functions() {
    let text = CHURN.replace(
        "function: latest\n    column: ts",
        "function: latest\n    column: ts\n    available_at: ts",
    );
    let msg = err(&text);
    assert!(msg.contains("available_at"), "{msg}");
}
