#!/usr/bin/env bash
# Packages an existing build tree as a .deb (nothing is rebuilt):
#   scripts/deb.sh [BUILD_DIR] [OUT_DIR]          (default: build/ and build/)
# Prints the path of netsteer_<version>_<arch>.deb. The version is the project()'s in
# CMakeLists.txt; DEB_VERSION=... overrides it (the upgrade test builds a higher one),
# DEB_MAINTAINER=... the Maintainer field.
# Depends: is what dpkg-shlibdeps (dpkg-dev) finds the staged binaries need, nothing by hand.
# Packaging sources: packaging/deb/.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
pkg=$src/packaging/deb
build=$(cd "${1:-$src/build}" && pwd)
out=${2:-$build}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in dpkg-deb dpkg-shlibdeps strip; do
  command -v "$tool" >/dev/null || { echo "deb.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

version=${DEB_VERSION:-$(sed -n 's/^project(netsteer VERSION \([0-9][0-9.]*\)[ )].*/\1/p' "$src/CMakeLists.txt")}
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || { echo "deb.sh: bad version '$version'" >&2; exit 1; }
arch=$(dpkg --print-architecture)
# The project's identity: the root commit's author (not whoever committed last); DEB_MAINTAINER wins.
maintainer=${DEB_MAINTAINER:-$(git -C "$src" log --max-parents=0 -1 --format='%an <%ae>' 2>/dev/null || true)}
[[ -n $maintainer ]] || maintainer="netsteer maintainers <root@localhost>"
# Reproducible: every mtime is the last commit's time.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$src" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dh layout (debian/<package>), which dpkg-shlibdeps expects
root=$work/debian/netsteer
install -d -m 0755 "$root/DEBIAN" "$root/usr/sbin" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/etc/netsteer" "$root/usr/share/doc/netsteer"

# Stripped copies (the build tree keeps its debug info). Copy first, strip the copy: the build
# tree may be rewritten meanwhile, and strip fails on a torn copy rather than packaging it.
for b in netsteerd:usr/sbin netsteerctl:usr/bin netsteer-cni:usr/bin; do
  name=${b%%:*} dir=${b#*:}
  [[ -x $build/$name ]] || { echo "deb.sh: $build/$name is not built" >&2; exit 1; }
  install -m 0755 "$build/$name" "$root/$dir/$name"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/$dir/$name"
done

install -m 0644 "$pkg/netsteerd.service" "$pkg/netsteer-bpffs.service" "$root/lib/systemd/system/"
install -m 0644 "$pkg/netconf.json" "$root/etc/netsteer/netconf.json"
install -m 0644 "$pkg/copyright" "$root/usr/share/doc/netsteer/copyright"
install -m 0644 "$pkg/README.Debian" "$root/usr/share/doc/netsteer/README.Debian"
date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)
printf 'netsteer (%s) unstable; urgency=medium\n\n  * Built by scripts/deb.sh from commit %s.\n\n -- %s  %s\n' \
  "$version" "$commit" "$maintainer" "$date" | gzip -9n >"$root/usr/share/doc/netsteer/changelog.gz"
for s in postinst prerm postrm; do install -m 0755 "$pkg/$s" "$root/DEBIAN/$s"; done
echo /etc/netsteer/netconf.json >"$root/DEBIAN/conffiles"

# Depends from the ELF dependencies of the staged binaries (netsteerctl and netsteer-cni are
# static: they add nothing). dpkg-shlibdeps wants a debian/control naming the package.
# objdump's "no symbols" for the static ones is not a problem: filtered.
printf 'Source: netsteer\n\nPackage: netsteer\nArchitecture: any\n' >"$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O -e"debian/netsteer/usr/sbin/netsteerd" -e"debian/netsteer/usr/bin/netsteerctl" \
  -e"debian/netsteer/usr/bin/netsteer-cni" 2> >(grep -v "couldn't parse dynamic symbol definition: no symbols" >&2) |
  sed -n 's/^shlibs:Depends=//p')
[[ -n $depends ]] || { echo "deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
  >"$root/DEBIAN/md5sums"
size=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
  -e "s|@INSTALLED_SIZE@|$size|" -e "s|@DEPENDS@|$depends|" "$pkg/control.in" >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb=$out/netsteer_${version}_${arch}.deb
dpkg-deb --build --root-owner-group "$root" "$deb" >/dev/null
echo "$deb"
