#!/usr/bin/env bash
# Builds the netsteer OCI image offline, from a build tree and this machine's Debian packages only
# (no registry, no base image, no container engine):
#
#   scripts/image.sh [BUILD_DIR] [OUT]          -> OUT (default BUILD_DIR/netsteer-image.tar), an OCI
#                                                  image layout in a tar: `ctr -n k8s.io images import OUT`
#   scripts/image.sh --rootfs DIR [BUILD_DIR]   -> only the image's file tree, in DIR (deploy/Containerfile
#                                                  copies it into a FROM scratch image)
#
# The image holds, and nothing else (no shell, no package manager, no compiler):
#   /usr/local/bin/netsteerd      the agent (stripped; dynamically linked)
#   /usr/local/bin/netsteerctl    CLI and readiness probe (stripped, static-pie)
#   /usr/local/bin/netsteer-cni   the CNI plugin and its installer: `netsteer-cni install|uninstall` (static-pie)
#   /usr/bin/catatonit            Debian's static pause process: deploy/uninstall.yaml idles with `catatonit -P`
#   /usr/lib/x86_64-linux-gnu/*   exactly the shared libraries `ldd netsteerd` resolves, and the dynamic
#                                 loader, copied from the Debian packages installed here (their copyright
#                                 files in /usr/share/doc, the package list in /usr/share/netsteer/packages)
#   /etc/passwd, /etc/group       root and nobody
# Entrypoint ["netsteerd"] (on PATH), user 0:0, the tag of deploy/daemonset.yaml's image.
#
# Deterministic: every file is owned by 0:0 with mtime SOURCE_DATE_EPOCH (default 0), entries are
# sorted and the layer is gzip'ed without a timestamp, so the same inputs give the same digest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

ROOTFS_ONLY=
if [[ ${1:-} == --rootfs ]]; then
  ROOTFS_ONLY=${2:?--rootfs needs a directory}
  shift 2
fi
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
OUT=${2:-$BUILD/netsteer-image.tar}
EPOCH=${SOURCE_DATE_EPOCH:-0}
MULTIARCH=x86_64-linux-gnu
LOADER=/lib64/ld-linux-x86-64.so.2

die() { echo "image.sh: $*" >&2; exit 1; }
[[ $(uname -m) == x86_64 ]] || die "only x86_64 (amd64) images are built"
for b in netsteerd netsteerctl netsteer-cni; do
  [[ -x $BUILD/$b ]] || die "$BUILD/$b is missing: build first (scripts/build.sh)"
done
for t in ldd strip readelf dpkg-query chroot; do command -v "$t" >/dev/null || die "$t is needed"; done
if [[ -z $ROOTFS_ONLY ]]; then
  command -v python3 >/dev/null || die "python3 is needed"
  IMAGE_REF=${IMAGE_REF:-$(sed -n 's/^ *image: *//p' "$ROOT/deploy/daemonset.yaml" | head -n1)}
  [[ -n $IMAGE_REF ]] || die "no image in deploy/daemonset.yaml"
fi
CATATONIT=/usr/bin/catatonit
[[ -x $CATATONIT ]] || die "$CATATONIT is missing: apt-get install catatonit (scripts/setup.sh)"

