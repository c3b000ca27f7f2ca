//! Options from the environment (`HONGBAO_<SUBCOMMAND>_<OPTION>`), through
//! the real binary: each program started with variables only, then with
//! flags that must beat them, then with neither (the defaults), and the
//! effective settings read back from what each one shows (the server's
//! `/status` and start lines, the flooder's JSON report, the monitor's
//! series). The variables are set on the child's `Command`, never in this
//! process, whose environment the parallel tests share.
//!
//! Also: every option of the three programs has its variable, named by the
//! scheme (`hongbao::environment::var_name`), shown in `--help`; every list
//! takes commas; every switch takes `1`/`0`, `yes`/`no`, `on`/`off`.
//!
//! Must not: assert a speed. Ports: ephemeral, or 19290..19299 for the
//! monitor's sources that nobody serves.

mod util;

use std::path::Path;

use clap::{Arg, ArgAction, Args, Command};
use hongbao::environment::var_name;
use serde_json::Value;
use util::{Spawned, http_get, run_to_exit_with_env, scratch_dir};

/// The three programs' options, as clap builds them for `hongbao SUB`.
fn programs() -> Vec<(&'static str, Command)> {
    vec![
        (
            "server",
            hongbao::server::ServerConfig::augment_args(Command::new("server")),
        ),
        (
            "flood",
            hongbao::flood::FloodArgs::augment_args(Command::new("flood")),
        ),
        (
            "monitor",
            hongbao::monitor::MonitorArgs::augment_args(Command::new("monitor")),
        ),
    ]
}

