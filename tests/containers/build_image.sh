#!/usr/bin/env bash
# Build the mi_pipeline image from the repository's Dockerfile with podman, on a CPU base made here:
#
#   1. localhost/mi_pipeline-debian:bookworm-minbase  debootstrap --variant=minbase bookworm (+ python3,
#      venv, pip, ca-certificates) from the Debian mirror apt uses, imported with `podman import`.
#      Reused while its label mi_pipeline.recipe matches this script's recipe (suite, variant,
#      packages, mirror).
#   2. localhost/mi_pipeline-base:cpu-torch<V>         tests/containers/cpu-base.Containerfile: that
#      Debian + a venv with torch==<V> (the pin in constraints-cpu.txt; pip takes the wheel from the
#      local wheel folder named in the host's pip configuration).
#   3. localhost/mi_pipeline:<version>-cpu             the Dockerfile, --build-arg BASE_IMAGE=<2>.
#
# Steps 2 and 3 reuse podman's layer cache (nothing changed: seconds). --scratch rebuilds all three.
# RUN steps use the host network and see, read-only at the same paths, every file and folder the
# host's pip configuration names (config files, find-links folder, file:// indexes, CA bundle,
# constraints), so `pip install` inside the build resolves exactly as it does on the host.
#
# Usage: tests/containers/build_image.sh [--scratch] [--archive FILE.tar]
#   --archive: also write the image as a docker-archive (input of apptainer.def variant (c)).
# Environment: MI_IMAGE (default localhost/mi_pipeline:<version>-cpu), MI_DEBIAN_MIRROR (default:
# the first Debian URI in apt's sources), MI_IMAGE_REPORT (write the timings there as JSON),
# CONTAINERS_CONF (default tests/containers/containers.conf).
# Needs root and: apt-get install podman runc debootstrap.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

scratch=0
archive=""
while (($#)); do
    case "$1" in
        --scratch) scratch=1 ;;
        --archive) archive=$2; shift ;;
        *) echo "build_image.sh: unknown argument '$1' (usage: build_image.sh [--scratch] [--archive FILE.tar])" >&2; exit 2 ;;
    esac
    shift
done

for tool in podman debootstrap python3; do
    command -v "$tool" > /dev/null || { echo "build_image.sh: $tool not found (apt-get install podman runc debootstrap)" >&2; exit 1; }
done
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/tests/containers/containers.conf}"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
torch_version=$(sed -n 's/^torch==//p' constraints-cpu.txt)
[[ -n "$version" && -n "$torch_version" ]] || { echo "build_image.sh: no version in pyproject.toml or no torch== pin in constraints-cpu.txt" >&2; exit 1; }
DEBIAN_IMAGE=localhost/mi_pipeline-debian:bookworm-minbase
BASE_IMAGE=localhost/mi_pipeline-base:cpu-torch$torch_version
MI_IMAGE="${MI_IMAGE:-localhost/mi_pipeline:$version-cpu}"

