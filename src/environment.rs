//! Options from the environment: the naming scheme, and the parse in which a
//! flag beats the environment, which beats a default.
//!
//! Every option of `hongbao server`, `hongbao flood` and `hongbao monitor`
//! may also be given as `HONGBAO_<SUBCOMMAND>_<OPTION>`: the long name in
//! capitals, `-` as `_` (`--max-qps` of `server` is `HONGBAO_SERVER_MAX_QPS`).
//! The subcommand is in the name so that a server and a flooder on one host
//! (or in one shell) never read each other's settings: `--threads`,
//! `--http`, `--hlog` mean different things to each. Lists (`--server`,
//! `--bind`, `--source`, `--hlog`) take commas: `HONGBAO_FLOOD_SERVER=a:1,b:1`.
//! Switches take `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.
//!
//! Owns: [`var_name`], [`is_option_var`], `without_env` and
//! [`try_get_matches_from`]. Must not: know a program's options (each
//! declares its own `env = "..."`; `tests/environment.rs` checks every
//! one against [`var_name`]).

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// What every option's variable starts with.
const PREFIX: &str = "HONGBAO_";

/// The subcommands whose options come from the environment too.
const SUBCOMMANDS: [&str; 3] = ["server", "flood", "monitor"];

/// The variable of `subcommand`'s option `--long`: `HONGBAO_SERVER_MAX_QPS`
/// for `("server", "max-qps")`.
pub fn var_name(subcommand: &str, long: &str) -> String {
    format!("{PREFIX}{subcommand}_{long}")
        .to_ascii_uppercase()
        .replace('-', "_")
}

/// Whether `name` is one of the options' variables (by its prefix), so that
/// a parent that starts these programs with flags of its own (the demo, the
/// tests) can keep its environment from changing them.
pub fn is_option_var(name: &str) -> bool {
    SUBCOMMANDS
        .iter()
        .any(|s| name.starts_with(&var_name(s, "")))
}

/// The options' variables set in this process's environment, by name,
/// with their values (see [`is_option_var`]).
pub fn option_vars() -> impl Iterator<Item = (String, std::ffi::OsString)> {
    std::env::vars_os().filter_map(|(name, value)| {
        let name = name.into_string().ok()?;
        is_option_var(&name).then_some((name, value))
    })
}

/// `cmd` with no option read from the environment, in any subcommand: the
/// command line and the defaults alone (`ServerConfig::default()`, and the
/// first pass of [`try_get_matches_from`]).
pub(crate) fn without_env(cmd: Command) -> Command {
    map_args(cmd, &|arg| arg.env(None))
}

/// Parses `args` as `cmd` would (`Command::try_get_matches_from`), with
/// two rules clap does not apply by itself:
///
/// - a flag on the command line silences the variables of the options it
///   conflicts with (`--phases` with `HONGBAO_FLOOD_QPS` set: the flag
///   wins, as it would over the same option's variable), instead of
///   refusing the pair;
/// - an empty variable, and a switch's variable saying false
///   (`HONGBAO_SERVER_NO_HTTP=0`), are as if unset, so they conflict with
///   nothing (clap counts a variable as given whatever its value).
///
/// Two variables that conflict with each other are still refused, naming
/// both: nothing says which one the operator meant.
pub fn try_get_matches_from<I, T>(cmd: Command, args: I) -> Result<ArgMatches, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // First pass: the command line alone, to learn which options it gives.
    // Should it fail (a typo, --help), the second pass fails the same way
    // and says so with the variables in view.
    let given = without_env(cmd.clone())
        .try_get_matches_from(&args)
        .ok()
        .and_then(|m| {
            let (name, sub) = m.subcommand()?;
            Some((name.to_string(), sub.clone()))
        });
    let Some((name, sub_matches)) = given else {
        return cmd.try_get_matches_from(&args);
    };
    let Some(sub_cmd) = cmd.find_subcommand(&name) else {
        return cmd.try_get_matches_from(&args);
    };
    let mut silenced: Vec<String> = Vec::new();
    for arg in sub_cmd.get_arguments() {
        if var_says_unset(arg) {
            silenced.push(arg.get_id().to_string());
        }
        if sub_matches.value_source(arg.get_id().as_str()) != Some(ValueSource::CommandLine) {
            continue;
        }
        // Conflicts are declared on one side only: look both ways.
        for other in sub_cmd.get_arg_conflicts_with(arg) {
            silenced.push(other.get_id().to_string());
        }
        for other in sub_cmd.get_arguments() {
            if sub_cmd
                .get_arg_conflicts_with(other)
                .iter()
                .any(|a| a.get_id() == arg.get_id())
            {
                silenced.push(other.get_id().to_string());
            }
        }
    }
    if silenced.is_empty() {
        return cmd.try_get_matches_from(&args);
    }
    let cmd = cmd.mut_subcommand(&name, |sub| {
        sub.mut_args(|arg| {
            if silenced.iter().any(|id| arg.get_id() == id.as_str()) {
                arg.env(None)
            } else {
                arg
            }
        })
    });
    cmd.try_get_matches_from(&args)
}

/// Whether `arg`'s variable is set but says nothing: empty (an env file's
/// `HONGBAO_SERVER_SEED=`), or a switch's false word (`0`, `false`, `no`,
/// `off`, `n`, `f`, any case).
fn var_says_unset(arg: &Arg) -> bool {
    let Some(value) = arg.get_env().and_then(std::env::var_os) else {
        return false;
    };
    let value = value.to_string_lossy().trim().to_ascii_lowercase();
    value.is_empty()
        || (matches!(arg.get_action(), ArgAction::SetTrue)
            && matches!(value.as_str(), "0" | "false" | "no" | "off" | "n" | "f"))
}

/// `cmd` with `f` applied to every argument of it and of its subcommands.
fn map_args(cmd: Command, f: &dyn Fn(Arg) -> Arg) -> Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd.mut_args(f);
    for name in names {
        cmd = cmd.mut_subcommand(name, |sub| map_args(sub, f));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        assert_eq!(var_name("server", "max-qps"), "HONGBAO_SERVER_MAX_QPS");
        assert_eq!(var_name("flood", "server"), "HONGBAO_FLOOD_SERVER");
        assert!(is_option_var("HONGBAO_MONITOR_SOURCE"));
        assert!(is_option_var("HONGBAO_FLOOD_QPS"));
        // The tests' and tools' own switches are not options.
        assert!(!is_option_var("HONGBAO_SKIP_CLUSTER"));
        assert!(!is_option_var("HONGBAO_FONT"));
        assert!(!is_option_var("HONGBAO_SERVERX"));
    }
}
