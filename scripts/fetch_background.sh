#!/usr/bin/env bash
# Fetch public-domain background text for the demo corpus, without installing anything.
#
# usage: scripts/fetch_background.sh DIR
#
# Downloads Debian packages with `apt-get download` and unpacks them with `dpkg-deb -x`
# into DIR (files land under DIR/usr/...). auditor_server/corpus/background.py reads:
#   r-cran-janeaustenr  Jane Austen's six novels (R lazy-load database, read with `rdata`)
#   dict-devil          Ambrose Bierce, The Devil's Dictionary (dictd format)
# The demo corpus falls back to synthetic background text when this data is missing, so
# this script never fails its caller: it always exits 0 and says what it could not get.
set -u

dir=${1:-}
if [ -z "$dir" ]; then
    echo "usage: $0 DIR" >&2
    exit 0
fi
packages="r-cran-janeaustenr dict-devil"

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "fetch_background: apt-get/dpkg-deb not available; the demo corpus will use synthetic background text"
    exit 0
fi
if ! mkdir -p "$dir"; then
    echo "fetch_background: cannot create $dir; the demo corpus will use synthetic background text"
    exit 0
fi
dir=$(cd "$dir" && pwd)
work=$(mktemp -d) || { echo "fetch_background: no temp dir; skipping"; exit 0; }
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 0

download() {
    # As root, apt warns that its _apt sandbox user cannot write here; that is harmless.
    timeout 300 apt-get -q download "$1" >/dev/null 2>&1
}

updated=no
got=""
for pkg in $packages; do
    if ! download "$pkg"; then
        if [ "$updated" = no ] && [ "$(id -u)" = 0 ]; then
            echo "fetch_background: refreshing package lists (apt-get update)"
            timeout 300 apt-get -q update >/dev/null 2>&1
            updated=yes
            download "$pkg"
        fi
    fi
    deb=$(ls -1 "${pkg}"_*.deb 2>/dev/null | head -n 1)
    if [ -z "$deb" ]; then
        echo "fetch_background: could not download $pkg (offline or not in the package lists); skipping"
        continue
    fi
    if dpkg-deb -x "$deb" "$dir"; then
        echo "fetch_background: unpacked $pkg into $dir"
        got="$got $pkg"
    else
        echo "fetch_background: could not unpack $deb; skipping"
    fi
done

if [ -z "$got" ]; then
    echo "fetch_background: nothing fetched; the demo corpus will use synthetic background text"
else
    echo "fetch_background: done:$got"
fi
exit 0