log() { printf '[build_image %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# ---- read-only mounts for RUN steps: what the host's pip configuration points at -----------------
pip_mounts=()
while IFS= read -r path; do
    pip_mounts+=(--volume "$path:$path:ro")
done < <(python3 -m pip config debug 2>/dev/null | python3 -c '
import os, re, sys
seen = []
for line in sys.stdin:
    m = re.match(r"\s*(/\S+), exists: True", line)
    words = [m.group(1)] if m else []
    if not m and re.match(r"\s*(PIP_[A-Z_]+=|[\w.-]+\.[\w-]+: )", line):
        value = re.split(r"=|: ", line.strip(), maxsplit=1)[1].strip("\x27\"")
        # a file:// index (".../simple") links to files beside it: mount its parent folder
        words = [os.path.dirname(w[7:].rstrip("/")) if w.startswith("file://") else w for w in value.split()]
    for w in words:
        if w.startswith("/") and os.path.exists(w) and w not in seen:
            seen.append(w)
print("\n".join(seen))
')
log "pip configuration mounted into RUN steps: ${pip_mounts[*]:-(none)}"
build_opts=(--network=host --layers "${pip_mounts[@]}")
((scratch)) && build_opts+=(--no-cache)

t_all=$(now)

# ---- 1. Debian base (debootstrap + podman import) -------------------------------------------------
mirror="${MI_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(\S*debian\)$/\1/p; s/^deb \(\S*debian\) bookworm .*/\1/p' \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -n 1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
packages=python3,python3-venv,python3-pip,ca-certificates
recipe=$(printf 'bookworm minbase %s %s' "$packages" "$mirror" | sha256sum | cut -c1-16)
have=$(podman image inspect --format '{{index .Labels "mi_pipeline.recipe"}}' "$DEBIAN_IMAGE" 2>/dev/null || true)
t=$(now)
if ((scratch == 0)) && [[ "$have" == "$recipe" ]]; then
    debian_step=reused
    log "1/3 $DEBIAN_IMAGE: reused (recipe $recipe)"
else
    debian_step=built
    rootfs=$(mktemp -d /var/tmp/mi_pipeline-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    log "1/3 $DEBIAN_IMAGE: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs/root" "$mirror" > "$rootfs/debootstrap.log" 2>&1 \
        || { tail -n 20 "$rootfs/debootstrap.log" >&2; echo "build_image.sh: debootstrap failed (log above)" >&2; exit 1; }
    rm -rf "$rootfs/root/var/cache/apt/archives/"*.deb "$rootfs/root/var/lib/apt/lists/"*
    tar -C "$rootfs/root" -c . | podman import --quiet --change "LABEL mi_pipeline.recipe=$recipe" \
        --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" > /dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi
t_debian=$(elapsed "$t")
log "1/3 done in ${t_debian}s"

# ---- 2. CPU torch base -----------------------------------------------------------------------------
t=$(now)
log "2/3 $BASE_IMAGE: tests/containers/cpu-base.Containerfile (torch==$torch_version)"
context=$(mktemp -d)
podman build "${build_opts[@]}" --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --build-arg TORCH_VERSION="$torch_version" \
    -f tests/containers/cpu-base.Containerfile -t "$BASE_IMAGE" "$context"
rmdir "$context"
t_base=$(elapsed "$t")
log "2/3 done in ${t_base}s"

# ---- 3. the image, from the repository's Dockerfile -------------------------------------------------
t=$(now)
log "3/3 $MI_IMAGE: Dockerfile with BASE_IMAGE=$BASE_IMAGE"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
podman build "${build_opts[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg REVISION="$revision" \
    -t "$MI_IMAGE" .
t_image=$(elapsed "$t")
log "3/3 done in ${t_image}s"

if [[ -n "$archive" ]]; then
    t=$(now)
    rm -f "$archive"
    podman save --format docker-archive -o "$archive" "$MI_IMAGE"
    log "docker-archive $archive written in $(elapsed "$t")s ($(du -h "$archive" | cut -f1))"
fi

size=$(podman image inspect --format '{{.Size}}' "$MI_IMAGE")
t_total=$(elapsed "$t_all")
log "image $MI_IMAGE: $((size / 1000000)) MB; debian base ${debian_step} ${t_debian}s, torch base ${t_base}s, image ${t_image}s; total ${t_total}s"
if [[ -n "${MI_IMAGE_REPORT:-}" ]]; then
    printf '{"image": "%s", "size_bytes": %s, "scratch": %s, "debian_base": "%s", "seconds": {"debian_base": %s, "torch_base": %s, "image": %s, "total": %s}}\n' \
        "$MI_IMAGE" "$size" "$scratch" "$debian_step" "$t_debian" "$t_base" "$t_image" "$t_total" > "$MI_IMAGE_REPORT"
fi
