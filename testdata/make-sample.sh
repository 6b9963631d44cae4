#!/usr/bin/env bash
# Build a small, real overlayfs upper dir for the README quick start and for manual checks.
#
# usage: sudo testdata/make-sample.sh DIR
# Makes DIR/lower (a tiny "base image"), mounts overlay on DIR/merged with upperdir DIR/upper, changes
# things through the mount the way a container would (delete a file and a dir, rm -rf and re-create a
# dir -> opaque, modify, chmod, add files, symlink, hardlink, xattr), then unmounts. DIR/upper then
# holds real kernel-made whiteouts (char 0/0) and a trusted.overlay.opaque dir. Needs root (overlay
# mount, trusted.* xattrs). Uppers cannot live in git (device nodes, trusted xattrs): this script is
# the fixture.
set -euo pipefail
D=${1:?usage: make-sample.sh DIR}
[ "$(id -u)" = 0 ] || { echo "make-sample.sh: needs root (overlay mount, trusted xattrs)" >&2; exit 1; }
if mountpoint -q "$D/merged" 2>/dev/null; then umount "$D/merged"; fi
rm -rf "$D/lower" "$D/upper" "$D/work" "$D/merged"
mkdir -p "$D"/{lower,upper,work,merged}
L=$D/lower
mkdir -p "$L/etc/app.d" "$L/usr/share/doc/pkg" "$L/var/cache/pkg" "$L/opt/tool"
printf 'name=base\n' > "$L/etc/app.conf"
printf 'one\n' > "$L/etc/app.d/01-one.conf"
printf 'two\n' > "$L/etc/app.d/02-two.conf"
printf 'docs\n' > "$L/usr/share/doc/pkg/README"
printf 'cache\n' > "$L/var/cache/pkg/blob"
printf '#!/bin/sh\necho tool\n' > "$L/opt/tool/run"; chmod 755 "$L/opt/tool/run"
printf 'old\n' > "$L/etc/motd"

mount -t overlay overlay -o "lowerdir=$L,upperdir=$D/upper,workdir=$D/work" "$D/merged"
trap 'umount "$D/merged" 2>/dev/null || true' EXIT
M=$D/merged
rm "$M/etc/motd"                                   # whiteout
rm -rf "$M/usr/share/doc"                          # whiteout of a dir
rm -rf "$M/etc/app.d"; mkdir "$M/etc/app.d"        # re-created dir: opaque
printf 'fresh\n' > "$M/etc/app.d/10-new.conf"
printf 'name=layer\n' >> "$M/etc/app.conf"         # modified (copied up)
chmod 700 "$M/opt/tool/run"                        # metadata change (copied up)
mkdir -p "$M/srv/www"; printf '<h1>hi</h1>\n' > "$M/srv/www/index.html"
ln -s index.html "$M/srv/www/default.html"          # symlink
ln "$M/srv/www/index.html" "$M/srv/www/index.bak"   # hardlink
setfattr -n user.origin -v sample "$M/srv/www/index.html"
mkfifo "$M/srv/pipe"
umount "$M"; trap - EXIT
echo "$D/upper"
