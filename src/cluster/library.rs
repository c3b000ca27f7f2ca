//! The engine's function library and its version, the two things a node
//! checks at start against what the primaries run.
//!
//! Owns: `LIBRARY` (`hongbao.lua`, compiled in) and `LIBRARY_VERSION`.
//! Must not: talk to Redis.

/// The function library, loaded on every primary (`FUNCTION LOAD REPLACE`).
pub const LIBRARY: &str = include_str!("hongbao.lua");

/// The library's version: `hb_version` returns it. Must equal
/// `LIBRARY_VERSION` in `hongbao.lua` (a test checks); raise both on any
/// change to the library, so that a node loads the new one at start and an
/// older binary refuses to run against it.
pub const LIBRARY_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rust_and_lua_versions_agree() {
        let lua: u32 = LIBRARY
            .lines()
            .find_map(|l| l.trim().strip_prefix("local LIBRARY_VERSION = "))
            .expect("hongbao.lua sets `local LIBRARY_VERSION = N`")
            .trim()
            .parse()
            .expect("a whole number");
        assert_eq!(lua, LIBRARY_VERSION);
        assert!(LIBRARY.starts_with("#!lua name=hongbao\n"));
    }

    #[test]
    fn the_rust_and_lua_packet_keep_agree() {
        let lua: u64 = LIBRARY
            .lines()
            .find_map(|l| l.trim().strip_prefix("local KEEP_MS = "))
            .expect("hongbao.lua sets `local KEEP_MS = N`")
            .trim()
            .parse()
            .expect("a whole number");
        assert_eq!(lua, crate::cluster::keys::PACKET_KEEP_MS);
    }

    #[test]
    fn every_function_is_registered() {
        for f in [
            "hb_version",
            "hb_create",
            "hb_claim",
            "hb_expire",
            "hb_packet",
            "hb_login",
            "hb_logout",
            "hb_route",
            "hb_delivered",
            "hb_budget_set",
            "hb_lease",
        ] {
            assert!(
                LIBRARY.contains(&format!("'{f}', {f})"))
                    || LIBRARY.contains(&format!("function_name = '{f}'")),
                "{f} is not registered in hongbao.lua"
            );
        }
    }
}