# The Debian package each file belongs to, from one dpkg-query call (it is slow per call); dpkg
# records pre-merged-/usr paths, so each file is asked under both spellings.
declare -A owner=()
index_packages() {
  local cands=() f line
  for f in "$@"; do cands+=("$f" "$(realpath "$f")" "${f#/usr}" "$(realpath "$f" | sed 's|^/usr||')"); done
  while IFS= read -r line; do
    [[ $line == *": "* ]] || continue
    local pkg=${line%%: *} path=${line#*: }
    [[ $pkg == *,* ]] && continue  # a directory shared by packages
    owner[$path]=${pkg%%:*}
  done < <(dpkg-query -S "${cands[@]}" 2>/dev/null || true)
}
package_of() {
  local f=$1 cand
  for cand in "$f" "$(realpath "$f")" "${f#/usr}" "$(realpath "$f" | sed 's|^/usr||')"; do
    [[ -n ${owner[$cand]:-} ]] && { echo "${owner[$cand]}"; return; }
  done
  die "$f belongs to no Debian package: refusing to put it in the image"
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
R=${ROOTFS_ONLY:-$TMP/rootfs}
if [[ -n $ROOTFS_ONLY && -e $R && -n $(ls -A "$R") ]]; then die "$R is not empty"; fi
mkdir -p "$R"
umask 022

# Merged /usr, as Debian bookworm: /lib and /lib64 are links into /usr.
mkdir -p "$R/usr/local/bin" "$R/usr/bin" "$R/usr/lib/$MULTIARCH" "$R/usr/lib64" "$R/usr/share/doc" \
         "$R/usr/share/netsteer" "$R/etc" "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/run" "$R/var"
chmod 1777 "$R/tmp"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
ln -s usr/bin "$R/bin"
ln -s ../run "$R/var/run"
ln -s "/lib/$MULTIARCH/ld-linux-x86-64.so.2" "$R/usr/lib64/ld-linux-x86-64.so.2"

for b in netsteerd netsteerctl netsteer-cni; do
  strip --strip-all -o "$R/usr/local/bin/$b" "$BUILD/$b"
  chmod 0755 "$R/usr/local/bin/$b"
done
for b in netsteerctl netsteer-cni; do
  # The installer copies netsteer-cni onto nodes, which have none of our libraries.
  { ldd "$R/usr/local/bin/$b" 2>&1 || true; } | grep -Eq 'statically linked|not a dynamic executable' || die "$b is not static"
done
{ ldd "$CATATONIT" 2>&1 || true; } | grep -Eq 'statically linked|not a dynamic executable' || die "$CATATONIT is not static"
install -m 0755 "$CATATONIT" "$R/usr/bin/catatonit"

# netsteerd's libraries: what the loader resolves here, each under its soname.
interp=$(readelf -l "$BUILD/netsteerd" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[[ $interp == "$LOADER" ]] || die "netsteerd's interpreter is '$interp', expected $LOADER"
libs=$(ldd "$BUILD/netsteerd" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
[[ -n $libs ]] || die "ldd found no libraries for netsteerd"
if ldd "$BUILD/netsteerd" | grep -q 'not found'; then die "netsteerd has unresolved libraries"; fi
# shellcheck disable=SC2086
index_packages "$CATATONIT" $libs "/lib/$MULTIARCH/ld-linux-x86-64.so.2"
declare -A pkgs=()
p=$(package_of "$CATATONIT") || exit 1
pkgs[$p]=1
for l in $libs "/lib/$MULTIARCH/ld-linux-x86-64.so.2"; do
  [[ $l == /lib/$MULTIARCH/* || $l == /usr/lib/$MULTIARCH/* ]] || die "$l is outside /usr/lib/$MULTIARCH"
  p=$(package_of "$l") || exit 1
  pkgs[$p]=1
  install -m 0755 "$(realpath "$l")" "$R/usr/lib/$MULTIARCH/$(basename "$l")"
done
# shellcheck disable=SC2046
dpkg-query -W -f='${Package} ${Version}\n' $(printf '%s\n' "${!pkgs[@]}" | sort) | sort >"$R/usr/share/netsteer/packages"
for p in $(printf '%s\n' "${!pkgs[@]}" | sort); do
  if [[ -f /usr/share/doc/$p/copyright ]]; then
    mkdir -p "$R/usr/share/doc/$p"
    install -m 0644 "/usr/share/doc/$p/copyright" "$R/usr/share/doc/$p/copyright"
  fi
done
printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"

# The image must run as it is: every binary starts in the tree alone (no host library leaks in).
for b in netsteerd netsteerctl netsteer-cni; do
  chroot "$R" "/usr/local/bin/$b" --help >/dev/null || die "$b --help fails inside the image's tree"
done

if [[ -n $ROOTFS_ONLY ]]; then
  find "$R" -exec touch -h -d "@$EPOCH" {} +
  echo "image.sh: root filesystem in $R ($(du -sb "$R" | cut -f1) bytes)"
  exit 0
fi

python3 - "$R" "$OUT" "$IMAGE_REF" "$EPOCH" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile, time

rootfs, out, ref, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def add_tree(t, top, arc_prefix=""):
    """Every entry under top, sorted, owned by 0:0 with mtime epoch."""
    entries = []
    for d, dirs, files in os.walk(top):
        dirs.sort()
        for n in sorted(dirs + files):
            entries.append(os.path.join(d, n))
    for p in sorted(entries, key=lambda p: os.path.relpath(p, top)):
        ti = t.gettarinfo(p, arcname=arc_prefix + os.path.relpath(p, top))
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = epoch
        if ti.isreg():
            with open(p, "rb") as f:
                t.addfile(ti, f)
        else:
            t.addfile(ti)


raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
    add_tree(t, rootfs)
raw = raw.getvalue()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=6, mtime=0) as g:
    g.write(raw)
gz = gz.getvalue()

blobs = {}


def blob(data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
version = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
config = {
    "created": created, "architecture": "amd64", "os": "linux",
    "config": {
        "User": "0:0",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Entrypoint": ["netsteerd"],
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.title": "netsteer",
                   "org.opencontainers.image.version": version},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    "history": [{"created": created, "created_by": "scripts/image.sh (netsteer build tree + Debian packages)"}],
}
cdesc = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode(),
             "application/vnd.oci.image.config.v1+json")
ldesc = blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip")
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cdesc, "layers": [ldesc]}
mdesc = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
             "application/vnd.oci.image.manifest.v1+json")
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [dict(mdesc, annotations={"io.containerd.image.name": ref,
                                                "org.opencontainers.image.ref.name": version})]}

files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
         "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode()}
for d, data in blobs.items():
    files["blobs/sha256/" + d.split(":", 1)[1]] = data
tmp = out + ".tmp"
with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as t:
    for dname in ("blobs", "blobs/sha256"):
        ti = tarfile.TarInfo(dname)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, epoch
        t.addfile(ti)
    for name in sorted(files):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(files[name]), 0o644, epoch
        t.addfile(ti, io.BytesIO(files[name]))
os.replace(tmp, out)
print(f"image.sh: {ref} -> {out}")
print(f"image.sh: manifest {mdesc['digest']}")
print(f"image.sh: layer {len(gz)} bytes gzip, {len(raw)} bytes unpacked; archive {os.path.getsize(out)} bytes")
PY
