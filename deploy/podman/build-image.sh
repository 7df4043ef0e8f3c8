#!/usr/bin/env bash
# Builds a tiny container image from Debian's busybox-static, locally (no registry): a root
# filesystem with /bin/busybox and one symlink per applet, imported with `podman import`.
#
# Usage: build-image.sh [IMAGE]            (default: localhost/cilium-busybox:latest)
# Env:   PODMAN   the podman command line to use, e.g. to select a private store:
#                 PODMAN="podman --root /tmp/x/root --runroot /tmp/x/run --storage-driver vfs"
#        BUSYBOX  the static busybox binary (default: /bin/busybox from busybox-static)
# Prints the image id on stdout. Idempotent: re-importing replaces the tag.
set -euo pipefail

image="${1:-localhost/cilium-busybox:latest}"
podman_cmd="${PODMAN:-podman}"
busybox="${BUSYBOX:-/bin/busybox}"

if [[ ! -x "$busybox" ]]; then
    echo "build-image: $busybox not found: install busybox-static (apt-get install busybox-static)" >&2
    exit 1
fi
# The image holds busybox alone: a dynamically linked one (package busybox) would not run.
if [[ "$(head -c 4 "$busybox" | od -An -tx1 | tr -d ' \n')" != 7f454c46 ]]; then
    echo "build-image: $busybox is not an ELF binary; install busybox-static" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/cilium-busybox.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,www}
chmod 1777 "$root/tmp"
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
echo 'cilium podman test image' >"$root/www/index.html"

tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$work/rootfs.tar" .
# shellcheck disable=SC2086 # PODMAN is a command line on purpose
$podman_cmd import \
    --change 'ENV PATH=/bin' \
    --change 'WORKDIR /' \
    --change 'CMD ["/bin/sh"]' \
    "$work/rootfs.tar" "$image" >"$work/id"
cat "$work/id"
