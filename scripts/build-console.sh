#!/usr/bin/env bash
# A production build of the console (Next.js standalone server), made once per version of its
# sources and reused while they stay the same. `make up` (scripts/run_local.py, also under
# scripts/e2e-stack.sh) serves it. Never `next dev`: it asks the npm registry for Next's latest
# version, and the network rule allows no traffic off the machine.
#
# Prints one line on stdout, the absolute path of the server to run; everything else goes to stderr:
#   NODE_ENV=production NEXT_TELEMETRY_DISABLED=1 HOSTNAME=127.0.0.1 PORT=3000 node "$(scripts/build-console.sh)"
#
# The build happens in a copy of the console's sources under frontend/.next/cache/ (where modules
# resolve to frontend/node_modules, and which git, tsc, eslint and `next build` in frontend/ all leave
# alone), named by a hash of all that goes into it: the copied files (package-lock.json among them),
# Node's version and this script. NEXT_PUBLIC_* are empty: the API is the origin the console is served
# from (the gateway), and LiveKit's URL comes with each token. A developer's .env* files stay out, and
# so do the tests (type-checked by scripts/test-frontend.sh). As root, `next build` runs in a network
# namespace of its own that holds only loopback, so it cannot reach out whatever it tries.
# One build at a time (flock); the three most recently used builds are kept.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
frontend="${root}/frontend"
cache="${frontend}/.next/cache"
export NEXT_TELEMETRY_DISABLED=1

say() { echo "build-console: $*" >&2; }

[[ -d "${frontend}/node_modules" ]] || {
    say "frontend/node_modules is missing (make setup installs it)"
    exit 1
}

# The files the build reads, relative to frontend/, NUL-separated, in a stable order.
sources() {
    (cd "${frontend}" && find . \
        \( -path ./node_modules -o -path ./.next -o -path './.env*' -o -path ./tests -o -path ./e2e \
        -o -name '*.tsbuildinfo' \) -prune -o \( -type f -o -type l \) -print0 | LC_ALL=C sort -z)
}

hash="$(
    {
        sources | (cd "${frontend}" && xargs -0 sha256sum)
        node --version
        sha256sum <"${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)"
dir="${cache}/agentline-console-${hash}"

mkdir -p "${cache}"
exec 9>"${cache}/agentline-console.lock"
flock 9

if [[ -f "${dir}/.complete" ]]; then
    say "reusing ${dir#"${root}/"} (the console's sources have not changed)"
    touch "${dir}/.complete"
else
    # Keep the two most recently used builds besides this one (a running `make up` may serve one
    # of them); half-made ones are left by interrupted builds (we hold the lock).
    shopt -s nullglob # a first build finds none of these
    for old in "${cache}"/agentline-console-*/; do
        [[ -f "${old}.complete" ]] || rm -rf "${old}"
    done
    stamps=("${cache}"/agentline-console-*/.complete)
    if ((${#stamps[@]} > 2)); then
        # shellcheck disable=SC2012 # the names are hex hashes
        ls -1t "${stamps[@]}" | tail -n +3 | while read -r stamp; do
            rm -rf "$(dirname "${stamp}")"
        done
    fi
    rm -rf "${dir}"
    mkdir -p "${dir}"
    say "building the console into ${dir#"${root}/"} (a minute or two)"
    sources | tar -C "${frontend}" --null -T - -cf - | tar -C "${dir}" -xf -
    build=(npx --no-install next build)
    if [[ "$(id -u)" -eq 0 ]] && unshare --net true 2>/dev/null; then
        # shellcheck disable=SC2016 # expanded by the inner shell
        build=(unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${build[@]}")
    else
        say "not root: building without a network namespace of its own"
    fi
    (cd "${dir}" && NEXT_PUBLIC_API_BASE_URL="" NEXT_PUBLIC_LIVEKIT_URL="" "${build[@]}") >&2
    server="$(cd "${dir}" && find .next/standalone -name server.js -not -path '*/node_modules/*' -print -quit)"
    [[ -n "${server}" ]] || {
        say "next build left no .next/standalone/**/server.js (is output: \"standalone\" still set?)"
        exit 1
    }
    server_dir="${dir}/$(dirname "${server}")"
    cp -r "${dir}/.next/static" "${server_dir}/.next/static"
    [[ ! -d "${dir}/public" ]] || cp -r "${dir}/public" "${server_dir}/public"
    ln -s "${dir}/${server}" "${dir}/server.js"
    touch "${dir}/.complete"
    say "built"
fi
echo "${dir}/server.js"
