#!/usr/bin/env bash
# Tests for sysctl/: the tuning script and the two files it reads, without
# changing this host. Run by .ci/run; `bash tests/sysctl.sh` alone works too.
#
#  1. shellcheck on the script and on this file;
#  2. the files parse: every sysctl key has its "# why:" and "# check:" lines
#     and exists under /proc/sys or is marked optional ("-key"); the limits
#     agree with the server's own advice (src/server/limits.rs, config.rs);
#  3. usage: --help, bad options;
#  4. as an unprivileged user (nobody when run as root): --check runs, prints
#     one line per setting, exits 0 when all are OK and 3 when not; --apply
#     refuses (exit 4); --apply --dry-run shows the plan. The kernel refuses
#     an unprivileged write anyway, so nothing here can change the host;
#  5. as root, in a throwaway mount namespace where /proc/sys and the /etc
#     directories are temporary copies (checked by a marker before every
#     --apply): --apply fixes a host tuned like the original, a second run
#     changes nothing, a failed write rolls back, a read-only /proc/sys is
#     refused (also the real one, remounted read-only inside the namespace).
#     Skipped where mount namespaces are not available.
#  6. tools/run_1m.py's preflight under an open-file limit of 20,000: a million
#     connections are refused at once (exit 3) naming nofile and its fix; a
#     target that fits passes; its descriptor constants are the server's.
# Finally, this host's settings must be exactly what they were before.

# `expect NAME eval '...'` below is expanded by eval when the check runs:
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "$0")/.."

readonly SCRIPT=sysctl/hongbao-tune.sh CONF=sysctl/99-hongbao.conf LIMITS=sysctl/99-hongbao-limits.conf
readonly MARK=.hongbao-test-fake

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() {
	printf 'FAIL %s\n' "$*"
	fails=$((fails + 1))
}
skip() { printf 'skip %s\n' "$*"; }
expect() { # expect NAME CONDITION...: pass or fail by the exit of CONDITION
	local name=$1
	shift
	if "$@"; then pass "$name"; else fail "$name"; fi
}
has() { grep -qE -- "$2" <<<"$1"; }   # has TEXT REGEX
hasnt() { ! grep -qE -- "$2" <<<"$1"; } # hasnt TEXT REGEX

conf_keys() { sed -nE 's/^-?([a-z0-9_.-]+)[[:space:]]*=.*/\1/p' "$CONF"; }
proc_path() { printf '/proc/sys/%s' "${1//.//}"; }

snapshot() { # the live values of every key, and the installed files
	local k
	for k in $(conf_keys); do
		printf '%s = %s\n' "$k" "$(tr -s '\t ' ' ' 2>/dev/null <"$(proc_path "$k")" || echo absent)"
	done
	ls -l /etc/sysctl.d /etc/security/limits.d 2>&1
	cat /etc/sysctl.d/99-hongbao.conf /etc/security/limits.d/99-hongbao-limits.conf 2>/dev/null | md5sum || true
}

# --- 5. inside the mount namespace (this file runs itself there) -------------

fake_guard() { # every --apply below runs only while the fakes are mounted
	[[ -e /proc/sys/$MARK && -e /etc/sysctl.d/$MARK && -e /etc/security/limits.d/$MARK ]] ||
		{
			echo "the fake /proc/sys or /etc directories are not mounted: stopping before any --apply" >&2
			exit 1
		}
}

