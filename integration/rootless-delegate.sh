#!/bin/sh
# rootless-delegate.sh USER [--remove]
#
# Run as root. Delegates a cgroup subtree named peapod-USER to USER, so that
# a rootless peapod run by USER gives its pods cgroups with accounting (its
# default cgroup parent is /peapod-USER/peapod).
#
# cgroup v1 (and hybrid): /sys/fs/cgroup/<hierarchy>/peapod-USER in every
# mounted v1 hierarchy, named ones included, chowned -R to USER; cpuset.cpus
# and cpuset.mems are initialised from the parent so that tasks can join.
# The hybrid cgroup2 mount (no controllers) is left alone: moving a task
# there needs write access to the common ancestor, the root.
#
# cgroup v2: /sys/fs/cgroup/peapod-USER with the controllers enabled for it
# and delegated the way the kernel documents it (the directory,
# cgroup.procs, cgroup.threads and cgroup.subtree_control belong to USER;
# the limits of the subtree root stay root's). v2 moves a process only
# where the common ancestor of its old and new cgroup is writable, so
# peapod must itself run inside that subtree (root puts it there:
# echo PID > /sys/fs/cgroup/peapod-USER/cgroup.procs; peapod then moves
# into a leaf, see cgroups.PrepareDelegatedV2). With systemd, use
# Delegate=yes in the user's unit instead of this script.
#
# Idempotent: run it again to repair ownership or after new hierarchies are
# mounted. --remove removes the (empty) subtrees again.
set -eu

usage() { echo "usage: $0 USER [--remove]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
user=$1
remove=
case ${2:-} in
"") ;;
--remove) remove=1 ;;
*) usage ;;
esac
[ "$(id -u)" = 0 ] || { echo "$0: run as root" >&2; exit 1; }
uid=$(id -u "$user") || { echo "$0: no user $user" >&2; exit 1; }
gid=$(id -g "$user")
name=peapod-$user

# rmtree DIR: remove DIR's cgroup tree, deepest first (cgroups refuse rm -r).
rmtree() {
	[ -d "$1" ] || return 0
	find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || {
		echo "$0: $1 still holds processes or cgroups that cannot be removed" >&2
		return 1
	}
}

# Mount points with their type and options, from /proc/self/mounts.
mounts=$(awk '$3 == "cgroup" || $3 == "cgroup2" { print $3, $2, $4 }' /proc/self/mounts)
[ -n "$mounts" ] || { echo "$0: no cgroup hierarchy is mounted" >&2; exit 1; }

unified=
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
	unified=1
fi

status=0
while read -r type mnt opts; do
	if [ -n "$unified" ]; then
		[ "$type" = cgroup2 ] && [ "$mnt" = /sys/fs/cgroup ] || continue
		dir=$mnt/$name
		if [ -n "$remove" ]; then
			rmtree "$dir" || status=1
			continue
		fi
		mkdir -p "$dir"
		# Enable every controller the root offers for the subtree root,
		# and in it for the user's children (best effort, like systemd).
		for c in $(cat "$mnt/cgroup.controllers"); do
			echo "+$c" >"$mnt/cgroup.subtree_control" 2>/dev/null || true
		done
		chown "$uid:$gid" "$dir" "$dir/cgroup.procs" "$dir/cgroup.threads" "$dir/cgroup.subtree_control"
		echo "$dir"
		continue
	fi
	[ "$type" = cgroup ] || continue # the hybrid cgroup2 mount: see above
	dir=$mnt/$name
	if [ -n "$remove" ]; then
		rmtree "$dir" || status=1
		continue
	fi
	mkdir -p "$dir"
	case ",$opts," in
	*,cpuset,*)
		for f in cpuset.cpus cpuset.mems; do
			if [ -z "$(cat "$dir/$f")" ]; then
				cat "$mnt/$f" >"$dir/$f"
			fi
		done
		;;
	esac
	chown -R "$uid:$gid" "$dir"
	echo "$dir"
done <<EOF
$mounts
EOF
exit $status
