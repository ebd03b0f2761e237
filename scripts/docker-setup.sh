#!/usr/bin/env bash
# Make Docker usable for the container tests on a fresh Debian machine, as root.
# Idempotent: each step runs only when what it provides is missing.
#   1. Debian packages: docker.io (dockerd, containerd, runc), busybox-static (the
#      test image's root filesystem), docker-registry (a registry on loopback for
#      the pull tests), apache2-utils (htpasswd for that registry's auth).
#   2. dockerd started in the background when `docker info` fails (no systemd in CI).
#   3. The test image ufdl-node-test/busybox:latest, built with `docker import`.
# Environment: DOCKERD_LOG (default /var/log/ufdl-dockerd.log), DOCKERD_WAIT_S (default 60).
set -euo pipefail

IMAGE="ufdl-node-test/busybox:latest"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/ufdl-dockerd.log}"
DOCKERD_WAIT_S="${DOCKERD_WAIT_S:-60}"

say() { echo "docker-setup: $*"; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    # The image needs the static build: a dynamic busybox has no libc inside the image.
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
        || missing+=(busybox-static)
    command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
    command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing ${missing[*]} and no apt-get to install them" >&2
        return 1
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    say "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: dockerd outlives this script and is not in its process group.
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local waited=0
    until docker info >/dev/null 2>&1; do
        if [ "$waited" -ge "$DOCKERD_WAIT_S" ]; then
            say "dockerd did not answer within ${DOCKERD_WAIT_S}s; last log lines:" >&2
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "dockerd answers after ${waited}s"
}

build_test_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    say "building $IMAGE from busybox-static"
    local root
    root="$(mktemp -d)"
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/workspace" "$root/.cache" \
        "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    # An unprivileged user, as the containers run as a non-root uid.
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
    rm -rf "$root"
}

install_packages
start_dockerd
build_test_image
say "ready: $(docker version --format '{{.Server.Version}}') with $IMAGE"