# The original's values where it set one (fs.file-max 102550, somaxconn 10000,
# timestamps off, port range from 1024, ...); this host's for the rest.
seed_fake() {
	local fake=$1 k v
	declare -A orig=(
		[fs.file-max]=102550 [net.core.somaxconn]=10000 [net.ipv4.tcp_max_syn_backlog]=10000
		[net.core.netdev_max_backlog]=300000 [net.ipv4.tcp_timestamps]=0 [net.ipv4.tcp_sack]=1
		[net.ipv4.tcp_window_scaling]=1 [net.ipv4.tcp_tw_reuse]=1 [net.ipv4.tcp_fin_timeout]=5
		[net.ipv4.ip_local_port_range]=$'1024\t65535'
	)
	for k in $(conf_keys); do
		[[ -e $(proc_path "$k") || -n ${orig[$k]:-} ]] || continue
		mkdir -p "$fake/$(dirname "${k//.//}")"
		if [[ -n ${orig[$k]:-} ]]; then v=${orig[$k]}; else v=$(cat "$(proc_path "$k")"); fi
		printf '%s\n' "$v" >"$fake/${k//.//}"
	done
	touch "$fake/$MARK"
}

tree_sum() { # the values in a fake /proc/sys, whitespace as the kernel prints it
	local f
	(cd "$1" && find . -type f ! -name "$MARK" | sort | while IFS= read -r f; do
		printf '%s = %s\n' "$f" "$(tr -s '\t ' ' ' <"$f")"
	done | md5sum)
}

in_namespace() {
	local tmp=$1 fake=$1/proc-sys seed=$1/seed out rc before after nofile
	mkdir -p "$fake" "$seed" "$tmp/sysctl.d" "$tmp/limits.d"
	touch "$tmp/sysctl.d/$MARK" "$tmp/limits.d/$MARK"
	seed_fake "$seed" # read from the real /proc/sys, before it is covered
	cp -a "$seed/." "$fake/"
	mount --make-rprivate /
	mount --bind "$fake" /proc/sys
	mount --bind "$tmp/sysctl.d" /etc/sysctl.d
	mount --bind "$tmp/limits.d" /etc/security/limits.d
	fake_guard
	nofile=$(awk '$1 == "root" && $2 == "hard" && $3 == "nofile" { print $4 }' "$LIMITS")
	ulimit -n "$nofile" 2>/dev/null || true # so the shell's own nofile line can be OK

	out=$("$SCRIPT" --check 2>&1) && rc=0 || rc=$?
	expect "ns: --check on a host tuned as the original: exit 3" test "$rc" = 3
	expect "ns: --check: somaxconn 10000 is CHANGE" has "$out" '^net\.core\.somaxconn +10000 .* CHANGE '
	expect "ns: --check: timestamps 0 is CHANGE" has "$out" '^net\.ipv4\.tcp_timestamps +0 .* CHANGE '
	expect "ns: --check: netdev_max_backlog 300000 is OK (more than wanted)" has "$out" '^net\.core\.netdev_max_backlog +300000 .* OK '

	before=$(tree_sum "$fake")
	fake_guard
	out=$("$SCRIPT" --apply --dry-run 2>&1) && rc=0 || rc=$?
	expect "ns: --apply --dry-run: exit 3, says what it would change" \
		eval '[[ $rc == 3 ]] && has "$out" "^would change net\.core\.somaxconn: 10000 -> 65535$"'
	expect "ns: --apply --dry-run changes nothing" \
		eval '[[ $(tree_sum "$fake") == "$before" && ! -e /etc/sysctl.d/99-hongbao.conf ]]'

	fake_guard
	out=$("$SCRIPT" --apply 2>&1) && rc=0 || rc=$?
	printf '%s\n' "$out" | sed 's/^/     | /'
	expect "ns: --apply: exit 0" test "$rc" = 0
	expect "ns: --apply prints old -> new" has "$out" '^changed net\.core\.somaxconn: 10000 -> 65535$'
	expect "ns: --apply restores timestamps" has "$out" '^changed net\.ipv4\.tcp_timestamps: 0 -> 1$'
	expect "ns: --apply fixes the port range" has "$out" '^changed net\.ipv4\.ip_local_port_range: 1024 65535 -> 10240 65535$'
	expect "ns: --apply never lowers (netdev_max_backlog 300000 kept)" hasnt "$out" 'changed net\.core\.netdev_max_backlog'
	expect "ns: the kernel file holds the new value" test "$(cat /proc/sys/net/core/somaxconn)" = 65535
	expect "ns: sysctl.d file installed, kept values recorded" \
		eval 'grep -qx "net.core.netdev_max_backlog = 300000" /etc/sysctl.d/99-hongbao.conf && grep -q "^# kept: " /etc/sysctl.d/99-hongbao.conf'
	expect "ns: limits.d file installed as written" cmp -s "$LIMITS" /etc/security/limits.d/99-hongbao-limits.conf

	before=$(tree_sum "$fake")$(md5sum /etc/sysctl.d/99-hongbao.conf /etc/security/limits.d/99-hongbao-limits.conf)
	fake_guard
	out=$("$SCRIPT" --apply 2>&1) && rc=0 || rc=$?
	expect "ns: second --apply: exit 0, 'Nothing to change'" eval '[[ $rc == 0 ]] && has "$out" "^Nothing to change"'
	expect "ns: second --apply: no change printed" hasnt "$out" '^(changed|installed) '
	after=$(tree_sum "$fake")$(md5sum /etc/sysctl.d/99-hongbao.conf /etc/security/limits.d/99-hongbao-limits.conf)
	expect "ns: second --apply: nothing written" test "$before" = "$after"

	out=$("$SCRIPT" --check 2>&1) && rc=0 || rc=$?
	if [[ $(ulimit -H -n) -ge $nofile ]]; then
		expect "ns: --check after --apply: exit 0, no CHANGE" eval '[[ $rc == 0 ]] && hasnt "$out" " CHANGE "'
	else
		expect "ns: --check after --apply: only this shell's nofile left" \
			eval '[[ $rc == 3 && $(grep -c " CHANGE " <<<"$out") == 1 ]] && has "$out" "^nofile .* CHANGE "'
	fi

	# The installed file through procps' own parser (it writes into the fake).
	if command -v sysctl >/dev/null; then
		fake_guard
		out=$(sysctl -p /etc/sysctl.d/99-hongbao.conf 2>&1) && rc=0 || rc=$?
		expect "ns: sysctl -p accepts the installed file" test "$rc" = 0
		[[ $rc == 0 ]] || printf '%s\n' "$out" | sed 's/^/     | /'
	fi

	# A write that fails half-way: the last planned key sits on a full tmpfs.
	rm -rf "${fake:?}"/* /etc/sysctl.d/99-hongbao.conf /etc/security/limits.d/99-hongbao-limits.conf
	cp -a "$seed/." "$fake/"
	mkdir -p "$tmp/full"
	mount -t tmpfs -o size=4k tmpfs "$tmp/full"
	head -c 4096 /dev/zero >"$tmp/full/filler" 2>/dev/null || true
	: >"$tmp/full/fin"
	mount --bind "$tmp/full/fin" /proc/sys/net/ipv4/tcp_fin_timeout
	if { printf 'x' >"$tmp/full/fin"; } 2>/dev/null; then
		skip "ns: rollback (a full tmpfs still took a write here)"
	else
		before=$(tree_sum "$fake")
		fake_guard
		out=$("$SCRIPT" --apply 2>&1) && rc=0 || rc=$?
		printf '%s\n' "$out" | sed 's/^/     | /'
		expect "ns: failed write: exit 1, earlier changes rolled back" \
			eval '[[ $rc == 1 ]] && has "$out" "^rolled back net\.core\.somaxconn to 10000$"'
		expect "ns: failed write: every value as before, no file installed" \
			eval '[[ $(tree_sum "$fake") == "$before" && ! -e /etc/sysctl.d/99-hongbao.conf && ! -e /etc/security/limits.d/99-hongbao-limits.conf ]]'
	fi
	umount /proc/sys/net/ipv4/tcp_fin_timeout

	# A container's read-only /proc/sys.
	mount -o remount,bind,ro /proc/sys
	before=$(tree_sum "$fake")
	fake_guard
	out=$("$SCRIPT" --apply 2>&1) && rc=0 || rc=$?
	expect "ns: read-only /proc/sys: refused (exit 4), says why" eval '[[ $rc == 4 ]] && has "$out" "read-only"'
	expect "ns: read-only /proc/sys: nothing changed or installed" \
		eval '[[ $(tree_sum "$fake") == "$before" && ! -e /etc/sysctl.d/99-hongbao.conf ]] && hasnt "$out" "^changed "'
	umount /proc/sys

	# The real /proc/sys, remounted read-only in this namespace only: the
	# kernel refuses every write there, whatever the script did.
	mount --bind /proc/sys /proc/sys
	mount -o remount,bind,ro /proc/sys
	if [[ -w /proc/sys/net/core/somaxconn ]]; then
		skip "ns: real /proc/sys read-only (could not remount it read-only)"
	else
		local checked
		checked=$("$SCRIPT" --check 2>&1) || true
		out=$("$SCRIPT" --apply 2>&1) && rc=0 || rc=$?
		if grep -qE '^(fs|net)\.[^ ]+ .* CHANGE ' <<<"$checked"; then
			expect "ns: this host's /proc/sys read-only: refused (exit 4), says why" \
				eval '[[ $rc == 4 ]] && has "$out" "read-only" && hasnt "$out" "^changed "'
		else
			skip "ns: this host's /proc/sys read-only (no kernel setting to change here)"
		fi
	fi
	umount /proc/sys
	exit $((fails > 0))
}

if [[ ${1:-} == --in-namespace ]]; then
	in_namespace "$2"
fi

# --- 1. shellcheck ----------------------------------------------------------------

if command -v shellcheck >/dev/null; then
	expect "shellcheck $SCRIPT ${0#./}" shellcheck -x "$SCRIPT" "$0"
else
	fail "shellcheck is not installed (.ci/run installs it with apt-get)"
fi

real_before=$(snapshot)

# --- 2. the files ---------------------------------------------------------------

conf_ok=1
why="" check="" n=0
while IFS= read -r line; do
	n=$((n + 1))
	case $line in
	'# why:'?*) why=1 ;;
	'# check: at-least' | '# check: at-most' | '# check: exact') check=1 ;;
	'# check:'*) fail "$CONF:$n: unknown check mode: $line" && conf_ok=0 ;;
	'#'* | '') ;;
	*)
		if [[ ! $line =~ ^(-?)([a-z0-9_.-]+)\ =\ [^[:space:]].*$ ]]; then
			fail "$CONF:$n: not 'key = value': $line"
			conf_ok=0
			continue
		fi
		key=${BASH_REMATCH[2]}
		[[ -n $why && -n $check ]] || {
			fail "$CONF:$n: $key lacks its '# why:' or '# check:' line"
			conf_ok=0
		}
		if [[ ! -e $(proc_path "$key") && -z ${BASH_REMATCH[1]} ]]; then
			fail "$CONF:$n: $key does not exist on this kernel ($(uname -r)) and is not marked optional (-$key)"
			conf_ok=0
		fi
		why="" check=""
		;;
	esac
done <"$CONF"
expect "$CONF: every key has a reason and a check mode, and exists or is optional" test "$conf_ok" = 1

want() { sed -nE "s/^-?$1[[:space:]]*=[[:space:]]*//p" "$CONF"; }
nr_open=$(want 'fs\.nr_open')
file_max=$(want 'fs\.file-max')
somaxconn=$(want 'net\.core\.somaxconn')
# The server's reserve (limits::fds_reserved) for a large host: 256 workers
# with the HTTP control.
fixed=$(sed -nE 's/^pub(\(crate\))? const FDS_FIXED: u64 = ([0-9_]+);/\2/p' src/server/limits.rs | tr -d _)
per_worker=$(sed -nE 's/^pub(\(crate\))? const FDS_PER_WORKER: u64 = ([0-9_]+);/\2/p' src/server/limits.rs | tr -d _)
control=$(sed -nE 's/^pub(\(crate\))? const CONNS_MAX: usize = ([0-9_]+);/\2/p' src/http.rs | tr -d _)
reserved=""
if [[ -n $fixed && -n $per_worker && -n $control ]]; then
	reserved=$((fixed + 256 * per_worker + control + 3))
fi
conns_max=$(grep -B1 'pub conns_max' src/server/config.rs | sed -nE 's/.*default_value_t = ([0-9_]+).*/\1/p' | tr -d _)
backlog=$(grep -B1 'pub backlog' src/server/config.rs | sed -nE 's/.*default_value_t = ([0-9_]+).*/\1/p' | tr -d _)
star=$(awk '$1 == "*" && $2 == "hard" && $3 == "nofile" { print $4 }' "$LIMITS")
root=$(awk '$1 == "root" && $2 == "hard" && $3 == "nofile" { print $4 }' "$LIMITS")
if [[ -n $star && $star == "$root" ]]; then
	pass "$LIMITS: hard nofile for '*' and for root (the wildcard skips root), the same"
else
	fail "$LIMITS: hard nofile for '*' ($star) and for root ($root) must both be there, the same"
fi
expect "$LIMITS: every line is '<domain> <type> <item> <value>'" \
	eval '! grep -vE "^[[:space:]]*(#|$)" "$LIMITS" | awk "NF != 4 { bad = 1 } END { exit !bad }"'
expect "limits agree with the server (src/server): nofile $star >= --conns-max $conns_max + the reserve of 256 workers $reserved" \
	eval '[[ -n $conns_max && -n $reserved ]] && ((star >= conns_max + reserved))'
expect "nofile $star <= fs.nr_open $nr_open (or pam_limits refuses logins)" eval '((star <= nr_open))'
expect "fs.file-max $file_max >= 2 x fs.nr_open, as the server's advice" eval '((file_max >= 2 * nr_open))'
expect "net.core.somaxconn $somaxconn >= the server's --backlog $backlog" eval '[[ -n $backlog ]] && ((somaxconn >= backlog))'

# --- 3. usage -------------------------------------------------------------------

out=$("$SCRIPT" --help 2>&1) && rc=0 || rc=$?
expect "--help: exit 0, documents the exit codes" eval '[[ $rc == 0 ]] && has "$out" "--check" && has "$out" "^  3 "'
"$SCRIPT" >/dev/null 2>&1 && rc=0 || rc=$?
expect "no option: exit 2" test "$rc" = 2
"$SCRIPT" --bogus >/dev/null 2>&1 && rc=0 || rc=$?
expect "unknown option: exit 2" test "$rc" = 2
"$SCRIPT" --check --dry-run >/dev/null 2>&1 && rc=0 || rc=$?
expect "--check --dry-run: exit 2" test "$rc" = 2

# --- 4. unprivileged --------------------------------------------------------------

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r sysctl "$tmp/"
chmod -R a+rX "$tmp"
user_script=$tmp/sysctl/hongbao-tune.sh
if ((EUID == 0)); then
	as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
else
	as_user() { "$@"; }
fi

out=$(as_user "$user_script" --check 2>&1) && rc=0 || rc=$?
check_rc=$rc
printf '%s\n' "$out" | sed 's/^/     | /'
expect "--check unprivileged: exit 0 or 3 (got $rc)" eval '[[ $rc == 0 || $rc == 3 ]]'
expect "--check: the header" has "$out" '^SETTING +CURRENT +WANTED +STATE +WHY$'
lines_ok=1
for k in $(conf_keys); do
	has "$out" "^${k//./\\.} +.* (OK|CHANGE|SKIP) +[^ ].+" || {
		fail "--check: no 'current wanted OK|CHANGE|SKIP why' line for $k"
		lines_ok=0
	}
done
for k in 'sysctl\.d/99-hongbao\.conf' 'limits\.d/99-hongbao-limits\.conf' 'nofile '; do
	has "$out" "^$k.* (OK|CHANGE) +[^ ].+" || {
		fail "--check: no line for $k"
		lines_ok=0
	}
done
expect "--check: one line per setting, file and limit" test "$lines_ok" = 1
if has "$out" ' CHANGE '; then
	expect "--check: a CHANGE line means exit 3" test "$rc" = 3
else
	expect "--check: no CHANGE line means exit 0" test "$rc" = 0
fi

out=$(as_user "$user_script" --apply 2>&1) && rc=0 || rc=$?
if ((check_rc == 3)); then
	expect "--apply unprivileged: refused (exit 4) with a clear message" \
		eval '[[ $rc == 4 ]] && has "$out" "refusing to apply: .*root" && has "$out" "Nothing was changed"'
	expect "--apply unprivileged: no change printed" hasnt "$out" '^(changed|installed) '
else
	expect "--apply unprivileged on a tuned host: nothing to change" eval '[[ $rc == 0 ]] && has "$out" "^Nothing to change"'
fi

out=$(as_user "$user_script" --apply --dry-run 2>&1) && rc=0 || rc=$?
expect "--apply --dry-run unprivileged: exit as --check ($check_rc)" test "$rc" = "$check_rc"
((check_rc == 0)) || expect "--apply --dry-run: says nothing changed" has "$out" '^Dry run: nothing changed\.$'

# Root of a user namespace of its own is not the host's root: refused. Only
# from an unprivileged user (root mapped to itself would still be root).
if as_user unshare -r true 2>/dev/null; then
	out=$(as_user unshare -r "$user_script" --apply 2>&1) && rc=0 || rc=$?
	if ((check_rc == 3)); then
		expect "--apply as root of a user namespace: refused (exit 4), read-only here" \
			eval '[[ $rc == 4 ]] && has "$out" "read-only"'
	fi
else
	skip "--apply in a user namespace (unprivileged user namespaces are off here)"
fi

# --- 5. as root, in a throwaway mount namespace --------------------------------------

if ((EUID != 0)); then
	skip "apply/idempotence/rollback/read-only tests (need root for a mount namespace)"
elif [[ ! -d /etc/sysctl.d || ! -d /etc/security/limits.d ]]; then
	skip "apply/idempotence tests (no /etc/sysctl.d or /etc/security/limits.d to mount over)"
elif ! unshare --mount true 2>/dev/null; then
	skip "apply/idempotence tests (no mount namespaces here)"
else
	unshare --mount --propagation private -- bash "$0" --in-namespace "$tmp/ns" && rc=0 || rc=$?
	((rc == 0)) || fails=$((fails + 1))
fi

# --- 6. tools/run_1m.py's preflight ---------------------------------------------------
# Under an open-file limit of at most 20,000 (lowered in a subshell: lowering
# needs no privilege) a million connections cannot fit in one server: the
# script must stop before starting or building anything (the binary given
# does not exist, so getting past the preflight would fail differently),
# exit 3 and name the limit with the limits.d line that lifts it. A target
# that fits the same limit passes.

run1m=tools/run_1m.py
py_const() { sed -nE "s/^$1 = ([0-9_]+)$/\1/p" "$run1m" | tr -d _; }
expect "$run1m: the server's descriptor reserve is the server's own (FDS_FIXED, FDS_PER_WORKER, the HTTP control's FDS_MAX)" \
	eval '[[ $(py_const SERVER_FDS_FIXED) == "$fixed" && $(py_const SERVER_FDS_PER_WORKER) == "$per_worker" && $(py_const SERVER_FDS_HTTP) == "$((control + 3))" ]]'
flood_spare=$(sed -nE 's/^const FDS_SPARE: u64 = ([0-9_]+);/\1/p' src/flood/mod.rs | tr -d _)
expect "$run1m: a flooder's spare descriptors are the flooder's own (FDS_SPARE $flood_spare)" \
	test "$(py_const FLOODER_FDS_SPARE)" = "$flood_spare"
lim=$(ulimit -Hn)
[[ $lim == unlimited || $lim -gt 20000 ]] && lim=20000
out=$( (ulimit -n "$lim" && exec python3 "$run1m" --no-build --binary /nonexistent/hongbao) 2>&1) && rc=0 || rc=$?
expect "$run1m under nofile $lim: refused at once (exit 3), nothing started" \
	eval '[[ $rc == 3 ]] && has "$out" "nothing was started" && hasnt "$out" "does not exist"'
expect "$run1m under nofile $lim: names the nofile limit, the limits.d line ($star) and the tuning script" \
	eval 'has "$out" "FAIL nofile .*have $lim, need [0-9]{7}" && has "$out" "hard nofile $star\` .*limits.d" && has "$out" "hongbao-tune.sh --apply"'
out=$( (ulimit -n "$lim" && exec python3 "$run1m" --preflight-only --target 1000) 2>&1) && rc=0 || rc=$?
expect "$run1m --preflight-only --target 1000 under nofile $lim: passes (exit 0)" \
	eval '[[ $rc == 0 ]] && has "$out" "ok   nofile" && hasnt "$out" FAIL'
python3 "$run1m" --target 0 >/dev/null 2>&1 && rc=0 || rc=$?
expect "$run1m --target 0: usage error (exit 2)" test "$rc" = 2

# --- this host ----------------------------------------------------------------------

expect "this host's settings and /etc files are as before the tests" test "$(snapshot)" = "$real_before"

if ((fails > 0)); then
	printf '\n%d test(s) failed\n' "$fails"
	exit 1
fi
printf '\nsysctl tests passed\n'