#[test]
fn every_option_has_its_variable_shown_in_help() {
    for (sub, cmd) in programs() {
        let args: Vec<_> = cmd.get_arguments().collect();
        assert!(args.len() > 10, "{sub}: only {} options?", args.len());
        let help = util::run_to_exit(&[sub, "--help"]);
        assert!(help.status.success(), "{sub} --help: {help:?}");
        for arg in &args {
            let long = arg
                .get_long()
                .unwrap_or_else(|| panic!("{sub}: option {} has no long name", arg.get_id()));
            let want = var_name(sub, long);
            assert_eq!(
                arg.get_env().and_then(|v| v.to_str()),
                Some(want.as_str()),
                "{sub} --{long}: its variable must be {want} (add `env = \"{want}\"` to its #[arg])"
            );
            assert!(
                help.stdout.contains(&format!("[env: {want}=")),
                "{sub} --help does not show {want}"
            );
            match arg.get_action() {
                // A list in one variable: comma-separated.
                ArgAction::Append => assert_eq!(
                    arg.get_value_delimiter(),
                    Some(','),
                    "{sub} --{long} is a list: give it value_delimiter = ','"
                ),
                // A switch's variable: the usual words for yes and no.
                ArgAction::SetTrue => {
                    for (word, want) in [
                        ("1", true),
                        ("yes", true),
                        ("On", true),
                        ("true", true),
                        ("0", false),
                        ("no", false),
                        ("off", false),
                        ("FALSE", false),
                    ] {
                        // The switch's own value parser, given the word as
                        // a value (what clap does with its variable).
                        let probe = Command::new("probe").arg(
                            Arg::new("switch")
                                .long("switch")
                                .value_parser(arg.get_value_parser().clone())
                                .action(ArgAction::Set),
                        );
                        let m = probe
                            .try_get_matches_from(["probe", "--switch", word])
                            .unwrap_or_else(|e| {
                                panic!("{sub} --{long}: {want:?} from {word:?}: {e}")
                            });
                        assert_eq!(
                            m.get_one::<bool>("switch"),
                            Some(&want),
                            "{sub} --{long} from {word:?}"
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

/// `GET /status` of a spawned server: its connection cap and batch rate.
fn status_of(server: &Spawned) -> (u64, u64) {
    let http = server.http.expect("HTTP control on");
    let (code, status) = http_get(http, "/status");
    assert_eq!(code, 200, "{status}");
    (
        status["conns_cap"].as_u64().expect("conns_cap"),
        status["batch"]["rate"].as_u64().expect("batch rate"),
    )
}

/// What every server below needs to run beside the other tests.
const SERVER_ENV: [(&str, &str); 5] = [
    ("HONGBAO_SERVER_LISTEN", "127.0.0.1:0"),
    ("HONGBAO_SERVER_HTTP", "127.0.0.1:0"),
    ("HONGBAO_SERVER_THREADS", "1"),
    // Switches in the words an env file would use.
    ("HONGBAO_SERVER_NO_PIN", "yes"),
    ("HONGBAO_SERVER_QUIET", "1"),
];

#[test]
fn server_flag_beats_environment_beats_default() {
    let mut env = SERVER_ENV.to_vec();
    env.extend([
        ("HONGBAO_SERVER_CONNS_MAX", "1234"),
        ("HONGBAO_SERVER_ENVELOPES_PER_SEC", "77"),
        ("HONGBAO_SERVER_SEED", "42"),
        ("HONGBAO_SERVER_NO_HTTP", "false"),
    ]);

    // The environment alone.
    let server = Spawned::server_with_env(&["server"], &env);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    assert_eq!(status_of(&server), (1234, 77));
    let out = server.terminate();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("seed 42 (from --seed"), "{out:?}");

    // Flags beat it.
    let server = Spawned::server_with_env(
        &[
            "server",
            "--conns-max",
            "2000",
            "--envelopes-per-sec",
            "5",
            "--seed",
            "7",
        ],
        &env,
    );
    assert_eq!(status_of(&server), (2000, 5));
    let out = server.terminate();
    assert!(out.stdout.contains("seed 7 (from --seed"), "{out:?}");

    // Neither: the defaults (200 envelopes a second, a seed from the OS).
    let server = Spawned::server_with_env(&["server"], &SERVER_ENV);
    assert_eq!(status_of(&server).1, 200);
    let out = server.terminate();
    assert!(
        out.stdout.contains("drawn from the OS's randomness"),
        "{out:?}"
    );
}

#[test]
fn server_switch_from_environment_and_a_flag_beats_a_conflicting_variable() {
    let mut env = SERVER_ENV.to_vec();
    env.push(("HONGBAO_SERVER_NO_HTTP", "on"));
    let server = Spawned::server_with_env(&["server"], &env);
    assert_eq!(server.http, None, "HONGBAO_SERVER_NO_HTTP=on: no control");
    assert!(server.terminate().status.success());

    // --control-token-file conflicts with --no-http: given as a flag, it
    // silences HONGBAO_SERVER_NO_HTTP instead of being refused with it.
    let dir = scratch_dir("environment-token");
    let token = dir.join("token");
    std::fs::write(&token, "a-control-token-of-32-characters").expect("writing the token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    let token = token.to_str().expect("UTF-8 path");
    let server = Spawned::server_with_env(&["server", "--control-token-file", token], &env);
    let http = server.http.expect("the flag's control is on");
    assert_eq!(
        util::http_get_text(http, "/yaohongbao?rate=1").0,
        401,
        "token required"
    );
    assert!(server.terminate().status.success());

    // Both from the environment: refused, naming the variables set.
    env.push(("HONGBAO_SERVER_CONTROL_TOKEN_FILE", token));
    let out = run_to_exit_with_env(&["server"], &env);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("cannot be used with")
            && out.stderr.contains("HONGBAO_SERVER_NO_HTTP=on"),
        "{out:?}"
    );

    // A bad value names its variable too.
    let out = run_to_exit_with_env(&["server"], &[("HONGBAO_SERVER_THREADS", "many")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("'many'") && out.stderr.contains("HONGBAO_SERVER_THREADS=many"),
        "{out:?}"
    );
}

/// A flooder's JSON report, run to its end with `args` and `vars`.
fn flood_report(dir: &Path, name: &str, args: &[&str], vars: &[(&str, &str)]) -> Value {
    let json = dir.join(name);
    let json = json.to_str().expect("UTF-8 path");
    let mut all = vec!["flood"];
    all.extend_from_slice(args);
    let mut vars = vars.to_vec();
    vars.push(("HONGBAO_FLOOD_JSON", json));
    let out = run_to_exit_with_env(&all, &vars);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(json).expect("the flooder's report");
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn flood_lists_take_commas_and_a_flag_beats_a_conflicting_variable() {
    let server = Spawned::on_loopback(1, &[]);
    let addr = server.addr.to_string();
    let twice = format!("{addr},{addr}");
    let dir = scratch_dir("environment-flood");
    let env = [
        ("HONGBAO_FLOOD_SERVER", twice.as_str()),
        ("HONGBAO_FLOOD_USERS", "3"),
        ("HONGBAO_FLOOD_THREADS", "1"),
        ("HONGBAO_FLOOD_QPS", "6"),
        ("HONGBAO_FLOOD_DURATION", "1"),
        ("HONGBAO_FLOOD_WARMUP", "0"),
        ("HONGBAO_FLOOD_SETTLE_SECS", "0"),
        ("HONGBAO_FLOOD_NO_HTTP", "1"),
        ("HONGBAO_FLOOD_QUIET", "true"),
    ];

    let report = flood_report(&dir, "env.json", &[], &env);
    let config = &report["config"];
    assert_eq!(
        config["servers"],
        serde_json::json!([addr, addr]),
        "{config}"
    );
    assert_eq!(config["users"], 3, "{config}");
    assert_eq!(config["warmup_secs"], 0, "{config}");
    assert_eq!(
        config["phases"],
        serde_json::json!([{"qps": 6, "secs": 1}]),
        "{config}"
    );

    // --phases conflicts with --qps and --duration: as flags it silences
    // their variables; --server and --users beat theirs.
    let report = flood_report(
        &dir,
        "flags.json",
        &["--server", &addr, "--users", "2", "--phases", "4x1s"],
        &env,
    );
    let config = &report["config"];
    assert_eq!(config["servers"], serde_json::json!([addr]), "{config}");
    assert_eq!(config["users"], 2, "{config}");
    assert_eq!(
        config["phases"],
        serde_json::json!([{"qps": 4, "secs": 1}]),
        "{config}"
    );
    assert!(server.terminate().status.success());
}

#[test]
fn monitor_sources_from_the_environment_and_a_flag_beats_them() {
    let dir = scratch_dir("environment-monitor");
    let unreached = |name: &str, args: &[&str]| -> Value {
        let jsonl = dir.join(name);
        let jsonl = jsonl.to_str().expect("UTF-8 path");
        let mut all = vec!["monitor"];
        all.extend_from_slice(args);
        // Nobody serves these ports: each second lists them as unreached.
        let env = [
            ("HONGBAO_MONITOR_SOURCE", "127.0.0.1:19298,127.0.0.1:19299"),
            ("HONGBAO_MONITOR_DURATION", "2"),
            ("HONGBAO_MONITOR_LAG", "1"),
            ("HONGBAO_MONITOR_NO_HTTP", "yes"),
            ("HONGBAO_MONITOR_QUIET", "1"),
            ("HONGBAO_MONITOR_JSONL", jsonl),
        ];
        let out = run_to_exit_with_env(&all, &env);
        assert!(out.status.success(), "{out:?}");
        let text = std::fs::read_to_string(jsonl).expect("the monitor's series");
        let last = text.lines().last().expect("at least one second");
        let second: Value = serde_json::from_str(last).expect("JSON");
        second["unreached"].clone()
    };
    assert_eq!(
        unreached("env.jsonl", &[]),
        serde_json::json!(["127.0.0.1:19298", "127.0.0.1:19299"])
    );
    assert_eq!(
        unreached("flag.jsonl", &["--source", "127.0.0.1:19297"]),
        serde_json::json!(["127.0.0.1:19297"])
    );
}
