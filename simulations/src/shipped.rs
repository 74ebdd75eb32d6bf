//! The scenarios shipped in `simulations/scenarios/`, built into the binary.

/// (name, TOML) of every shipped scenario.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "cache-pressure",
        include_str!("../scenarios/cache-pressure.toml"),
    ),
    (
        "calibration-5",
        include_str!("../scenarios/calibration-5.toml"),
    ),
    ("churn", include_str!("../scenarios/churn.toml")),
    (
        "flash-crowd-100k",
        include_str!("../scenarios/flash-crowd-100k.toml"),
    ),
    (
        "flash-crowd-lan",
        include_str!("../scenarios/flash-crowd-lan.toml"),
    ),
    (
        "flash-crowd-small",
        include_str!("../scenarios/flash-crowd-small.toml"),
    ),
    (
        "heterogeneous",
        include_str!("../scenarios/heterogeneous.toml"),
    ),
    ("malicious", include_str!("../scenarios/malicious.toml")),
    (
        "origin-outage",
        include_str!("../scenarios/origin-outage.toml"),
    ),
    ("sites-group", include_str!("../scenarios/sites-group.toml")),
    (
        "sites-internet",
        include_str!("../scenarios/sites-internet.toml"),
    ),
    ("sites-lan", include_str!("../scenarios/sites-lan.toml")),
    ("small-files", include_str!("../scenarios/small-files.toml")),
    ("staggered", include_str!("../scenarios/staggered.toml")),
];

/// The TOML of a shipped scenario.
pub fn find(name: &str) -> Option<&'static str> {
    SCENARIOS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
